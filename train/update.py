"""The parameter update of one step, shared by both step graphs: unscale the gradients,
[all-reduce them across ranks], test finiteness, clip by global norm, update only if finite,
move the loss scale. An overflowing step changes nothing but the loss scale; the caller sees
`finite == False` and logs it.
"""
from __future__ import annotations

from mindspore import amp, nn, ops


class ApplyGradients(nn.Cell):
    """Scaled gradients -> unscale, [all-reduce], finiteness, clip, update if finite, scale update.

    Returns (grads_finite, loss_scale_used). The lr is an input rather than a host-side
    `set_data` on the optimizer's Parameter because a compiled graph keeps the value it was
    compiled with (measured on CPU, MindSpore 2.10).
    """

    def __init__(self, optimizer: nn.Optimizer, scaler, clip_norm: float, grad_reducer: nn.Cell | None = None):
        super().__init__(auto_prefix=False)
        self.optimizer = optimizer
        self.scaler = scaler
        self.clip_norm = float(clip_norm)
        self.reduce = grad_reducer is not None
        self.grad_reducer = grad_reducer

    def construct(self, grads, lr):
        # A copy: the Parameter itself is changed by adjust() below.
        scale = self.scaler.scale_value * 1.0
        ops.assign(self.optimizer.learning_rate, lr)
        grads = self.scaler.unscale(grads)
        if self.reduce:
            # Averaged before the finiteness test so every rank takes the same decision.
            grads = self.grad_reducer(grads)
        finite = amp.all_finite(grads)
        if self.clip_norm > 0:
            grads = ops.clip_by_global_norm(grads, self.clip_norm)
        if finite:
            finite = ops.depend(finite, self.optimizer(grads))
        self.scaler.adjust(finite)
        return finite, scale

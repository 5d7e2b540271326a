"""The training step, written out by hand: the stock TrainOneStepWithLossScaleCell fails on CPU.

loss -> gradients of (loss * scale) -> unscale -> [all-reduce mean across ranks] ->
all_finite -> global-norm clip -> optimizer update only if every gradient is finite ->
loss-scale update. An overflowing step changes nothing but the loss scale; the caller sees
`finite == False` and logs it.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import amp, nn, ops

from configs.schema import TrainConfig


def apply_amp(net: nn.Cell, level: str) -> nn.Cell:
    """Cast the network for mixed precision; the loss is always computed in float32.

    O0: float32. O1: float16 for the whitelisted compute ops (MatMul/Conv/...), float32 for the
    rest (softmax, LayerNorm, ...), via `amp.auto_mixed_precision`. O2: float16 except
    normalization layers. On CPU both run but are slower than O0 (no fast fp16 kernels).
    """
    if level == "O0":
        return net
    if level in ("O1", "O2"):
        return amp.auto_mixed_precision(net, level)
    raise ValueError(f"train.amp_level: unknown level {level!r}")


def build_loss_scaler(train: TrainConfig):
    ls = train.loss_scale
    if ls.dynamic:
        return amp.DynamicLossScaler(ls.init_scale, int(ls.factor), ls.window)
    return amp.StaticLossScaler(ls.init_scale)


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


class TrainStep(nn.Cell):
    """One optimization step at learning rate `lr` (a float32 scalar Tensor), one graph.

    Returns (loss, grads_finite, loss_scale_used).
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, scaler, clip_norm: float,
                 grad_reducer: nn.Cell | None = None):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scaler = scaler
        self.apply_grads = ApplyGradients(optimizer, scaler, clip_norm, grad_reducer)

    def construct(self, image, label, lr):
        loss = self.net_with_loss(image, label)
        # The sensitivity (d loss) is the loss scale: gradients come out scaled without a
        # second forward pass.
        grads = self.grad(self.net_with_loss, self.weights)(image, label,
                                                            self.scaler.scale_value.astype(loss.dtype))
        finite, scale = self.apply_grads(grads, lr)
        return loss, finite, scale


def lr_tensor(lr: float) -> ms.Tensor:
    return ms.Tensor(lr, ms.float32)

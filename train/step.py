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
from train.loss import NetWithLoss


class _Float16Compute(nn.Cell):
    """A Dense/Conv2d computed in float16 (input and weights cast), its output back in float32."""

    def __init__(self, cell: nn.Cell):
        super().__init__(auto_prefix=False)  # parameter names stay the wrapped layer's
        self.cell = cell.to_float(ms.float16)

    def construct(self, x):
        return self.cell(x).astype(ms.float32)


def _float16_matmul_layers(cell: nn.Cell) -> None:
    for name, sub in list(cell.name_cells().items()):
        if isinstance(sub, (nn.Dense, nn.Conv2d)):
            cell._cells[name] = _Float16Compute(sub)
        elif not isinstance(sub, _Float16Compute):
            _float16_matmul_layers(sub)


def apply_amp(net: nn.Cell, level: str) -> nn.Cell:
    """Set the network's compute precision in place (weights stay float32 masters); returns `net`.

    O0: float32. O1: the Dense and Conv2d layers (all the matmul FLOPs but attention's two
    batched products) compute in float16, everything else stays float32. O2: every cell computes
    in float16 except LayerNorm (float32); the residual stream is float16. The loss always
    casts the logits to float32. Written here rather than with `amp.auto_mixed_precision`,
    which cannot rewrite this network for O1 and wraps it in a new cell for O2 (measured,
    MindSpore 2.10). On CPU both are slower than O0 (no fast float16 kernels).
    """
    from model.layers import LayerNorm

    if level == "O0":
        return net
    if level == "O1":
        _float16_matmul_layers(net)
        return net
    if level == "O2":
        net.to_float(ms.float16)
        for _, cell in net.cells_and_names():
            if isinstance(cell, LayerNorm):
                cell.to_float(ms.float32)
        return net
    raise ValueError(f"train.amp_level: unknown level {level!r}")


class DynamicLossScaler(amp.DynamicLossScaler):
    """MindSpore's dynamic loss scaler with any factor >= 1: its own accepts only integers, and an
    `int()` of 1.5 would give 1, a scale that never moves."""

    def __init__(self, scale_value, scale_factor: float, scale_window: int):
        super().__init__(scale_value, 2, scale_window)
        self.scale_factor = float(scale_factor)


def build_loss_scaler(train: TrainConfig):
    ls = train.loss_scale
    if ls.dynamic:
        return DynamicLossScaler(ls.init_scale, ls.factor, ls.window)
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
    """One optimization step at learning rate `lr` (a float32 scalar Tensor), one graph, on a
    pipeline batch (uint8 image, label, valid); see `train.loss.NetWithLoss`.

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

    def construct(self, image, label, valid, lr):
        loss = self.net_with_loss(image, label, valid)
        # The sensitivity (d loss) is the loss scale: gradients come out scaled without a
        # second forward pass.
        grads = self.grad(self.net_with_loss, self.weights)(image, label, valid,
                                                            self.scaler.scale_value.astype(loss.dtype))
        finite, scale = self.apply_grads(grads, lr)
        return loss, finite, scale


def build_train_step(cfg, net: nn.Cell, loss: nn.Cell, optimizer: nn.Optimizer, scaler,
                     grad_reducer: nn.Cell | None = None, rank: int = 0):
    """The configured step as `fn(image, label, valid, lr, step) -> (loss, finite, scale)` on
    `mindrecords.train_pipeline` batches, in train mode.

    `train.step_graph`: `whole` is `TrainStep`; `per_block` is `train.block_step.PerBlockTrainStep`.
    """
    from train.normalize import NormalizeBatch

    t = cfg.train
    normalize = NormalizeBatch(cfg.model.mean, cfg.model.std)
    if t.step_graph == "per_block":
        from train.block_step import PerBlockTrainStep

        return PerBlockTrainStep(net, loss, normalize, optimizer, scaler, t.clip_grad_norm, grad_reducer,
                                 seed=cfg.seed, rank=rank, amp_level=t.amp_level).set_train()
    whole = TrainStep(NetWithLoss(net, loss, normalize), optimizer, scaler, t.clip_grad_norm, grad_reducer)
    whole.set_train()
    return lambda image, label, valid, lr, step: whole(image, label, valid, lr)


def lr_tensor(lr: float) -> ms.Tensor:
    return ms.Tensor(lr, ms.float32)

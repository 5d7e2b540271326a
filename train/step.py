"""The configured train step: one optimizer update from `train.accumulate` micro-batches.

`train.step_graph` picks the graphs: `whole` (one forward + backward graph, optionally with the
encoder blocks recomputed, `train.recompute`) or `per_block` (`train.block_step`); `auto` is
`per_block` on CPU and `whole` on GPU and Ascend. Both share the update (`train.update`) and the
host-drawn drop-path masks (`train.drop_path`).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

from train.block_step import PerBlockTrainStep
from train.drop_path import block_rates, keep_masks
from train.loss import NetWithLoss
from train.normalize import NormalizeBatch
from settings.schema import resolved_step_graph
from train.whole_step import TrainStep


class TrainStepFn:
    """`fn(batches, lr, step) -> (loss, finite, scale)`: one update at learning rate `lr` (a float32
    scalar Tensor) from the micro-batches `batches` (each a pipeline batch: uint8 image, label,
    valid), in train mode. The gradients of the micro-batches are averaged before the update, so the
    loss scale, the finiteness test and clipping act on the accumulated gradient; `loss` is the
    micro-batches' mean."""

    def __init__(self, cfg, net: nn.Cell, loss: nn.Cell, optimizer: nn.Optimizer, scaler,
                 grad_reducer: nn.Cell | None = None, rank: int = 0):
        t = cfg.train
        normalize = NormalizeBatch(cfg.model.mean, cfg.model.std)
        self.seed, self.rank, self.rates, self.scaler = cfg.seed, rank, block_rates(net), scaler
        self.per_block = resolved_step_graph(cfg) == "per_block"
        if self.per_block:
            self.blocks = PerBlockTrainStep(net, loss, normalize, optimizer, scaler, t.clip_grad_norm, grad_reducer,
                                            seed=cfg.seed, rank=rank, amp_level=t.amp_level).set_train()
            self.apply_grads = self.blocks.apply_grads
            return
        if t.recompute:
            for block in net.encoder.blocks:
                block.recompute()
        self.fused = TrainStep(NetWithLoss(net, loss, normalize), optimizer, scaler, t.clip_grad_norm, grad_reducer)
        self.fused.set_train()
        self.apply_grads = self.fused.apply_grads

    def _masks(self, batch: int, step: int, micro: int):
        return ms.mutable(tuple(keep_masks(self.rates, batch, self.seed, self.rank, step, micro)))

    def _gradients(self, image, label, valid, step: int, micro: int):
        """(loss, scaled gradients) of one micro-batch."""
        if self.per_block:
            return self.blocks.gradients(image, label, valid, step, micro)[:2]
        return self.fused.gradients(image, label, valid, self._masks(image.shape[0], step, micro))

    def __call__(self, batches, lr, step: int):
        if not self.per_block and len(batches) == 1:  # one graph for the whole update
            image, label, valid = batches[0]
            return self.fused(image, label, valid, self._masks(image.shape[0], step, 0), lr)
        scale = self.scaler.scale_value * 1.0  # a copy: the update below moves the scale
        losses, total = [], None
        for micro, (image, label, valid) in enumerate(batches):
            loss, grads = self._gradients(image, label, valid, step, micro)
            losses.append(loss)
            total = list(grads) if total is None else [a + g for a, g in zip(total, grads)]
        k = len(batches)
        mean = tuple(g / k for g in total) if k > 1 else tuple(total)
        # mutable: a host tuple of Tensors is otherwise a compile-time constant (recompiled every step).
        finite, _ = self.apply_grads(ms.mutable(mean), lr)
        return sum(losses[1:], losses[0]) / k, finite, scale


def lr_tensor(lr: float) -> ms.Tensor:
    return ms.Tensor(lr, ms.float32)

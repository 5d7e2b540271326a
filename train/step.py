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
from train.update import ApplyGradients
from settings.schema import resolved_step_graph
from train.whole_step import TrainStep, WholeGradients


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
        self.seed, self.rank, self.rates = cfg.seed, rank, block_rates(net)
        self.per_block = resolved_step_graph(cfg) == "per_block"
        if self.per_block:
            self.blocks = PerBlockTrainStep(net, loss, normalize, optimizer, scaler, t.clip_grad_norm, grad_reducer,
                                            seed=cfg.seed, rank=rank, amp_level=t.amp_level).set_train()
            return
        if t.recompute:
            for block in net.encoder.blocks:
                block.recompute()
        net_with_loss = NetWithLoss(net, loss, normalize)
        self.fused = TrainStep(net_with_loss, optimizer, scaler, t.clip_grad_norm, grad_reducer)
        self.grads = WholeGradients(net_with_loss, optimizer.parameters, scaler)
        self.apply_grads = ApplyGradients(optimizer, scaler, t.clip_grad_norm, grad_reducer)
        self.scaler = scaler
        for cell in (self.fused, self.grads, self.apply_grads):
            cell.set_train()

    def _masks(self, batch: int, step: int, micro: int):
        return ms.mutable(tuple(keep_masks(self.rates, batch, self.seed, self.rank, step, micro)))

    def __call__(self, batches, lr, step: int):
        if not self.per_block and len(batches) == 1:  # one graph for the whole update
            image, label, valid = batches[0]
            return self.fused(image, label, valid, self._masks(image.shape[0], step, 0), lr)
        total, losses = None, []
        scale = None
        for micro, (image, label, valid) in enumerate(batches):
            if self.per_block:
                loss, grads, scale = self.blocks.gradients(image, label, valid, step, micro)
            else:
                scale = self.scaler.scale_value * 1.0
                loss, grads = self.grads(image, label, valid, self._masks(image.shape[0], step, micro))
            losses.append(loss)
            total = list(grads) if total is None else [a + g for a, g in zip(total, grads)]
        k = len(batches)
        mean = [g / k for g in total] if k > 1 else total
        finite = self.blocks.apply(mean, lr) if self.per_block else \
            self.apply_grads(ms.mutable(tuple(mean)), lr)[0]
        return sum(losses[1:], losses[0]) / k, finite, scale


def lr_tensor(lr: float) -> ms.Tensor:
    return ms.Tensor(lr, ms.float32)

"""The configured train step: `train.step_graph` picks the whole-network graph or the
per-block graphs; both take pipeline batches and share the update (`train.update`)."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

from train.block_step import PerBlockTrainStep
from train.loss import NetWithLoss
from train.normalize import NormalizeBatch
from train.whole_step import TrainStep


def build_train_step(cfg, net: nn.Cell, loss: nn.Cell, optimizer: nn.Optimizer, scaler,
                     grad_reducer: nn.Cell | None = None, rank: int = 0):
    """The configured step as `fn(image, label, valid, lr, step) -> (loss, finite, scale)` on
    `mindrecords.train_pipeline` batches, in train mode.

    `train.step_graph`: `whole` is `TrainStep`; `per_block` is `train.block_step.PerBlockTrainStep`.
    """
    t = cfg.train
    normalize = NormalizeBatch(cfg.model.mean, cfg.model.std)
    if t.step_graph == "per_block":
        return PerBlockTrainStep(net, loss, normalize, optimizer, scaler, t.clip_grad_norm, grad_reducer,
                                 seed=cfg.seed, rank=rank, amp_level=t.amp_level).set_train()
    whole = TrainStep(NetWithLoss(net, loss, normalize), optimizer, scaler, t.clip_grad_norm, grad_reducer)
    whole.set_train()
    return lambda image, label, valid, lr, step: whole(image, label, valid, lr)


def lr_tensor(lr: float) -> ms.Tensor:
    return ms.Tensor(lr, ms.float32)

"""The data-parallel update check run by tests/train_dist_worker.py: rank r takes one optimizer
update on sample r alone (gradients all-reduced), for both step graphs, and dumps the weights.
tests/test_train_dist.py compares them with one process's update on both samples as one batch."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def samples():
    """Two samples without ignore or padding pixels (their losses weigh equally in a batch)."""
    rng = np.random.default_rng(21)
    image = rng.integers(0, 256, size=(2, 32, 32, 3)).astype(np.uint8)
    label = rng.integers(0, 19, size=(2, 32, 32)).astype(np.uint8)
    return image, label, np.full((2, 2), 32, np.int32)


def tiny_cfg(graph: str):
    from settings.files import apply_overrides
    from settings.schema import Config

    return apply_overrides(Config(), ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.patch_size=8",
                                      "model.image_size=[32,32]", "model.decoder.n_layers=1",
                                      "model.decoder.dropout=0.0", "model.drop_path_rate=0.0",
                                      "train.optimizer.lr=0.05", "train.clip_grad_norm=0.0",
                                      f"train.step_graph={graph}"], "dp test")


def update(graph: str, rows, rank: int = 0, group_size: int = 1) -> dict:
    """The weights after one update on the samples `rows` (this rank's share)."""
    import mindspore as ms
    from mindspore import nn

    from model.segmenter import build_segmenter
    from train.loss import SegCrossEntropy
    from train.loss_scale import build_loss_scaler
    from train.optim import build_optimizer
    from train.step import TrainStepFn, lr_tensor

    cfg = tiny_cfg(graph)
    ms.set_seed(0)  # the same initial weights on every rank and in the single process
    net = build_segmenter(cfg.model)
    opt = build_optimizer(net, cfg.train.optimizer)
    reducer = nn.DistributedGradReducer(opt.parameters, mean=True, degree=group_size) if group_size > 1 else None
    fn = TrainStepFn(cfg, net, SegCrossEntropy(255), opt, build_loss_scaler(cfg.train), reducer, rank)
    image, label, valid = samples()
    batch = (ms.Tensor(image[rows]), ms.Tensor(label[rows]), ms.Tensor(valid[rows]))
    _, finite, _ = fn([batch], lr_tensor(cfg.train.optimizer.lr), 0)
    assert bool(finite.asnumpy())
    return {p.name: p.asnumpy() for p in net.trainable_params()}


def main(dump: str) -> None:
    from base.device import init_distributed, setup_context

    setup_context("CPU", "graph", 0)
    rank, group_size = init_distributed()
    for graph in ("per_block", "whole"):
        weights = update(graph, [rank], rank, group_size)
        np.savez(Path(dump) / f"{graph}_rank{rank}.npz", **weights)

"""The per-block train step computes the same gradients as one whole-network graph."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn, ops  # noqa: E402

from settings.files import apply_overrides  # noqa: E402

from settings.schema import Config, ConfigError  # noqa: E402
from model.segmenter import build_segmenter  # noqa: E402
from train.block_step import PerBlockTrainStep  # noqa: E402
from train.loss import NetWithLoss, SegCrossEntropy  # noqa: E402
from train.normalize import NormalizeBatch  # noqa: E402
from train.optim import build_optimizer  # noqa: E402
from train.loss_scale import build_loss_scaler  # noqa: E402
from train.step import build_train_step, lr_tensor  # noqa: E402

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)

SCALE = 1024.0


def _cfg(*sets):
    return apply_overrides(Config(), ["model.d_model=32", "model.n_heads=2", "model.n_layers=3", "model.patch_size=8",
                                      "model.image_size=[32,32]", "model.decoder.n_layers=1",
                                      "model.decoder.dropout=0.0", f"train.loss_scale.init_scale={SCALE}",
                                      *sets])


def _batch(size=(40, 36)):
    """A pipeline batch (uint8 image, uint8 label, valid); sample 1 is padded below row 30."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(2, *size, 3)).astype(np.uint8)
    label = rng.integers(0, 19, size=(2, *size)).astype(np.uint8)
    label[:, :4] = 255
    label[1, 30:] = 255
    valid = np.array([list(size), [30, size[1]]], np.int32)
    return Tensor(image), Tensor(label), Tensor(valid)


def _normalize(cfg):
    return NormalizeBatch(cfg.model.mean, cfg.model.std)


def _per_block(cfg):
    ms.set_seed(0)
    net = build_segmenter(cfg.model)
    opt = build_optimizer(net, cfg.train.optimizer)
    step = PerBlockTrainStep(net, SegCrossEntropy(255), _normalize(cfg), opt, build_loss_scaler(cfg.train), 0.0,
                             seed=cfg.seed)
    return net, opt, step.set_train()


class _GradWithKeeps(nn.Cell):
    """Reference: the whole network in ONE graph, blocks given explicit drop-path masks."""

    def __init__(self, net, normalize, weights):
        super().__init__(auto_prefix=False)
        self.net = net
        self.normalize = normalize
        self.loss = SegCrossEntropy(255)
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def forward(self, image, label, valid, keeps):
        x = self.net.encoder.embed(self.net.pad(self.normalize(image, valid)))
        for i in range(len(self.net.encoder.blocks)):
            x = self.net.encoder.blocks[i](x, keeps[i])
        return self.loss(self.net.head(x, label.shape[1], label.shape[2]), label.astype(ms.int32))

    def construct(self, image, label, valid, keeps, sens):
        return self.grad(self.forward, self.weights)(image, label, valid, keeps, sens)


def _close(got, want, names):
    for name, a, b in zip(names, got, want):
        a, b = a.asnumpy(), b.asnumpy()
        assert np.allclose(a, b, rtol=1e-4, atol=1e-6 * SCALE), f"{name}: max diff {np.abs(a - b).max()}"


def test_gradients_equal_the_whole_graph_without_drop_path():
    cfg = _cfg("model.drop_path_rate=0.0")
    net, opt, step = _per_block(cfg)
    batch = _batch()  # 40x36: not a multiple of the patch, so padding and cropping are on the path
    loss, grads, scale = step.gradients(*batch, step=0)
    net_loss = NetWithLoss(net, SegCrossEntropy(255), _normalize(cfg))
    want = ops.GradOperation(get_by_list=True, sens_param=True)(net_loss, opt.parameters)(
        *batch, Tensor(SCALE, ms.float32))
    names = [p.name for p in opt.parameters]
    assert len(grads) == len(want) == len(names)
    _close(grads, want, names)
    assert float(loss.asnumpy()) == pytest.approx(float(net_loss(*batch).asnumpy()), rel=1e-6)
    assert float(scale.asnumpy()) == SCALE


def test_gradients_with_drop_path_use_one_mask_for_both_passes():
    cfg = _cfg("model.drop_path_rate=0.6")
    net, opt, step = _per_block(cfg)
    batch = _batch((32, 32))
    keeps = step.keep_masks(2, 5)
    # With rate 0.6 on the last block some branch of some sample is dropped in this draw.
    assert any((k.asnumpy() == 0).any() for k in keeps)
    _, grads, _ = step.gradients(*batch, step=5)
    want = _GradWithKeeps(net, _normalize(cfg), opt.parameters)(*batch, tuple(keeps), Tensor(SCALE, ms.float32))
    _close(grads, want, [p.name for p in opt.parameters])


def test_keep_masks_are_seeded_by_seed_rank_and_step():
    _, _, step = _per_block(_cfg("model.drop_path_rate=0.5"))
    a = [k.asnumpy() for k in step.keep_masks(4, 7)]
    assert all(np.array_equal(x, y.asnumpy()) for x, y in zip(a, step.keep_masks(4, 7)))
    assert not all(np.array_equal(x, y.asnumpy()) for x, y in zip(a, step.keep_masks(4, 8)))
    step.rank = 1
    assert not all(np.array_equal(x, y.asnumpy()) for x, y in zip(a, step.keep_masks(4, 7)))
    # linspace(0, 0.5, 3): block 0 never drops; others hold 0 or 1 / keep_prob.
    assert np.array_equal(a[0], np.ones((2, 4, 1, 1), np.float32))
    for rate, mask in zip((0.25, 0.5), a[1:]):
        assert mask.shape == (2, 4, 1, 1)
        assert set(np.unique(mask)) <= {0.0, np.float32(1 / (1 - rate))}


def test_per_block_step_trains_and_matches_the_whole_step_update():
    batch = _batch((32, 32))
    cfg = _cfg("model.drop_path_rate=0.0", "train.clip_grad_norm=1.0")
    results = {}
    for mode in ("per_block", "whole"):
        cfg.train.step_graph = mode
        ms.set_seed(0)
        net = build_segmenter(cfg.model)
        opt = build_optimizer(net, cfg.train.optimizer)
        fn = build_train_step(cfg, net, SegCrossEntropy(255), opt, build_loss_scaler(cfg.train))
        losses = [float(fn(*batch, lr_tensor(0.05), s)[0].asnumpy()) for s in range(4)]
        results[mode] = (losses, {p.name: p.asnumpy() for p in net.trainable_params()})
    (lb, wb), (lw, ww) = results["per_block"], results["whole"]
    assert lb[-1] < lb[0]
    assert np.allclose(lb, lw, rtol=1e-4)
    for name in wb:
        assert np.allclose(wb[name], ww[name], rtol=1e-3, atol=1e-5), name


def test_per_block_refuses_encoder_dropout():
    with pytest.raises(ConfigError, match=r"train.step_graph=per_block needs model.dropout=0"):
        _cfg("model.dropout=0.1")
    assert _cfg("model.dropout=0.1", "train.step_graph=whole").train.step_graph == "whole"

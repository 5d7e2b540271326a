"""The per-block train step computes the same gradients as one whole-network graph."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, ops  # noqa: E402

from settings.files import apply_overrides  # noqa: E402

from settings.schema import Config, ConfigError  # noqa: E402
from model.segmenter import build_segmenter  # noqa: E402
from train.block_step import PerBlockTrainStep  # noqa: E402
from train.loss import NetWithLoss, SegCrossEntropy  # noqa: E402
from train.normalize import NormalizeBatch  # noqa: E402
from train.optim import build_optimizer  # noqa: E402
from train.loss_scale import build_loss_scaler  # noqa: E402
from train.step import TrainStepFn, lr_tensor  # noqa: E402

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


def _whole_graph_grads(net, cfg, weights, batch, keeps):
    """Reference: the whole network in ONE gradient graph, given the same drop-path masks."""
    net_loss = NetWithLoss(net, SegCrossEntropy(255), _normalize(cfg))
    grads = ops.GradOperation(get_by_list=True, sens_param=True)(net_loss, weights)(
        *batch, ms.mutable(tuple(keeps)), Tensor(SCALE, ms.float32))
    return net_loss(*batch, ms.mutable(tuple(keeps))), grads


def _close(got, want, names):
    for name, a, b in zip(names, got, want):
        a, b = a.asnumpy(), b.asnumpy()
        assert np.allclose(a, b, rtol=1e-4, atol=1e-6 * SCALE), f"{name}: max diff {np.abs(a - b).max()}"


def test_gradients_equal_the_whole_graph_without_drop_path():
    cfg = _cfg("model.drop_path_rate=0.0")
    net, opt, step = _per_block(cfg)
    batch = _batch()  # 40x36: not a multiple of the patch, so padding and cropping are on the path
    loss, grads, scale = step.gradients(*batch, step=0)
    want_loss, want = _whole_graph_grads(net, cfg, opt.parameters, batch, step.keep_masks(2, 0))
    names = [p.name for p in opt.parameters]
    assert len(grads) == len(want) == len(names)
    _close(grads, want, names)
    assert float(loss.asnumpy()) == pytest.approx(float(want_loss.asnumpy()), rel=1e-6)
    assert float(scale.asnumpy()) == SCALE


def test_gradients_with_drop_path_use_one_mask_for_both_passes():
    cfg = _cfg("model.drop_path_rate=0.6")
    net, opt, step = _per_block(cfg)
    batch = _batch((32, 32))
    keeps = step.keep_masks(2, 5)
    # With rate 0.6 on the last block some branch of some sample is dropped in this draw.
    assert any((k.asnumpy() == 0).any() for k in keeps)
    _, grads, _ = step.gradients(*batch, step=5)
    _, want = _whole_graph_grads(net, cfg, opt.parameters, batch, keeps)
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
        fn = TrainStepFn(cfg, net, SegCrossEntropy(255), opt, build_loss_scaler(cfg.train))
        losses = [float(fn([batch], lr_tensor(0.05), s)[0].asnumpy()) for s in range(4)]
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


def _clean_samples(n=2, size=(32, 32)):
    """Samples without ignore or padding pixels: the loss means of two micro-batches of one sample
    then average to the loss of one batch of two."""
    rng = np.random.default_rng(11)
    image = rng.integers(0, 256, size=(n, *size, 3)).astype(np.uint8)
    label = rng.integers(0, 19, size=(n, *size)).astype(np.uint8)
    return image, label, np.full((n, 2), size, np.int32)


def _one_update(cfg, batches):
    ms.set_seed(0)
    net = build_segmenter(cfg.model)
    opt = build_optimizer(net, cfg.train.optimizer)
    fn = TrainStepFn(cfg, net, SegCrossEntropy(255), opt, build_loss_scaler(cfg.train))
    loss, finite, _ = fn(batches, lr_tensor(0.05), 0)
    assert bool(finite.asnumpy())
    return float(loss.asnumpy()), {p.name: p.asnumpy() for p in net.trainable_params()}


@pytest.mark.parametrize("graph", ["per_block", "whole"])
def test_two_accumulated_micro_batches_equal_one_batch_of_two(graph):
    image, label, valid = _clean_samples()
    cfg = _cfg("model.drop_path_rate=0.0", "train.clip_grad_norm=0.5", f"train.step_graph={graph}")
    both = [(Tensor(image), Tensor(label), Tensor(valid))]
    one_by_one = [(Tensor(image[i:i + 1]), Tensor(label[i:i + 1]), Tensor(valid[i:i + 1])) for i in range(2)]
    loss_b2, w_b2 = _one_update(cfg, both)
    loss_k2, w_k2 = _one_update(cfg, one_by_one)
    _, w_k1 = _one_update(cfg, one_by_one[:1])
    assert loss_k2 == pytest.approx(loss_b2, rel=1e-5)
    moved = 0
    for name in w_b2:
        assert np.allclose(w_k2[name], w_b2[name], rtol=1e-4, atol=1e-6), name
        moved += not np.allclose(w_k1[name], w_b2[name], rtol=1e-4, atol=1e-6)
    assert moved  # one micro-batch alone is a different update: the comparison can tell


def test_recompute_gives_the_whole_graph_gradients():
    from train.whole_step import WholeGradients

    cfg = _cfg("model.drop_path_rate=0.6", "train.step_graph=whole")
    batch = _batch((32, 32))
    results = []
    for recompute in (False, True):
        ms.set_seed(0)
        net = build_segmenter(cfg.model)
        if recompute:
            for block in net.encoder.blocks:
                block.recompute()
        opt = build_optimizer(net, cfg.train.optimizer)
        grads = WholeGradients(NetWithLoss(net, SegCrossEntropy(255), _normalize(cfg)), opt.parameters,
                               build_loss_scaler(cfg.train))
        grads.set_train()
        keeps = PerBlockTrainStep(net, SegCrossEntropy(255), _normalize(cfg), opt, build_loss_scaler(cfg.train),
                                  0.0).keep_masks(2, 5)
        assert any((k.asnumpy() == 0).any() for k in keeps)  # some branch is dropped in this draw
        results.append(grads(*batch, ms.mutable(tuple(keeps))))
    (loss_a, ga), (loss_b, gb) = results
    assert float(loss_a.asnumpy()) == pytest.approx(float(loss_b.asnumpy()), rel=1e-6)
    _close(gb, ga, [f"grad {i}" for i in range(len(ga))])


def test_auto_picks_the_step_graph_for_the_device():
    from settings.schema import resolved_step_graph

    assert Config().train.step_graph == "auto"
    assert [resolved_step_graph(_cfg(f"device_target={d}")) for d in ("CPU", "GPU", "Ascend")] == \
        ["per_block", "whole", "whole"]
    assert resolved_step_graph(_cfg("device_target=GPU", "train.step_graph=per_block")) == "per_block"
    # Encoder dropout is fine where auto means whole, refused where it means per-block.
    assert _cfg("device_target=GPU", "model.dropout=0.1").model.dropout == 0.1
    with pytest.raises(ConfigError, match="per_block needs model.dropout=0"):
        _cfg("model.dropout=0.1")
    with pytest.raises(ConfigError, match="train.recompute recomputes the blocks of the whole step graph"):
        _cfg("train.recompute=true")  # CPU: auto is per_block
    assert _cfg("train.recompute=true", "train.step_graph=whole").train.recompute
    with pytest.raises(ConfigError, match=r"train.accumulate \(0\) must be >= 1"):
        _cfg("train.accumulate=0")

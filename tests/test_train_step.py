"""Loss, schedules, optimizer and the hand-written step on a tiny stand-in network."""
from __future__ import annotations

import math

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import Tensor, nn, ops  # noqa: E402

from settings.files import apply_overrides  # noqa: E402

from settings.schema import Config, ScheduleConfig  # noqa: E402
from train.loss import NetWithLoss, SegCrossEntropy  # noqa: E402
from train.optim import build_optimizer, optimizer_state, param_groups  # noqa: E402
from train.schedule import lr_at  # noqa: E402
from train.normalize import NormalizeBatch  # noqa: E402
from train.loss_scale import build_loss_scaler  # noqa: E402
from train.precision import apply_amp  # noqa: E402
from train.step import lr_tensor  # noqa: E402
from train.whole_step import TrainStep  # noqa: E402

ms.set_device("CPU")
ms.set_context(mode=ms.GRAPH_MODE)


class TinySeg(nn.Cell):
    """Conv + token Dense/LayerNorm + 1x1 classifier: the op kinds of the real model, tiny."""

    def __init__(self, n_cls=5):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, pad_mode="same", has_bias=True)
        self.dense = nn.Dense(8, 8)
        self.norm = nn.LayerNorm((8,), epsilon=1e-5)
        self.head = nn.Conv2d(8, n_cls, 1, has_bias=True)

    def construct(self, x, keeps):  # no drop-path blocks: the masks are not used
        x = ops.relu(self.conv(x))
        b, c, h, w = x.shape
        t = self.norm(self.dense(x.transpose(0, 2, 3, 1).reshape(b, h * w, c)))
        return self.head(t.reshape(b, h, w, c).transpose(0, 3, 1, 2))


def _batch(seed=0, n_cls=5, size=16):
    """A pipeline batch: uint8 (B,H,W,3) image, uint8 label, valid sizes (here the whole crop)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, n_cls, size=(2, size, size)).astype(np.uint8)
    label[:, :3] = 255
    # Image carries the label so the task is learnable.
    image = np.stack([label % 7 * 36, (label == 1) * 255, rng.integers(120, 136, label.shape)], -1)
    return Tensor(image.astype(np.uint8)), Tensor(label), Tensor(np.full((2, 2), size, np.int32))


def _step(cfg_sets=(), net=None):
    ms.set_seed(0)
    cfg = apply_overrides(Config(), list(cfg_sets))
    net = net or TinySeg()
    net = apply_amp(net, cfg.train.amp_level)
    opt = build_optimizer(net, cfg.train.optimizer)
    normalize = NormalizeBatch(cfg.model.mean, cfg.model.std)
    step = TrainStep(NetWithLoss(net, SegCrossEntropy(255), normalize), opt, build_loss_scaler(cfg.train),
                     cfg.train.clip_grad_norm)
    step.set_train()
    lr = lr_tensor(cfg.train.optimizer.lr)
    keeps = ms.mutable((Tensor(np.ones((2, 2, 1, 1), np.float32)),))
    return net, opt, lambda batch, lr=lr: step(*batch, keeps, lr)


def test_cross_entropy_matches_numpy_and_ignores_255():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 3, 5)).astype(np.float32)
    label = rng.integers(0, 4, size=(2, 3, 5)).astype(np.int32)
    label[0, 0, :] = 255
    got = float(SegCrossEntropy(255)(Tensor(logits), Tensor(label)).asnumpy())
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    valid = label != 255
    picked = np.take_along_axis(logp, np.where(valid, label, 0)[:, None], 1)[:, 0]
    assert got == pytest.approx(-picked[valid].mean(), rel=1e-5)
    all_ignored = np.full_like(label, 255)
    assert float(SegCrossEntropy(255)(Tensor(logits), Tensor(all_ignored)).asnumpy()) == 0.0


@pytest.mark.parametrize("name,step,want", [
    # Values worked out by hand (base 0.01, min 1e-4, 100 steps, no warmup).
    ("poly", 0, 0.01), ("poly", 100, 1e-4),
    ("poly", 75, 0.0099 * 0.5 + 1e-4),          # power 0.5: (1 - 0.75) ** 0.5 = 0.5
    ("cosine", 50, (0.01 + 1e-4) / 2),          # half way: the mean of base and min
    ("cosine", 100, 1e-4), ("cosine", 0, 0.01),
    ("constant", 37, 0.01),
])
def test_schedules_at_hand_computed_points(name, step, want):
    power = 0.5 if name == "poly" else 0.9
    assert lr_at(step, 100, 0.01, ScheduleConfig(name=name, power=power, min_lr=1e-4)) == pytest.approx(want, rel=1e-12)


def test_poly_with_the_paper_power_halves_where_the_inverse_says():
    s = ScheduleConfig(name="poly", power=0.9, min_lr=0.0)
    half = 1 - 0.5 ** (1 / 0.9)  # (1 - t) ** 0.9 = 0.5 solved for t
    assert lr_at(int(round(half * 10_000)), 10_000, 0.02, s) == pytest.approx(0.01, rel=2e-4)
    lrs = [lr_at(k, 1000, 0.01, ScheduleConfig()) for k in range(1001)]
    assert all(a > b for a, b in zip(lrs, lrs[1:])) and lrs[-1] == pytest.approx(1e-5)


def test_linear_warmup_as_mmseg():
    # poly power 1, min 0, 100 steps: main(step) = 0.01 * (100 - step) / 100; warmup 10 steps from ratio 0.1:
    # the factor is 0.1 at step 0, 0.55 at step 5 (half way from 0.1 to 1), 1 from step 10 on.
    s = ScheduleConfig(name="poly", power=1.0, min_lr=0.0, warmup_iters=10, warmup_ratio=0.1)
    assert lr_at(0, 100, 0.01, s) == pytest.approx(0.001, rel=1e-12)
    assert lr_at(5, 100, 0.01, s) == pytest.approx(0.0095 * 0.55, rel=1e-12)
    assert lr_at(10, 100, 0.01, s) == pytest.approx(0.009, rel=1e-12)


@pytest.mark.parametrize("sets", [
    [],
    ["train.optimizer.nesterov=true"],
    ["train.optimizer.name=adamw", "train.optimizer.lr=0.01", "train.optimizer.weight_decay=0.05"],
    ["train.amp_level=O1"],
    ["train.amp_level=O2"],
])
def test_few_steps_reduce_loss(sets):
    net, opt, step = _step(["train.optimizer.lr=0.1"] + sets)
    batch = _batch()
    losses = []
    for _ in range(15):
        loss, finite, _ = step(batch)
        assert bool(finite.asnumpy())
        losses.append(float(loss.asnumpy()))
    assert losses[-1] < 0.7 * losses[0], losses


def test_overflow_step_is_skipped_and_scale_lowered():
    # A loss scale near the float32 maximum and a huge normalized input (std 1e-4; LayerNorm
    # keeps the forward finite) make the scaled conv-weight gradients overflow.
    net, opt, step = _step(["train.loss_scale.init_scale=3.0e+38", "train.optimizer.lr=0.1",
                            "model.std=[1.0e-4, 1.0e-4, 1.0e-4]"])
    batch = _batch()
    before = {p.name: p.asnumpy().copy() for p in net.trainable_params()}
    moments_before = {k: p.asnumpy().copy() for k, p in optimizer_state(opt, net).items()}
    loss, finite, scale = step(batch)
    assert not bool(finite.asnumpy())
    assert float(scale.asnumpy()) == pytest.approx(3.0e38)
    for p in net.trainable_params():
        np.testing.assert_array_equal(p.asnumpy(), before[p.name])
    for k, p in optimizer_state(opt, net).items():
        np.testing.assert_array_equal(p.asnumpy(), moments_before[k])
    # Scale keeps falling (halving) until the gradients fit; then updates resume.
    scales = []
    for _ in range(40):
        _, finite, scale = step(batch)
        scales.append(float(scale.asnumpy()))
        if bool(finite.asnumpy()):
            break
    assert scales[0] == pytest.approx(1.5e38)
    assert all(b == pytest.approx(a / 2) for a, b in zip(scales, scales[1:]))
    assert bool(finite.asnumpy())
    assert any(not np.array_equal(p.asnumpy(), before[p.name]) for p in net.trainable_params())


def test_gradients_clipped_to_global_norm():
    # lr 1, plain SGD, no momentum: the update equals the (clipped) gradient.
    clip = 1e-3
    net, opt, step = _step(["train.optimizer.lr=1.0", "train.optimizer.momentum=0.0",
                            f"train.clip_grad_norm={clip}", "train.loss_scale.init_scale=1.0"])
    batch = _batch()
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    step(batch)
    delta = [p.asnumpy() - b for p, b in zip(net.trainable_params(), before)]
    norm = math.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in delta))
    assert norm == pytest.approx(clip, rel=1e-3)


def test_learning_rate_parameter_drives_the_update():
    net, opt, step = _step(["train.optimizer.momentum=0.0"])
    batch = _batch()
    before = [p.asnumpy().copy() for p in net.trainable_params()]
    step(batch, lr_tensor(0.0))
    for p, b in zip(net.trainable_params(), before):
        np.testing.assert_array_equal(p.asnumpy(), b)
    step(batch, lr_tensor(0.5))
    assert any(not np.array_equal(p.asnumpy(), b) for p, b in zip(net.trainable_params(), before))


def test_weight_decay_skips_bias_norm_and_embeddings():
    from model.segmenter import build_segmenter
    from settings.schema import DecoderConfig, ModelConfig

    net = build_segmenter(ModelConfig(d_model=64, n_heads=2, n_layers=1, image_size=[32, 32], n_cls=5,
                                      decoder=DecoderConfig(name="mask_transformer", n_layers=1)))
    groups = param_groups(net, 0.1)
    decayed = {p.name for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    kept = {p.name for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    names = {p.name for p in net.trainable_params()}
    embeddings = {"encoder.pos_embed", "encoder.cls_token", "decoder.cls_emb"}
    assert embeddings <= names and embeddings <= kept  # the model has them, and they are not decayed
    assert decayed | kept == names and not decayed & kept
    for p in net.trainable_params():  # matrices decay (projections included), vectors never
        assert (p.name in decayed) == (p.ndim > 1 and p.name not in embeddings), p.name
    assert {"encoder.blocks.0.attn.qkv.weight", "decoder.proj_patch", "decoder.proj_classes"} <= decayed


def _float16_exact(a: np.ndarray) -> bool:
    return np.array_equal(a, a.astype(np.float16).astype(np.float32))


@pytest.mark.parametrize("level", ["O0", "O1", "O2"])
def test_precision_policy_computes_in_float16(level):
    """O1: every Dense/Conv2d computes in float16 (its float32 output holds float16 values), LayerNorm
    and the rest in float32. O2: every cell computes in float16 except LayerNorm."""
    from model.segmenter import build_segmenter
    from settings.schema import DecoderConfig, ModelConfig

    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        net = apply_amp(build_segmenter(ModelConfig(d_model=64, n_heads=2, n_layers=1, image_size=[32, 32], n_cls=5,
                                                    decoder=DecoderConfig(n_layers=1))), level)
        net.set_train(False)
        x = Tensor(np.random.default_rng(0).normal(size=(1, 5, 64)).astype(np.float32))
        block = net.encoder.blocks[0]
        qkv, norm = block.attn.qkv(x), block.norm1(x)
        logits = net(Tensor(np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)))
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)
    assert norm.dtype == ms.float32 and not _float16_exact(norm.asnumpy())
    if level == "O0":
        assert qkv.dtype == ms.float32 and not _float16_exact(qkv.asnumpy())
        assert logits.dtype == ms.float32
    elif level == "O1":
        assert qkv.dtype == ms.float32 and _float16_exact(qkv.asnumpy())
        assert logits.dtype == ms.float32
    else:
        assert qkv.dtype == ms.float16 and logits.dtype == ms.float16



def test_normalize_batch_is_the_formula_with_zero_padding():
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (2, 6, 5, 3), dtype=np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    valid = np.array([[6, 5], [4, 3]], np.int32)
    out = NormalizeBatch(mean, std)(Tensor(image), Tensor(valid)).asnumpy()
    assert out.shape == (2, 3, 6, 5) and out.dtype == np.float32
    want = ((image.astype(np.float64) - mean) / std).transpose(0, 3, 1, 2)
    assert np.allclose(out[0], want[0], atol=1e-5)
    assert np.allclose(out[1, :, :4, :3], want[1, :, :4, :3], atol=1e-5)
    assert (out[1, :, 4:] == 0).all() and (out[1, :, :, 3:] == 0).all()


def test_dynamic_loss_scale_moves_by_a_fractional_factor():
    import mindspore as ms

    cfg = apply_overrides(Config(), ["train.loss_scale.init_scale=1024.0", "train.loss_scale.factor=1.5",
                                     "train.loss_scale.window=2"], "test")
    scaler = build_loss_scaler(cfg.train)
    finite, overflow = ms.Tensor(True), ms.Tensor(False)
    seen = []
    for grads_finite in (overflow, finite, finite, overflow):
        scaler.adjust(grads_finite)
        seen.append(float(scaler.scale_value.asnumpy()))
    # 1024 / 1.5, unchanged after one finite step, x 1.5 after the window of 2, / 1.5 again.
    np.testing.assert_allclose(seen, [1024 / 1.5, 1024 / 1.5, 1024.0, 1024 / 1.5], rtol=1e-6)

"""The network's shapes and math pieces, checkpoints, and the sliding-window rules."""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms

from settings.files import load_config

from settings.schema import Config, DecoderConfig, ModelConfig
from evaluate.sliding_window import sliding_window_probs, window_anchors
from model.checkpoint import CheckpointError, load_model, save_model
from base.resize import resize_bilinear
from base.device import setup_context
from model.segmenter import build_segmenter
from model.vit import resize_pos_embed


def tiny_cfg(decoder="mask_transformer", **kw) -> Config:
    model = ModelConfig(d_model=64, n_heads=2, n_layers=2, image_size=[32, 32], patch_size=16, n_cls=5,
                        decoder=DecoderConfig(name=decoder, n_layers=1), **kw)
    return Config(model=model)


@pytest.fixture(params=["graph", "pynative"])
def mode(request):
    setup_context("CPU", request.param, 0)
    yield request.param
    setup_context("CPU", "pynative", 0)


@pytest.mark.parametrize("decoder", ["mask_transformer", "linear"])
def test_forward_any_size_both_modes(mode, decoder):
    net = build_segmenter(tiny_cfg(decoder).model)
    net.set_train(False)
    x = np.random.RandomState(0).randn(2, 3, 37, 50).astype(np.float32)
    y = net(ms.Tensor(x)).asnumpy()
    assert y.shape == (2, 5, 37, 50)
    assert np.isfinite(y).all()
    # Internal padding is zeros right/bottom: the same image zero-padded by hand gives the same logits.
    padded = np.zeros((2, 3, 48, 64), np.float32)
    padded[:, :, :37, :50] = x
    y2 = net(ms.Tensor(padded)).asnumpy()
    np.testing.assert_allclose(y, y2[:, :, :37, :50], atol=1e-5)


def test_training_mode_is_stochastic_and_eval_is_not():
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg(drop_path_rate=0.5)
    net = build_segmenter(cfg.model)
    x = ms.Tensor(np.random.RandomState(1).randn(2, 3, 32, 32).astype(np.float32))
    net.set_train(False)
    a, b = net(x).asnumpy(), net(x).asnumpy()
    np.testing.assert_array_equal(a, b)
    net.set_train(True)
    c = net(x).asnumpy()
    assert np.abs(c - a).max() > 1e-4


def test_pos_embed_resize_matches_torch_bilinear_rule():
    rng = np.random.RandomState(0)
    pos = rng.randn(1, 1 + 3 * 4, 6).astype(np.float32)
    out = resize_pos_embed(ms.Tensor(pos), (3, 4), (5, 7)).asnumpy()
    assert out.shape == (1, 1 + 35, 6)
    np.testing.assert_array_equal(out[:, 0], pos[:, 0])  # class token kept aside
    grid = pos[0, 1:].reshape(3, 4, 6).transpose(2, 0, 1)
    expected = resize_bilinear(grid, (5, 7)).transpose(1, 2, 0).reshape(35, 6)
    np.testing.assert_allclose(out[0, 1:], expected, atol=1e-5)
    same = resize_pos_embed(ms.Tensor(pos), (3, 4), (3, 4)).asnumpy()
    np.testing.assert_array_equal(same, pos)


def test_resize_bilinear_known_values():
    x = np.array([[[0.0, 1.0], [2.0, 3.0]]], np.float32)
    # align_corners=False upsampling x2 of [0, 1]: 0, 0.25, 0.75, 1
    out = resize_bilinear(x, (4, 4))
    np.testing.assert_allclose(out[0, 0], [0, 0.25, 0.75, 1], atol=1e-6)
    np.testing.assert_allclose(out[0, :, 0], [0, 0.5, 1.5, 2], atol=1e-6)


def test_window_anchors_rule():
    assert window_anchors(1024, 768, 512) == [0, 256]
    assert window_anchors(2048, 768, 512) == [0, 512, 1024, 1280]
    assert window_anchors(768, 768, 512) == [0]
    assert window_anchors(10, 4, 3) == [0, 3, 6]
    assert window_anchors(11, 4, 3) == [0, 3, 6, 7]
    for bad in (0, -1, 769):
        with pytest.raises(ValueError, match="stride"):
            window_anchors(1024, 768, bad)


def test_cityscapes_frame_gives_eight_windows():
    calls = []

    class Counter:
        def __call__(self, x):
            calls.append(x.shape[0])
            return ms.Tensor(np.zeros((x.shape[0], 3, x.shape[2], x.shape[3]), np.float32))

    probs = sliding_window_probs(Counter(), np.zeros((3, 1024, 2048), np.float32), 3, 768, 512, batch_windows=3)
    assert sum(calls) == 8 and calls == [3, 3, 2]
    np.testing.assert_allclose(probs, 1 / 3, atol=1e-6)


def test_sliding_window_equals_forward_when_image_is_one_window():
    setup_context("CPU", "pynative", 0)
    net = build_segmenter(tiny_cfg().model)
    net.set_train(False)
    image = np.random.RandomState(2).randn(3, 32, 48).astype(np.float32)
    logits = net(ms.Tensor(image[None])).asnumpy()[0]
    e = np.exp(logits - logits.max(0))
    expected = e / e.sum(0)
    probs = sliding_window_probs(net, image, 5, 32, 16, batch_windows=2)
    # 32x48 with window 32, stride 16: windows at x=0 and x=16 overlap; the centre column
    # band is the mean of two windows, so compare only the first 16 columns (one window).
    single = net(ms.Tensor(image[None, :, :, :32])).asnumpy()[0]
    e = np.exp(single - single.max(0))
    np.testing.assert_allclose(probs[:, :, :16], (e / e.sum(0))[:, :, :16], atol=1e-5)
    assert probs.shape == expected.shape
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-5)
    flipped = sliding_window_probs(net, image, 5, 32, 16, batch_windows=4, flip=True, scales=(0.5, 1.0))
    np.testing.assert_allclose(flipped.sum(0), 1, atol=1e-5)


def test_save_load_roundtrip_and_rejections(tmp_path):
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg()
    net = build_segmenter(cfg.model)
    ckpt = tmp_path / "m.ckpt"
    save_model(net, ckpt, cfg, extra={"optimizer.step": ms.Tensor(3, ms.int32), "state.epoch": 1})
    assert load_config(tmp_path / "m.yaml") == cfg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ckpt", "m.yaml"]
    loaded = load_model(ckpt, cfg)
    for p, q in zip(net.get_parameters(), loaded.get_parameters()):
        np.testing.assert_array_equal(p.asnumpy(), q.asnumpy())
    with pytest.raises(ValueError, match="extra keys"):
        save_model(net, tmp_path / "x.ckpt", cfg, extra={"epoch": 1})
    other = tiny_cfg()
    other.model.d_model = 128
    with pytest.raises(CheckpointError, match=r"m\.ckpt: .*wrong shape \d+: decoder\.blocks\.0\.attn\.proj\.bias \(64,\) != \(128,\)"):
        load_model(ckpt, other)
    deeper = tiny_cfg()
    deeper.model.n_layers = 3
    with pytest.raises(CheckpointError, match=r"missing .*encoder\.blocks\.2\."):
        load_model(ckpt, deeper)
    ms.save_checkpoint(net, str(tmp_path / "u.ckpt"), append_dict={"junk": 1})
    with pytest.raises(CheckpointError, match="unexpected 1: junk"):
        load_model(tmp_path / "u.ckpt", cfg)
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.ckpt"):
        load_model(tmp_path / "bad.ckpt", cfg)


def test_graph_and_pynative_agree():
    setup_context("CPU", "pynative", 0)
    net = build_segmenter(tiny_cfg().model)
    net.set_train(False)
    x = ms.Tensor(np.random.RandomState(3).randn(1, 3, 40, 24).astype(np.float32))
    eager = net(x).asnumpy()
    setup_context("CPU", "graph", 0)
    try:
        graph = net(x).asnumpy()
    finally:
        setup_context("CPU", "pynative", 0)
    np.testing.assert_allclose(graph, eager, atol=1e-5)


def test_out_size_resizes_logits_not_probabilities():
    class Ramp:
        def __call__(self, x):
            b, _, h, w = x.shape
            ramp = np.linspace(-3, 3, w, dtype=np.float32)
            return ms.Tensor(np.broadcast_to(np.stack([ramp, -ramp])[None, :, None, :], (b, 2, h, w)).copy())

    probs = sliding_window_probs(Ramp(), np.zeros((3, 8, 16), np.float32), 2, 8, 8, out_size=(4, 32))
    assert probs.shape == (2, 4, 32)
    # 16 columns = windows at 0 and 8, each a -3..3 ramp; upsampled to 32 columns, then softmax.
    row = np.concatenate([np.linspace(-3, 3, 8)] * 2).astype(np.float32)
    up = resize_bilinear(np.stack([row, -row])[:, None, :], (4, 32))
    expected = np.exp(up) / np.exp(up).sum(0)
    np.testing.assert_allclose(probs, expected, atol=1e-6)

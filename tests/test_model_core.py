"""The network's shapes and math pieces, checkpoints, and the sliding-window rules."""
from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms

from settings.files import load_config

from settings.schema import Config, DecoderConfig, ModelConfig
from evaluate.sliding_window import sliding_window_probs, window_anchors
from weights.checkpoint import CheckpointError, load_model, save_model
from base.resize import resize_bilinear, resize_matrix, source_rows
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


def _bilinear_field(h: int, w: int, a=0.7, b=-1.3, c=0.05, d=2.0) -> np.ndarray:
    """f(y, x) = a*y + b*x + c*x*y + d at integer pixel centres: bilinear on every cell, so any
    bilinear interpolation of it is exact."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    return a * y + b * x + c * x * y + d


def _torch_bilinear_of_field(h_in, w_in, h_out, w_out, **coef) -> np.ndarray:
    """The closed form of F.interpolate(bilinear, align_corners=False) on `_bilinear_field`: output
    pixel i samples source coordinate (i + 0.5) * n_in / n_out - 0.5, clamped to [0, n_in - 1]."""
    ys = np.clip((np.arange(h_out) + 0.5) * h_in / h_out - 0.5, 0, h_in - 1)
    xs = np.clip((np.arange(w_out) + 0.5) * w_in / w_out - 0.5, 0, w_in - 1)
    a, b, c, d = (coef.get(k, v) for k, v in zip("abcd", (0.7, -1.3, 0.05, 2.0)))
    return a * ys[:, None] + b * xs[None, :] + c * xs[None, :] * ys[:, None] + d


@pytest.mark.parametrize("size_in,size_out", [((3, 4), (5, 7)), ((8, 8), (3, 5)), ((2, 2), (4, 4)), ((6, 9), (6, 4))])
def test_resize_bilinear_matches_the_closed_form(size_in, size_out):
    x = np.stack([_bilinear_field(*size_in), _bilinear_field(*size_in, a=-0.2, c=0.3)]).astype(np.float32)
    out = resize_bilinear(x, size_out)
    np.testing.assert_allclose(out[0], _torch_bilinear_of_field(*size_in, *size_out), atol=1e-5)
    np.testing.assert_allclose(out[1], _torch_bilinear_of_field(*size_in, *size_out, a=-0.2, c=0.3), atol=1e-5)
    # The same resize as the ONNX graph's two MatMuls (deploy/onnx_export.py)
    mh, mw = resize_matrix(size_in[0], size_out[0]), resize_matrix(size_in[1], size_out[1])
    np.testing.assert_allclose(mh @ x[0] @ mw.T, _torch_bilinear_of_field(*size_in, *size_out), atol=1e-5)


def test_resize_bilinear_in_row_bands_is_bit_identical():
    x = np.random.RandomState(3).randn(2, 37, 23).astype(np.float32)
    whole = resize_bilinear(x, (91, 40))
    for r0, r1 in ((0, 10), (10, 57), (57, 91)):
        s0, s1 = source_rows(37, 91, r0, r1)
        band = resize_bilinear(x[:, s0:s1], (91, 40), rows=(r0, r1), source_height=37, row_offset=s0)
        np.testing.assert_array_equal(band, whole[:, r0:r1])


def test_pos_embed_resize_matches_the_closed_form():
    grid = np.stack([_bilinear_field(3, 4, a=0.1 * k, b=0.3 - 0.05 * k) for k in range(6)])  # (6, 3, 4)
    cls = np.arange(6, dtype=np.float32)[None]
    pos = np.concatenate([cls, grid.reshape(6, 12).T], 0)[None].astype(np.float32)
    out = resize_pos_embed(ms.Tensor(pos), (3, 4), (5, 7)).asnumpy()
    assert out.shape == (1, 1 + 35, 6)
    np.testing.assert_array_equal(out[0, 0], cls[0])  # class token kept aside
    for k in range(6):
        want = _torch_bilinear_of_field(3, 4, 5, 7, a=0.1 * k, b=0.3 - 0.05 * k)
        np.testing.assert_allclose(out[0, 1:, k].reshape(5, 7), want, atol=1e-5)
    same = resize_pos_embed(ms.Tensor(pos), (3, 4), (3, 4)).asnumpy()
    np.testing.assert_array_equal(same, pos)


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
            return np.zeros((x.shape[0], 3, x.shape[2], x.shape[3]), np.float32)

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


def test_flip_averages_the_softmax_of_the_image_and_its_mirror():
    setup_context("CPU", "pynative", 0)
    net = build_segmenter(tiny_cfg().model)
    net.set_train(False)
    image = np.random.RandomState(4).randn(3, 32, 32).astype(np.float32)  # exactly one window

    def softmax(z):
        e = np.exp(z - z.max(0))
        return e / e.sum(0)

    plain = softmax(net(ms.Tensor(image[None])).asnumpy()[0])
    mirrored = softmax(net(ms.Tensor(np.ascontiguousarray(image[None, :, :, ::-1]))).asnumpy()[0][:, :, ::-1])
    probs = sliding_window_probs(net, image, 5, 32, 32, batch_windows=2, flip=True)
    np.testing.assert_allclose(probs, (plain + mirrored) / 2, atol=1e-6)
    assert np.abs(plain - mirrored).max() > 1e-3  # the mirror really is a different input


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
    with pytest.raises(CheckpointError, match=r"m\.ckpt: does not match .*model\.d_model is 128 in the config, 64 in"):
        load_model(ckpt, other)
    deeper = tiny_cfg()
    deeper.model.n_layers = 3
    with pytest.raises(CheckpointError, match=r"model\.n_layers is 3 in the config, 2 in the checkpoint"):
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
            return np.broadcast_to(np.stack([ramp, -ramp])[None, :, None, :], (b, 2, h, w)).copy()

    probs = sliding_window_probs(Ramp(), np.zeros((3, 8, 16), np.float32), 2, 8, 8, out_size=(4, 32))
    assert probs.shape == (2, 4, 32)
    # 16 columns = windows at 0 and 8, each a -3..3 ramp; upsampled to 32 columns, then softmax.
    row = np.concatenate([np.linspace(-3, 3, 8)] * 2).astype(np.float32)
    up = resize_bilinear(np.stack([row, -row])[:, None, :], (4, 32))
    expected = np.exp(up) / np.exp(up).sum(0)
    np.testing.assert_allclose(probs, expected, atol=1e-6)

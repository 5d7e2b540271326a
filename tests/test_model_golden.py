"""Golden proof: the official PyTorch Segmenter's outputs, reproduced by convert-weights + predict.

The fixtures in tests/fixtures/golden were produced once by the official code (see README there).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import mindspore as ms
from click.testing import CliRunner
from PIL import Image

import cli
from settings.files import load_config, save_config
from settings.schema import Config, ModelConfig
from weights.checkpoint import load_model
from base.device import setup_context
from base.class_table import CITYSCAPES
from base.ownership import WRITTEN

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
IMAGE = GOLDEN / "frankfurt_000000_000294_small.png"
TOL = 1e-4


def run(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("golden")
    ckpts = {}
    for name in ("mask", "linear"):
        ckpt = out / f"{name}.ckpt"
        run("convert-weights", GOLDEN / f"seg_golden_{name}" / "checkpoint.pth", "--out", ckpt)
        ckpts[name] = ckpt
    return ckpts


def test_config_derived_from_variant(converted):
    cfg = load_config(converted["mask"].with_suffix(".yaml"))
    m = cfg.model
    assert (m.patch_size, m.d_model, m.n_heads, m.n_layers, m.n_cls) == (8, 64, 2, 2, 19)
    assert m.image_size == [32, 32] and m.mean == [127.5] * 3 and m.std == [127.5] * 3
    assert (m.decoder.name, m.decoder.n_layers, m.decoder.dropout) == ("mask_transformer", 2, 0.1)
    assert (cfg.eval.window_size, cfg.eval.window_stride, cfg.eval.infer_size) == (32, 24, 48)
    lin = load_config(converted["linear"].with_suffix(".yaml")).model
    assert lin.decoder.name == "linear" and lin.mean == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255])


@pytest.mark.parametrize("name,case,options", [
    ("mask", "sliding", []),  # 48x96, window 32, stride 24: 2 x 4 windows
    ("mask", "upscale", ["--window", 64, "--stride", 32]),  # short side 48 < 64: upscaled to 64x128
    ("mask", "flip", ["--flip"]),
    ("linear", "sliding", []),
])
def test_predict_reproduces_official_probabilities(converted, tmp_path, name, case, options):
    out = tmp_path / "pred"
    run("predict", IMAGE, "--checkpoint", converted[name], "--out", out, "--save-probs", "--batch-windows", 3,
        *options)
    stem = IMAGE.stem
    probs = np.load(out / f"{stem}_probs.npy")
    expected = np.load(GOLDEN / f"probs_{name}.npz")[case]
    assert probs.dtype == np.float32 and probs.shape == expected.shape == (19, 48, 96)
    np.testing.assert_allclose(probs, expected, atol=TOL, rtol=0)
    ids = np.asarray(Image.open(out / f"{stem}.png"))
    np.testing.assert_array_equal(ids, probs.argmax(0))
    np.testing.assert_array_equal(np.asarray(Image.open(out / f"{stem}_color.png")), CITYSCAPES.colorize(ids))
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{stem}.png", f"{stem}_color.png", f"{stem}_probs.npy",
                                                            WRITTEN])


def test_npz_import_gives_official_encoder_features(tmp_path):
    cfg = Config(model=ModelConfig(backbone="vit_golden_patch8", d_model=64, n_heads=2, n_layers=2, patch_size=8,
                                   image_size=[48, 48]))
    save_config(cfg, tmp_path / "cfg.yaml")
    ckpt = tmp_path / "vit.ckpt"
    run("convert-weights", GOLDEN / "vit_golden_augreg.npz", "--out", ckpt, "--config", tmp_path / "cfg.yaml")
    saved = load_config(ckpt.with_suffix(".yaml"))
    assert saved.model.pretrained.endswith("vit_golden_augreg.npz")
    setup_context("CPU", "pynative", 0)
    net = load_model(ckpt, saved)
    ref = np.load(GOLDEN / "vit_golden_features.npz")
    feats = net.encoder(ms.Tensor(ref["input"])).asnumpy()  # 40x64 input: the 6x6 grid is resized again
    np.testing.assert_allclose(feats, ref["features"], atol=TOL, rtol=0)


def test_infer_size_resizes_the_image_and_returns_original_size(tmp_path):
    """predict --infer-size: the network sees the normalized image resized (short side 48 -> 64)
    by torch's bilinear rule, and the outputs come back at the image's own 48x96."""
    from evaluate.predict import predict_image
    from evaluate.sliding_window import window_anchors

    y, x = np.mgrid[0:48, 0:96]
    rgb = np.dstack([2 * x + y, x, 2 * y]).astype(np.uint8)  # affine in (y, x): bilinear resizes are exact
    image = tmp_path / "ramp.png"
    Image.fromarray(rgb).save(image)
    seen = []

    class Probe:  # a NumPy runner (evaluate.sliding_window.run_windows), as the ONNX session is
        def __call__(self, batch):
            seen.extend(batch)
            return np.zeros((batch.shape[0], 19, *batch.shape[2:]), np.float32)

    cfg = Config()
    cfg.eval.window_size, cfg.eval.window_stride, cfg.eval.infer_size, cfg.eval.batch_windows = 32, 24, 64, 4
    (tmp_path / "out").mkdir()
    predict_image(Probe(), cfg, image, tmp_path / "out", save_probs=True)
    assert len(seen) == len(window_anchors(64, 32, 24)) * len(window_anchors(128, 32, 24))  # a 64x128 input
    # Window (0, 0): source coordinate (i + 0.5) * 48 / 64 - 0.5 (clamped at 0) per output pixel.
    ys = np.clip((np.arange(32) + 0.5) * 0.75 - 0.5, 0, None)[:, None]
    xs = np.clip((np.arange(32) + 0.5) * 0.75 - 0.5, 0, None)[None, :]
    want = (np.stack([2 * xs + ys, xs + 0 * ys, 2 * ys + 0 * xs]) - 127.5) / 127.5
    np.testing.assert_allclose(seen[0], want, atol=1e-5)
    probs = np.load(tmp_path / "out" / "ramp_probs.npy")
    assert probs.shape == (19, 48, 96)
    np.testing.assert_allclose(probs, 1 / 19, atol=1e-6)  # zero logits everywhere: uniform

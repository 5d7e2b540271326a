"""predict on large images in bounded memory (banded, bit-identical), and predict/eval/export bad input:
`error: PATH: ...`, exit 2, before the model loads, nothing written."""
from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
import evaluate.sliding_window as sw
from settings.files import apply_overrides, resolve_config
from base.resize import resize_bilinear
from test_eval_cli import tiny_checkpoint

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
IMAGE = GOLDEN / "frankfurt_000000_000294_small.png"


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def _whole_map_reference(net, image, n_cls, window, stride, batch, flip, scales, out_size):
    """The procedure merged on whole maps (how it is written in the official code), for comparison."""
    _, h, w = image.shape
    total = np.zeros((n_cls, *out_size), np.float32)
    runs = 0
    for scale in scales:
        scaled = image if scale == 1.0 else resize_bilinear(image, sw.scaled_size(h, w, scale))
        for flipped in ((False, True) if flip else (False,)):
            im = scaled[:, :, ::-1] if flipped else scaled
            size = sw.upscaled_size(im.shape[1], im.shape[2], window)
            im = resize_bilinear(im, size) if size != im.shape[1:] else im
            logit = resize_bilinear(sw.window_logits(net, im, n_cls, window, stride, batch), out_size)
            total += sw._softmax(logit[:, :, ::-1] if flipped else logit)
            runs += 1
    return total / runs


@pytest.mark.parametrize("out_size, scales", [((150, 190), (1.0,)), ((150, 190), (0.75, 1.0, 1.5)),
                                              ((40, 56), (0.75, 1.0, 1.5, 2.0))])
def test_bands_are_bit_identical_to_whole_maps(ckpt, monkeypatch, out_size, scales):
    from weights.checkpoint import load_model

    cfg = resolve_config(ckpt, None)
    net = load_model(ckpt, cfg)
    image = np.random.default_rng(0).standard_normal((3, 70, 90)).astype(np.float32)
    expected = _whole_map_reference(net, image, 19, 64, 48, 3, True, scales, out_size)
    monkeypatch.setattr(sw, "TILE_BYTES", 4 * 19 * out_size[1] * 7)  # 7-row bands
    got = sw.sliding_window_probs(net, image, 19, 64, 48, 3, flip=True, scales=scales, out_size=out_size)
    np.testing.assert_array_equal(got, expected)
    pred = sw.sliding_window_predict(net, image, 19, 64, 48, 3, flip=True, scales=scales, out_size=out_size)
    np.testing.assert_array_equal(pred, expected.argmax(0))


def test_saved_probabilities_in_bands_match_the_official_golden(tmp_path, monkeypatch):
    converted = tmp_path / "mask.ckpt"
    assert run("convert-weights", GOLDEN / "seg_golden_mask" / "checkpoint.pth", "--out", converted).exit_code == 0
    monkeypatch.setattr(sw, "TILE_BYTES", 4 * 19 * 96 * 5)  # 48 rows in 10 bands
    r = run("predict", IMAGE, "--checkpoint", converted, "--out", tmp_path / "p", "--save-probs", "--flip")
    assert r.exit_code == 0, r.output + r.stderr
    probs = np.load(tmp_path / "p" / f"{IMAGE.stem}_probs.npy")
    np.testing.assert_allclose(probs, np.load(GOLDEN / "probs_mask.npz")["flip"], atol=1e-4, rtol=0)


def test_large_image_memory_is_bounded_and_windows_show_progress(ckpt, tmp_path):
    from evaluate.predict import predict_image
    from weights.checkpoint import load_model

    h, w = 2400, 2400
    yy, xx = np.mgrid[0:h, 0:w]
    rgb = np.stack([(xx * 255 // w), (yy * 255 // h), ((xx + yy) % 256)], -1).astype(np.uint8)
    big = tmp_path / "big.png"
    Image.fromarray(rgb).save(big)
    cfg = apply_overrides(resolve_config(ckpt, None), ["eval.infer_size=240", "eval.window_stride=32"], "test")
    net = load_model(ckpt, cfg)
    out = tmp_path / "out"
    out.mkdir()
    tracemalloc.start()
    predict_image(net, cfg, big, out, save_probs=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    # One full-resolution float32 class map alone is 19 x 2400 x 2400 x 4 = 438 MB.
    assert peak < 200 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert np.asarray(Image.open(out / "big.png")).shape == (h, w)
    r = run("predict", big, "--checkpoint", ckpt, "--out", tmp_path / "cli", "--infer-size", 240, "--stride", 32)
    assert r.exit_code == 0, r.output + r.stderr
    assert "predict big.png" in r.stderr and "win" in r.stderr  # 7 x 7 = 49 windows: a bar of its own


def test_class_count_other_than_its_class_table_is_refused(tmp_path, monkeypatch):
    other = tiny_checkpoint(tmp_path, extra=["model.n_cls=5"])  # no class table: read as Cityscapes
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", IMAGE, "--checkpoint", other, "--out", tmp_path / "p")
    assert r.exit_code == 2 and "the model predicts 5 classes, its class table (cityscapes) has 19" in r.stderr
    assert not (tmp_path / "p").exists()


def _must_not_load(*a, **k):
    raise AssertionError("the model was loaded before the inputs were checked")


def test_never_overwrites_an_input(ckpt, tmp_path, monkeypatch):
    folder = tmp_path / "images"
    folder.mkdir()
    image = folder / "scene.png"
    image.write_bytes(IMAGE.read_bytes())
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", image, "--checkpoint", ckpt, "--out", folder)
    assert r.exit_code == 2 and f"{image}: is an input; predict never overwrites an input" in r.stderr
    assert image.read_bytes() == IMAGE.read_bytes() and sorted(p.name for p in folder.iterdir()) == ["scene.png"]


def test_unwritable_out_is_refused_before_the_model_loads(ckpt, tmp_path, read_only, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", locked / "p")
    assert r.exit_code == 2 and f"error: {locked}: cannot write predictions here (Read-only file system)" in r.stderr
    (tmp_path / "file").write_text("x")
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "file")
    assert r.exit_code == 2 and "is a file" in r.stderr  # click checks file_okay=False itself


def test_image_over_the_pixel_limit(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 48 x 96 = 4608 > 2 x 1000: PIL refuses
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "p")
    assert r.exit_code == 2 and f"error: {IMAGE}:" in r.stderr and "decompression bomb" in r.stderr
    assert not (tmp_path / "p").exists()


def test_windows_and_sizes_no_machine_can_run(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "p", "--window", 100000, "--stride", 100000)
    assert r.exit_code == 2 and "--window 100000: one forward of 3 x 100000x100000 needs about" in r.stderr
    assert "more than this machine's" in r.stderr and not (tmp_path / "p").exists()
    r = run("export", "--checkpoint", ckpt, "--out", tmp_path / "m.mindir", "--size", "100000x100000")
    assert r.exit_code == 2 and "--size 100000x100000: one forward" in r.stderr
    assert not (tmp_path / "m.mindir").exists()


def test_convert_weights_and_export_into_a_read_only_folder(ckpt, tmp_path, read_only):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    r = run("convert-weights", GOLDEN / "seg_golden_mask", "--out", locked / "x.ckpt")
    assert r.exit_code == 2 and f"error: {locked / 'x.ckpt'}: Read-only file system" in r.stderr, r.stderr
    r = run("export", "--checkpoint", ckpt, "--out", locked / "m.mindir", "--size", "64x64")
    assert r.exit_code == 2 and f"error: {locked / 'm.mindir'}: Read-only file system" in r.stderr, r.stderr

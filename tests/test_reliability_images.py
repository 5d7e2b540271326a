"""Issue 19, images and sizes: one decoder for every image (modes accepted or refused by name, 16-bit
scaled, labels never scaled), sizes checked before anything is allocated (image headers, --scales,
--infer-size, windows per image, make-sample frames, `info` without building the model)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from isal import isal_zlib
from PIL import Image

import cli
from base.images import ImageError, decode_image, decode_label, read_info
from test_eval_cli import built, tiny_checkpoint  # noqa: F401  (built: a pytest fixture)
from peak import cli_peak as measured

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
IMAGE = GOLDEN / "frankfurt_000000_000294_small.png"
REFUSAL_PEAK_KIB = 1 << 20  # 1 GiB


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def _png(array: np.ndarray) -> bytes:
    return cv2.imencode(".png", array)[1].tobytes()


def _pil_bytes(image: Image.Image, fmt: str, **options) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **options)
    return buf.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def zero_png(path: Path, h: int, w: int, depth: int = 8, colour: int = 0) -> Path:
    """A valid all-zero PNG of any size, written row by row: megabytes on disk for gigapixels."""
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    row, deflate = bytes(1 + w * channels * depth // 8), isal_zlib.compressobj(2)
    body = b"".join(deflate.compress(row) for _ in range(h)) + deflate.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0))
                     + _chunk(b"IDAT", body) + _chunk(b"IEND", b""))
    return path


def _scaled(v16: np.ndarray) -> np.ndarray:
    return np.floor(v16.astype(np.float64) * 255 / 65535 + 0.5).astype(np.uint8)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


def _must_not_load(*a, **k):
    raise AssertionError("the model was loaded before the sizes were checked")


# --- one decoder: every accepted mode, 16-bit scaled ------------------------------------------------

def test_every_accepted_mode_decodes_to_8_bit_rgb():
    rng = np.random.default_rng(0)
    rgb8 = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    v16 = rng.integers(0, 65536, (5, 7, 3), dtype=np.uint16)
    v16[0, :3, 0] = [128, 129, 65535]  # 127.5/255 rounds down to 0, 129 up to 1
    grey8, grey16, bgr16 = rgb8[..., 0], v16[..., 0], v16[..., ::-1]
    cases = {
        "8-bit grey": (_png(grey8), np.dstack([grey8] * 3)),
        "16-bit grey": (_png(grey16), np.dstack([_scaled(grey16)] * 3)),
        "8-bit RGB": (_png(rgb8[..., ::-1]), rgb8),
        "16-bit RGB": (_png(bgr16), _scaled(v16)),
        "8-bit RGBA": (_png(np.dstack([rgb8[..., ::-1], grey8])), rgb8),
        "16-bit RGBA": (_png(np.dstack([bgr16, grey16])), _scaled(v16)),
        "8-bit grey+alpha": (_pil_bytes(Image.fromarray(np.dstack([grey8, grey8]), "LA"), "PNG"),
                             np.dstack([grey8] * 3)),
        "JPEG grey": (_pil_bytes(Image.fromarray(grey8), "JPEG", quality=100), None),
    }
    palette = Image.fromarray(grey8 % 4, "P")
    palette.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120])
    cases["8-bit palette"] = (_pil_bytes(palette, "PNG"), np.array([[10, 20, 30], [40, 50, 60], [70, 80, 90],
                                                                      [100, 110, 120]], np.uint8)[grey8 % 4])
    for name, (data, want) in cases.items():
        got = decode_image(data, name)
        assert got.dtype == np.uint8 and got.shape == (5, 7, 3), name
        if want is not None:
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert read_info(_png(bgr16)).describe() == "16-bit RGB PNG"
    assert (decode_image(_png(grey16), "g")[0, :3, 0] == [0, 1, 255]).all()


@pytest.mark.parametrize("mode,fmt", [("CMYK", "JPEG"), ("F", "TIFF"), ("I", "TIFF")])
def test_other_modes_are_refused_by_name(mode, fmt):
    data = _pil_bytes(Image.new(mode, (4, 3)), fmt)
    with pytest.raises(ImageError, match=f"x.img: unsupported image mode '{mode}'"):
        decode_image(data, "x.img")
    with pytest.raises(ImageError, match=f"unsupported image mode '{mode}'"):
        read_info(data, "x.img")


def test_labels_are_never_scaled():
    ids = np.arange(0, 40, dtype=np.uint8).reshape(5, 8)
    np.testing.assert_array_equal(decode_label(_png(ids)), ids)
    np.testing.assert_array_equal(decode_label(_png(ids.astype(np.uint16))), ids)  # 16-bit values that fit
    palette = Image.fromarray(ids, "P")
    palette.putpalette([255 - (i % 256) for i in range(768)])
    np.testing.assert_array_equal(decode_label(_pil_bytes(palette, "PNG")), ids)  # indices, not colours
    with pytest.raises(ImageError, match="l.png: 16-bit label values up to 300 do not fit 8 bits"):
        decode_label(_png(np.full((2, 2), 300, np.uint16)), "l.png")
    with pytest.raises(ImageError, match="expected a single-channel 8-bit label PNG .* got 8-bit RGB PNG"):
        decode_label(_png(np.dstack([ids] * 3)), "l.png")
    with pytest.raises(ImageError, match="no PNG signature"):
        decode_label(_pil_bytes(Image.fromarray(ids), "JPEG"), "l.jpg")


def test_truncated_files_are_image_errors_naming_the_file(tmp_path):
    jpeg = _pil_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), np.uint8)), "JPEG")
    png = _png(np.zeros((64, 96, 3), np.uint8))
    for name, data in (("cut.jpg", jpeg[: len(jpeg) // 2]), ("cut.png", png[:-20])):
        (tmp_path / name).write_bytes(data)
        with pytest.raises(ImageError, match=f"{tmp_path / name}: not a readable image") as err:
            decode_image(tmp_path / name)
        assert err.value.path == tmp_path / name and isinstance(err.value, ValueError)


def test_a_16_bit_grey_png_is_predicted_as_its_8_bit_copy(ckpt, tmp_path):
    grey = cv2.imread(str(IMAGE), cv2.IMREAD_GRAYSCALE)
    src = tmp_path / "in"
    src.mkdir()
    cv2.imwrite(str(src / "eight.png"), grey)
    cv2.imwrite(str(src / "sixteen.png"), grey.astype(np.uint16) * 257)  # scales back to `grey` exactly
    r = run("predict", src, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert r.exit_code == 0, r.stderr
    eight, sixteen = (np.asarray(Image.open(tmp_path / "out" / f"{n}.png")) for n in ("eight", "sixteen"))
    np.testing.assert_array_equal(sixteen, eight)


# --- sizes from the header, before any pixel ----------------------------------------------------------

def test_image_over_the_limits_is_refused_from_its_header(tmp_path, monkeypatch):
    big = zero_png(tmp_path / "big.png", 20000, 20000, depth=16)
    assert big.stat().st_size < 3 << 20
    with pytest.raises(ImageError, match="20000x20000 .*exceeds the limit .*decompression bombs"):
        read_info(big)
    small = _png(np.zeros((100, 200), np.uint16))
    monkeypatch.setattr("base.images.physical_memory_bytes", lambda: 100 * 200 * 4 - 1)
    with pytest.raises(ImageError, match=r"s.png: 100x200 16-bit grey PNG: decoding needs about .* this machine's"):
        decode_image(small, "s.png")
    with pytest.raises(ImageError, match="decoding needs about"):
        decode_label(small, "s.png")


def _measured(*args, timeout=180) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of `python cli.py ARGS`."""
    code, _, err, peak = measured(*args, timeout=timeout)
    return code, err, peak


def test_huge_image_and_label_are_refused_in_bounded_memory(ckpt, tmp_path):
    image = zero_png(tmp_path / "huge16.png", 20000, 20000, depth=16)
    code, err, peak = _measured("predict", image, "--checkpoint", ckpt, "--out", tmp_path / "p")
    assert code == 2 and f"error: {image}: image size 20000x20000" in err, err
    assert peak < REFUSAL_PEAK_KIB, f"peak {peak >> 10} MiB"
    assert not (tmp_path / "p").exists()
    root = tmp_path / "cityscapes"
    assert run("make-sample", "--out", root, "--train", 1, "--val", 0, "--height", 32, "--width", 64).exit_code == 0
    label = next(root.glob("gtFine/train/*/*_labelIds.png"))
    zero_png(label, 30000, 30000)
    code, err, peak = _measured("build-mindrecord", "--root", root, "--out", tmp_path / "mr", "--splits", "train",
                                "--workers", 1)
    assert code == 2 and f"{label}: image size 30000x30000" in err, err
    assert peak < REFUSAL_PEAK_KIB, f"peak {peak >> 10} MiB"


# --- sizes of the sliding window: settings, then each image or record --------------------------------

def test_scales_and_infer_size_no_image_could_run_are_refused_before_the_model_loads(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    for option, value in (("--scales", "100000"), ("--infer-size", "50000")):
        r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "p", option, value)
        assert r.exit_code == 2 and f"error: {option} {value}: any image is run at" in r.stderr, r.stderr
        assert "more than this machine's" in r.stderr
    for bad in ("nan", "inf", "1,-1"):
        r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "p", "--scales", bad)
        assert r.exit_code == 2 and "give one or more positive factors" in r.stderr
    assert not (tmp_path / "p").exists()


def test_scales_refusal_costs_little_memory(ckpt, tmp_path):
    code, err, peak = _measured("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "p", "--scales", "100000")
    assert code == 2 and "--scales 100000: any image is run at" in err, err
    assert peak < REFUSAL_PEAK_KIB, f"peak {peak >> 10} MiB"


def test_an_extreme_aspect_ratio_is_announced_or_refused_by_name(ckpt, tmp_path, monkeypatch):
    thin = tmp_path / "thin.png"
    cv2.imwrite(str(thin), np.full((20, 20000, 3), 90, np.uint8))
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", thin, "--checkpoint", ckpt, "--out", tmp_path / "p", "--infer-size", 64)
    # 64 x 64000 at inference: 1333 windows of 64 at stride 48, where a 1024x2048 frame (64x128) takes 3.
    assert f"warning: {thin}: 20x20000 is run at up to 64x64000" in r.stderr, r.stderr
    assert "1,333 windows, 444x a 1024x2048 frame's 3" in r.stderr
    assert isinstance(r.exception, AssertionError)  # went on to load the model: a warning, not a refusal
    from evaluate.cost import image_cost

    cfg = cli._inference_config(ckpt, None, None, None, 64, None, None, None)
    monkeypatch.setattr("evaluate.cost.physical_memory_bytes", lambda: image_cost(cfg, 20, 20000).bytes - 1)
    r = run("predict", IMAGE, thin, "--checkpoint", ckpt, "--out", tmp_path / "p", "--infer-size", 64)
    assert r.exit_code == 2 and f"error: {thin}: 20x20000 is run at up to 64x64000" in r.stderr, r.stderr
    assert "needs about" in r.stderr and not (tmp_path / "p").exists()


def test_eval_refuses_a_record_too_large_before_the_model_loads(built, tmp_path, monkeypatch):  # noqa: F811
    from evaluate.cost import image_cost, split_sizes

    out, ckpt = built["out"], built["ckpt"]
    (h, w, record, count), = split_sizes(out, "val")
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("eval", "--checkpoint", ckpt, "--data", out, "--infer-size", 50000)
    assert r.exit_code == 2 and "error: --infer-size 50000: any image is run at 50000x50000" in r.stderr, r.stderr
    cfg = cli._inference_config(ckpt, None, None, None, None, None, None, None)
    monkeypatch.setattr("evaluate.cost.physical_memory_bytes", lambda: image_cost(cfg, h, w).bytes - 1)
    r = run("eval", "--checkpoint", ckpt, "--data", out)
    assert r.exit_code == 2, r.stderr
    assert f"error: {out}/val: record {record!r} (and {count - 1} more of its size): {h}x{w}" in r.stderr


def test_window_count_is_arithmetic():
    from evaluate.sliding_window import anchor_count, count_windows, window_anchors

    for size, window, stride in ((64, 64, 48), (65, 64, 1), (1000, 64, 48), (2048, 768, 512), (777, 100, 100)):
        assert anchor_count(size, window, stride) == len(window_anchors(size, window, stride))
    assert count_windows(10**9, 10**9, 768, 1) == (10**9 - 767) ** 2  # no list of anchors is built


# --- make-sample and info --------------------------------------------------------------------------

def test_make_sample_frame_too_large_is_refused_up_front(tmp_path):
    code, err, peak = _measured("make-sample", "--out", tmp_path / "s", "--height", 60000, "--width", 60000)
    assert code == 2 and "error: --height 60000 --width 60000: one frame needs about" in err, err
    assert "Traceback" not in err and peak < REFUSAL_PEAK_KIB and not (tmp_path / "s").exists()


@pytest.mark.parametrize("overrides", [
    ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.patch_size=8", "model.image_size=[32,48]",
     "model.decoder.n_layers=1"],
    ["model.d_model=32", "model.n_heads=2", "model.n_layers=1", "model.patch_size=8", "model.image_size=[32,32]",
     "model.decoder.name=linear", "model.decoder.n_layers=0", "model.n_cls=5"],
    "configs/seg_tiny_mask.yaml",
])
def test_parameters_counted_from_the_config_equal_the_built_model(overrides):
    from base.device import setup_context
    from analysis.info import model_parameter_counts, parameter_counts
    from model.segmenter import build_segmenter
    from settings.files import apply_overrides, load_config
    from settings.schema import Config

    cfg = load_config(ROOT / overrides) if isinstance(overrides, str) else apply_overrides(Config(), overrides, "t")
    setup_context("CPU", "pynative", 0)
    assert model_parameter_counts(cfg.model) == parameter_counts(build_segmenter(cfg.model))


def test_info_on_a_huge_model_builds_nothing(tmp_path):
    from analysis.info import model_parameter_counts
    from settings.files import load_config

    config = tmp_path / "huge.yaml"
    config.write_text("model:\n  d_model: 16384\n  n_heads: 256\n  n_layers: 48\n")
    total = model_parameter_counts(load_config(config).model)["total"]
    r = run("info", "--config", config)
    assert r.exit_code == 0, r.stderr
    assert f"parameters: {total:,} =" in r.stdout and total > 10**11
    code, err, peak = _measured("info", "--config", config, "--size", "16x16", "--measure")
    assert code == 2 and f"error: --measure: the model's {total:,} parameters need about" in err, err
    assert peak < REFUSAL_PEAK_KIB


def test_verify_reads_records_with_the_same_decoder():
    from mindrecords.verify import SplitReport, _stored_label

    ids = np.zeros((4, 6), np.uint8)
    good = {"image": _png(np.zeros((4, 6, 3), np.uint8)), "label": _png(ids), "height": 4, "width": 6}
    report = SplitReport("val")
    np.testing.assert_array_equal(_stored_label(good, "record 'a'", report, Path("s")), ids)
    deep = dict(good, image=_png(np.zeros((4, 6, 3), np.uint16)))
    palette = Image.fromarray(ids, "P")
    assert _stored_label(dict(deep, label=_pil_bytes(palette, "PNG")), "record 'b'", report, Path("s")) is None
    assert report.problems == [
        ("s", "record 'b': image is a 16-bit RGB PNG; records hold 8-bit RGB PNG or JPEG"),
        ("s", "record 'b': label bytes do not decode (label is not a single-channel 8-bit PNG: got a 1-bit "
              "palette PNG)")]

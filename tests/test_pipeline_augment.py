"""The native augmentation op: scale, crop, cat_max_ratio, photometric, label decoding."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from base.network_input import rescale_size
from mindrecords.schema import decode_label
from pipelines.augment import (AxisGrid, PadToCrop, Photometric, ScaleCropPhotometric, axis_grid, crop_passes,
                               resize_crop)


def _png(array: np.ndarray) -> np.ndarray:
    return np.frombuffer(cv2.imencode(".png", array)[1].tobytes(), np.uint8)


def _smooth_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def test_rescale_size_follows_mmcv_imrescale():
    # Cityscapes frame, base (2048, 1024) times the ratio: (short, long) = (512, 1024), (2048, 4096).
    assert rescale_size(1024, 2048, 512, 1024) == (512, 1024)
    assert rescale_size(1024, 2048, 2048, 4096) == (2048, 4096)
    # A small frame is scaled up to the base size.
    assert rescale_size(128, 256, 1024, 2048) == (1024, 2048)
    # The limiting side decides: a square image fits the short side of the target.
    h, w = rescale_size(300, 300, 1024, 2048)
    assert (h, w) == (1024, 1024)


def _bilinear(image: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Reference bilinear sampling (pixel centres at integers, clamped border) in float64."""
    h, w = image.shape[:2]
    ys, xs = np.clip(ys, 0, h - 1), np.clip(xs, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    f = image.astype(np.float64)
    return (f[y0][:, x0] * (1 - fy) * (1 - fx) + f[y0][:, x1] * (1 - fy) * fx
            + f[y1][:, x0] * fy * (1 - fx) + f[y1][:, x1] * fy * fx)


def _points(grid: AxisGrid) -> np.ndarray:
    step = (grid.hi - grid.lo) / grid.out_len
    return grid.lo + (grid.first + np.arange(len(grid.index)) + 0.5) * step - 0.5


def test_crop_is_sampled_where_the_grid_says_and_near_the_drawn_window():
    image = _smooth_image(96, 160)
    rng = np.random.default_rng(0)
    for trial in range(400):
        # Half the trials near scale 1, where rounding makes window and output the same size.
        sh = int(rng.integers(20, 300)) if trial % 2 else int(rng.integers(94, 99))
        sw = int(rng.integers(20, 400)) if trial % 2 else int(rng.integers(158, 163))
        ch, cw = min(int(rng.integers(4, 80)), sh), min(int(rng.integers(4, 80)), sw)
        top, left = int(rng.integers(0, sh - ch + 1)), int(rng.integers(0, sw - cw + 1))
        rows, cols = axis_grid(top, ch, 96, sh), axis_grid(left, cw, 160, sw)
        crop = resize_crop(image, rows, cols)
        assert crop.shape == (ch, cw, 3)
        ys, xs = _points(rows), _points(cols)
        # OpenCV's fixed-point bilinear is within one grey level of the exact value.
        assert np.abs(crop - _bilinear(image, ys, xs)).max() < 1.0
        # The label index is the source pixel nearest to each sampling point.
        assert np.abs(rows.index - np.clip(ys, 0, 95)).max() <= 0.5 + 1e-9
        assert np.abs(cols.index - np.clip(xs, 0, 159)).max() <= 0.5 + 1e-9
        # The crop lies within about half a scaled pixel of the drawn offset.
        assert abs((ys[0] + 0.5) * sh / 96 - 0.5 - top) < 0.6
        assert abs((xs[0] + 0.5) * sw / 160 - 0.5 - left) < 0.6


def _op(crop=32, base=(64, 32), ratio=(1.0, 1.0), cat_max_ratio=1.0, tries=10, photometric=None):
    return ScaleCropPhotometric(crop, base, ratio, cat_max_ratio, tries, 255, photometric)


def _coded_pair(h: int, w: int, seed: int = 0):
    """Blocky trainIds (with ignore) and an image whose colour is a function of the label."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 20, (h // 16, w // 16))
    label = np.where(blocks == 19, 255, blocks).astype(np.uint8)
    label = cv2.resize(label, (w, h), interpolation=cv2.INTER_NEAREST)
    palette = _palette()
    return palette[label], label


def _palette() -> np.ndarray:
    palette = np.zeros((256, 3), np.uint8)
    for k in range(19):
        palette[k] = (40 + 10 * k, 230 - 9 * k, 60 + (k * 67) % 150)
    palette[255] = (5, 5, 5)
    return palette


def _decode_colours(image: np.ndarray) -> np.ndarray:
    palette = _palette()
    ids = np.array(list(range(19)) + [255])
    dist = ((image[:, :, None, :].astype(int) - palette[ids][None, None].astype(int)) ** 2).sum(-1)
    return ids[dist.argmin(-1)].astype(np.uint8)


def _interior(label: np.ndarray) -> np.ndarray:
    """Pixels whose 5x5 neighbourhood has one class: away from (up to 2x) bilinear blending.

    The crop's 2-pixel rim is left out: a class edge just outside the crop is invisible here.
    """
    lo = cv2.erode(label, np.ones((5, 5), np.uint8))
    hi = cv2.dilate(label, np.ones((5, 5), np.uint8))
    inner = lo == hi
    inner[:2], inner[-2:], inner[:, :2], inner[:, -2:] = False, False, False, False
    return inner


@pytest.mark.parametrize("ratio", [(0.5, 0.5), (1.0, 1.0), (1.7, 2.0)])
def test_label_stays_aligned_with_image_after_scale_and_crop(ratio):
    image, label = _coded_pair(64, 128)
    op = _op(crop=40, base=(128, 64), ratio=ratio)
    for seed in range(5):
        out_image, out_label = op(image, _png(label), seed)
        assert out_label.dtype == np.uint8 and out_label.ndim == 2
        assert out_image.shape[:2] == out_label.shape
        inner = _interior(out_label)
        assert inner.mean() > 0.2
        assert (_decode_colours(out_image)[inner] == out_label[inner]).mean() > 0.99
        # Nearest-neighbour labels only: every value existed in the source.
        assert set(np.unique(out_label)) <= set(np.unique(label))


def test_scale_range_and_crop_size():
    h, w = 64, 128
    image, label = _coded_pair(h, w)
    op = _op(crop=48, base=(128, 64), ratio=(0.5, 2.0))
    rng_sizes = []
    for seed in range(40):
        rng = np.random.default_rng(seed)
        ratio = rng.uniform(0.5, 2.0)
        scaled = rescale_size(h, w, int(64 * ratio), int(128 * ratio))  # the op's base (128, 64) times the ratio
        out_image, out_label = op(image, _png(label), seed)
        # The crop is the crop size, or the whole scaled side when that is smaller.
        assert out_label.shape == (min(48, scaled[0]), min(48, scaled[1]))
        rng_sizes.append(scaled[0])
    assert min(rng_sizes) >= 32 and max(rng_sizes) <= 128
    assert max(rng_sizes) - min(rng_sizes) > 50  # the ratio really varies


def test_crop_passes_ignores_void_pixels():
    def strip(counts):
        return np.concatenate([np.full(n, k, np.uint8) for k, n in counts.items()]).reshape(1, -1)

    assert crop_passes(strip({0: 60, 1: 40}), 0.75, 255)
    assert not crop_passes(strip({0: 80, 1: 20}), 0.75, 255)
    # 60 of 75 labelled pixels is 0.8: fails, although 60 of all 100 pixels would pass.
    assert not crop_passes(strip({0: 60, 1: 15, 255: 25}), 0.75, 255)
    # One class plus void is never enough.
    assert not crop_passes(strip({0: 10, 255: 90}), 0.75, 255)


def test_cat_max_ratio_is_honoured():
    # Class 1 fills the right quarter: a 100-wide window passes only for left in 226..274.
    label = np.zeros((100, 400), np.uint8)
    label[:, 300:] = 1
    image = _palette()[label]
    png = _png(label)

    def pass_rate(op):
        return np.mean([crop_passes(op(image, png, s)[1], 0.75, 255) for s in range(60)])

    assert pass_rate(_op(crop=100, base=(400, 100), cat_max_ratio=0.75, tries=1000)) == 1.0
    assert pass_rate(_op(crop=100, base=(400, 100), cat_max_ratio=1.0)) < 0.4
    assert 0.6 < pass_rate(_op(crop=100, base=(400, 100), cat_max_ratio=0.75, tries=10)) < 1.0


def _mmseg_photometric(rgb, params):
    """mmseg's PhotoMetricDistortion written plainly, on BGR as mmseg loads images."""
    def convert(x, alpha=1, beta=0):
        return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    img = np.ascontiguousarray(rgb[:, :, ::-1])
    if params["brightness"] is not None:
        img = convert(img, beta=params["brightness"])
    if params["contrast_first"] and params["contrast"] is not None:
        img = convert(img, alpha=params["contrast"])
    if params["saturation"] is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 1] = convert(hsv[:, :, 1], alpha=params["saturation"])
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if params["hue"] is not None:
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + params["hue"]) % 180
        img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
    if not params["contrast_first"] and params["contrast"] is not None:
        img = convert(img, alpha=params["contrast"])
    return img[:, :, ::-1]


def test_photometric_matches_mmseg_for_every_draw():
    p = Photometric()
    image = _smooth_image(48, 64, seed=3)
    seen = {"brightness": set(), "contrast": set(), "saturation": set(), "hue": set(), "contrast_first": set()}
    for seed in range(48):
        params = p.draw(np.random.default_rng(seed))
        for key in seen:
            seen[key].add(params[key] is not None if key != "contrast_first" else params[key])
        assert np.array_equal(p.apply(image, params), _mmseg_photometric(image, params))
        assert np.array_equal(p(image, np.random.default_rng(seed)), p.apply(image, params))
    # Every step was both applied and skipped, contrast both before and after HSV.
    assert all(v == {True, False} for v in seen.values())


def test_photometric_parameter_ranges():
    p = Photometric(prob=1.0, brightness_delta=10, contrast_range=(0.8, 0.9), saturation_range=(1.1, 1.2),
                    hue_delta=5)
    draws = [p.draw(np.random.default_rng(s)) for s in range(200)]
    assert all(-10 <= d["brightness"] <= 10 for d in draws)
    assert all(0.8 <= d["contrast"] <= 0.9 and 1.1 <= d["saturation"] <= 1.2 for d in draws)
    # mmseg draws the hue shift with randint(-d, d): d itself is excluded.
    assert {d["hue"] for d in draws} == set(range(-5, 5))
    none = Photometric(prob=0.0).draw(np.random.default_rng(0))
    assert none["brightness"] is None and none["contrast"] is None and none["hue"] is None


def test_decode_label_rejects_colour_and_16_bit_pngs():
    label = np.arange(64, dtype=np.uint8).reshape(8, 8)
    assert np.array_equal(decode_label(_png(label)), label)
    with pytest.raises(ValueError, match="single-channel 8-bit"):
        decode_label(_png(np.dstack([label] * 3)))
    with pytest.raises(ValueError, match="single-channel 8-bit"):
        decode_label(_png(label.astype(np.uint16)))
    with pytest.raises(ValueError, match="single-channel 8-bit"):
        decode_label(np.frombuffer(b"not a png", np.uint8))


def test_image_and_label_size_mismatch_is_an_error():
    image, label = _coded_pair(64, 128)
    with pytest.raises(ValueError, match="differ in size"):
        _op()(image, _png(label[:32]), 0)


def test_pad_to_crop_pads_with_0_and_ignore_and_records_the_valid_size():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    label = rng.integers(0, 19, (5, 7), dtype=np.uint8)
    out, padded, valid = PadToCrop(9, 255)(image, label)
    assert out.shape == (9, 9, 3) and out.dtype == np.uint8
    assert padded.shape == (9, 9) and padded.dtype == np.uint8
    assert list(valid) == [5, 7] and valid.dtype == np.int32
    assert np.array_equal(out[:5, :7], image) and np.array_equal(padded[:5, :7], label)
    assert (out[5:] == 0).all() and (out[:, 7:] == 0).all()
    assert (padded[5:] == 255).all() and (padded[:, 7:] == 255).all()
    full = rng.integers(0, 256, (9, 9, 3), dtype=np.uint8)
    same = PadToCrop(9, 255)(full, label[:1, :1].repeat(9, 0).repeat(9, 1))
    assert same[0] is full and list(same[2]) == [9, 9]
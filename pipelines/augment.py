"""Native-code training augmentations (OpenCV/NumPy calls that release the GIL).

`ScaleCropPhotometric` is one Python map op that does, per sample, what mmseg's
Resize(ratio_range) + RandomCrop(cat_max_ratio) + PhotoMetricDistortion do, but cheaper:
it picks the crop window in the coordinates of the scaled image, then resamples only the
source pixels under that window (the full scaled image, up to 4x the source, is never
built). MindSpore has no C op that scales image and label by one random factor with
different interpolations, nor mmseg's cat_max_ratio crop; its colour ops follow PIL
(AdjustBrightness multiplies, AdjustSaturation blends with grey) where mmseg adds a brightness
offset and scales saturation in 8-bit HSV, so the photometric distortion is native too.
Every random draw comes from a per-sample seed, so results do not depend on which worker
thread handles a sample.

`PadToCrop` finishes a sample after the flip: it pads image and label to the crop and records
the size of the real area. Normalization, CHW and the int32 label happen in the train step's
graph (`train.normalize.NormalizeBatch`), where they cost nothing next to the network: the
pipeline ships uint8 (a quarter of float32's bytes through batching and to the device), and
normalizing on the host cost a noticeable share of the pipeline's throughput (measured on JPEG
shards; docs/mindspore_notes.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

from base.labels import IGNORE
from base.network_input import rescale_size
from mindrecords.schema import decode_label


@dataclass(frozen=True)
class AxisGrid:
    """Where the pixels of a scaled crop sample the source image, along one axis.

    The source window `[lo, hi)` is resized to `out_len` pixels; the crop is resized pixels
    `first ... first + len(index) - 1`. Resized pixel d sits at source coordinate
    `lo + (d + 0.5) * (hi - lo) / out_len - 0.5` (pixel centres at integers), and `index`
    holds the source pixel nearest to each crop pixel, so label and image come from the same
    points.
    """

    lo: int
    hi: int
    out_len: int
    first: int
    index: np.ndarray


def axis_grid(start: int, length: int, src_len: int, scaled_len: int) -> AxisGrid:
    """The grid of `length` crop pixels from `start` of the source scaled to `scaled_len`.

    The window is resized by the integer ratio out_len / (hi - lo), which is within
    0.5 / (hi - lo) of the drawn scale (a random number anyway), and the crop starts at the
    resized pixel nearest to `start`: at most half a scaled pixel from the drawn offset.
    Integer sizes also keep clear of cv2.resize's shortcut that copies instead of resizing
    when the rounded size equals the input size. The window keeps a margin so that no crop
    pixel reads OpenCV's replicated border, except at the source's own border (as resizing
    the whole image would).
    """
    step = src_len / scaled_len
    margin = int(np.ceil(step)) + 1
    lo = max(0, int(np.floor((start + 0.5) * step - 0.5)) - margin)
    hi = min(src_len, int(np.floor((start + length - 0.5) * step - 0.5)) + margin + 1)
    out_len = max(1, int(np.rint((hi - lo) / step)))
    window_step = (hi - lo) / out_len
    first = int(np.rint(((start + 0.5) * step - lo) / window_step - 0.5))
    first = max(0, min(first, out_len - length))
    centre = lo + (first + np.arange(length) + 0.5) * window_step  # sampling point + 0.5
    index = np.minimum(centre.astype(np.int64), src_len - 1)
    return AxisGrid(lo, hi, out_len, first, index)


def resize_crop(image: np.ndarray, rows: AxisGrid, cols: AxisGrid) -> np.ndarray:
    """Bilinear: the crop described by `rows` x `cols`, resampling only the source window."""
    window = image[rows.lo:rows.hi, cols.lo:cols.hi]
    resized = cv2.resize(window, (cols.out_len, rows.out_len), interpolation=cv2.INTER_LINEAR)
    return resized[rows.first:rows.first + len(rows.index), cols.first:cols.first + len(cols.index)]


def crop_passes(label_crop: np.ndarray, cat_max_ratio: float, ignore_index: int) -> bool:
    """mmseg's test: more than one class, and none above cat_max_ratio of the labelled pixels."""
    counts = cv2.calcHist([label_crop], [0], None, [256], [0, 256]).ravel()  # faster than np.bincount
    counts[ignore_index] = 0
    present = counts[counts > 0]
    return len(present) > 1 and present.max() / present.sum() < cat_max_ratio


@dataclass(frozen=True)
class Photometric:
    """mmseg's PhotoMetricDistortion on a uint8 RGB image, step for step.

    Brightness and contrast are per-value affine maps with clipping and truncation to
    uint8, so each is applied as an exact 256-entry lookup table (computed in float32,
    as mmseg does); saturation and hue each round-trip through HSV, as mmseg does.
    """

    prob: float = 0.5
    brightness_delta: float = 32
    contrast_range: Tuple[float, float] = (0.5, 1.5)
    saturation_range: Tuple[float, float] = (0.5, 1.5)
    hue_delta: int = 18

    @staticmethod
    def _affine_lut(alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
        values = np.arange(256, dtype=np.float32) * np.float32(alpha) + np.float32(beta)
        return np.clip(values, 0, 255).astype(np.uint8)

    @staticmethod
    def _apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
        # A brightness-only table is almost always a saturating integer shift, which cv2.add/subtract
        # apply several times faster than a table lookup; the table comparison keeps it exact.
        shift = int(lut[128]) - 128
        if np.array_equal(lut, np.clip(np.arange(256) + shift, 0, 255)):
            op = cv2.add if shift >= 0 else cv2.subtract
            return op(image, (abs(shift),) * image.shape[2] + (0,) * (4 - image.shape[2]))
        return cv2.LUT(image, lut)

    def _hsv_channel(self, image: np.ndarray, channel: int, lut: np.ndarray) -> np.ndarray:
        hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
        hsv[:, :, channel] = cv2.LUT(hsv[:, :, channel], lut)
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)

    def draw(self, rng: np.random.Generator) -> dict:
        """The random parameters of one application; None means the step is skipped."""
        def maybe(value):
            return value() if rng.random() < self.prob else None

        return {
            "brightness": maybe(lambda: rng.uniform(-self.brightness_delta, self.brightness_delta)),
            "contrast_first": bool(rng.random() < 0.5),
            "contrast": maybe(lambda: rng.uniform(*self.contrast_range)),
            "saturation": maybe(lambda: rng.uniform(*self.saturation_range)),
            # mmseg draws the hue shift with randint(-d, d): the upper bound is excluded.
            "hue": maybe(lambda: int(rng.integers(-self.hue_delta, self.hue_delta))),
        }

    def apply(self, image: np.ndarray, params: dict) -> np.ndarray:
        """mmseg's order: brightness, contrast (first), saturation, hue, contrast (last)."""
        lut = None
        if params["brightness"] is not None:
            lut = self._affine_lut(beta=params["brightness"])
        contrast = None if params["contrast"] is None else self._affine_lut(alpha=params["contrast"])
        if contrast is not None and params["contrast_first"]:
            lut = contrast if lut is None else contrast[lut]  # both map uint8 to uint8: composing is exact
        if lut is not None:
            image = self._apply_lut(image, lut)
        if params["saturation"] is not None:
            image = self._hsv_channel(image, 1, self._affine_lut(alpha=params["saturation"]))
        if params["hue"] is not None:
            # OpenCV's 8-bit hue is 0..179.
            image = self._hsv_channel(image, 0, ((np.arange(256) + params["hue"]) % 180).astype(np.uint8))
        if contrast is not None and not params["contrast_first"]:
            image = self._apply_lut(image, contrast)
        return image

    def __call__(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(image, self.draw(rng))


class ScaleCropPhotometric:
    """Map op: (image HxWx3 uint8 RGB, encoded label PNG, seed) -> (image crop, label crop).

    The crop is at most `crop_size` on each side (smaller when the scaled image is);
    padding to the full crop happens later, after flip and normalization.
    """

    def __init__(self, crop_size: int, base_size: Sequence[int], ratio_range: Sequence[float],
                 cat_max_ratio: float, cat_max_tries: int, ignore_index: int = IGNORE,
                 photometric: Photometric | None = None):
        self.crop_size = crop_size
        self.base_size = tuple(base_size)
        self.ratio_range = tuple(ratio_range)
        self.cat_max_ratio = cat_max_ratio
        self.cat_max_tries = cat_max_tries
        self.ignore_index = ignore_index
        self.photometric = photometric

    def choose_window(self, label: np.ndarray, scaled_hw: Tuple[int, int], rng: np.random.Generator):
        """mmseg's RandomCrop on the scaled label: (row grid, column grid, label crop).

        Up to `cat_max_tries` windows are tested; if none passes, the next draw is
        used untested (as mmseg does).
        """
        ch, cw = min(self.crop_size, scaled_hw[0]), min(self.crop_size, scaled_hw[1])

        def draw():
            rows = axis_grid(int(rng.integers(0, scaled_hw[0] - ch + 1)), ch, label.shape[0], scaled_hw[0])
            cols = axis_grid(int(rng.integers(0, scaled_hw[1] - cw + 1)), cw, label.shape[1], scaled_hw[1])
            return rows, cols, label.take(rows.index, axis=0).take(cols.index, axis=1)

        rows, cols, window = draw()
        if self.cat_max_ratio < 1.0:
            for _ in range(self.cat_max_tries):
                if crop_passes(window, self.cat_max_ratio, self.ignore_index):
                    break
                rows, cols, window = draw()
        return rows, cols, window

    def __call__(self, image: np.ndarray, label_png: np.ndarray, seed) -> Tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(int(np.asarray(seed)))
        label = decode_label(label_png)
        height, width = image.shape[:2]
        if label.shape != (height, width):
            raise ValueError(f"image {height}x{width} and label {label.shape[0]}x{label.shape[1]} differ in size")
        ratio = rng.uniform(*self.ratio_range)
        long, short = (int(side * ratio) for side in self.base_size)  # mmseg's img_scale times the ratio
        scaled_hw = rescale_size(height, width, short, long)
        rows, cols, label_crop = self.choose_window(label, scaled_hw, rng)
        image_crop = resize_crop(image, rows, cols)
        if self.photometric is not None:
            image_crop = self.photometric(image_crop, rng)
        return np.ascontiguousarray(image_crop), label_crop


class PadToCrop:
    """Map op after the flip: (image HxWx3 uint8, label HxW uint8) with H, W <= crop ->
    (image crop x crop x 3 padded with 0, label padded with `ignore_index`, valid = [H, W] int32).

    The image padding is replaced by 0 in normalized space in the graph (as mmseg pads after
    Normalize): `valid` says where the real pixels end. The label padding is never a class.
    """

    def __init__(self, crop_size: int, ignore_index: int = IGNORE):
        self.crop_size = crop_size
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, label: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        h, w = label.shape
        valid = np.array([h, w], np.int32)
        if (h, w) == (self.crop_size, self.crop_size):
            return image, label, valid
        padded_image = np.zeros((self.crop_size, self.crop_size, 3), np.uint8)
        padded_image[:h, :w] = image
        padded_label = np.full((self.crop_size, self.crop_size), self.ignore_index, np.uint8)
        padded_label[:h, :w] = label
        return padded_image, padded_label, valid

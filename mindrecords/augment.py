"""Native-code training augmentations MindSpore has no faithful C op for.

`ScaleCropPhotometric` is one Python map op that does, per sample, what mmseg's
Resize(ratio_range) + RandomCrop(cat_max_ratio) + PhotoMetricDistortion do, but cheaper:
it picks the crop window in the coordinates of the scaled image, then resamples only
that window from the original (the full scaled image is never built). All pixel work is
OpenCV or NumPy calls that release the GIL, so several dataset worker threads run in
parallel. Every random draw comes from a per-sample seed, so results do not depend on
which worker thread handles a sample.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Tuple

import cv2
import numpy as np

from prep.labels import IGNORE


def rescale_size(height: int, width: int, base_size: Sequence[int], ratio: float) -> Tuple[int, int]:
    """mmcv.imrescale's output size for scale `base_size * ratio` (keep aspect ratio).

    `base_size` is (width, height) as in mmseg's img_scale; the image is scaled so that
    its long side fits the long side of the target and its short side the short side.
    """
    scale = (int(base_size[0] * ratio), int(base_size[1] * ratio))
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def nearest_index(dst_len: int, src_len: int) -> np.ndarray:
    """Source index of each destination pixel for nearest-neighbour resampling.

    Pixel centres are aligned (as in the bilinear image resampling), so a label pixel
    always comes from the source pixel whose centre is closest to where the image
    pixel was sampled.
    """
    idx = ((np.arange(dst_len, dtype=np.float64) + 0.5) * (src_len / dst_len)).astype(np.int64)
    return np.minimum(idx, src_len - 1)


def resize_window(image: np.ndarray, scaled_hw: Tuple[int, int], top: int, left: int,
                  out_hw: Tuple[int, int]) -> np.ndarray:
    """Bilinear: the window [top, top+h) x [left, left+w) of `image` resized to `scaled_hw`.

    Equals cv2.resize(image, scaled_hw) cropped to the window (half-pixel centres,
    replicated border), computed only for the window's pixels.
    """
    h, w = image.shape[:2]
    sy, sx = h / scaled_hw[0], w / scaled_hw[1]
    # Inverse map: destination pixel (x, y) samples source ((x+left+0.5)*sx-0.5, ...).
    matrix = np.array([[sx, 0.0, (left + 0.5) * sx - 0.5],
                       [0.0, sy, (top + 0.5) * sy - 0.5]], dtype=np.float64)
    return cv2.warpAffine(image, matrix, (out_hw[1], out_hw[0]),
                          flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def decode_label(data: np.ndarray) -> np.ndarray:
    """A stored label PNG -> (H, W) uint8 trainIds.

    Not vision.Decode: it expands a grayscale PNG to 3 channels and costs twice as much.
    """
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError("label is not a single-channel 8-bit PNG")
    return label


def crop_passes(label_crop: np.ndarray, cat_max_ratio: float, ignore_index: int) -> bool:
    """mmseg's test: more than one class, and none above cat_max_ratio of the labelled pixels."""
    counts = cv2.calcHist([label_crop], [0], None, [256], [0, 256]).ravel()  # 4x faster than np.bincount
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
        """mmseg's RandomCrop window on the scaled label: (top, left, label crop).

        Up to `cat_max_tries` windows are tested; if none passes, the next draw is
        used untested (as mmseg does).
        """
        ch, cw = min(self.crop_size, scaled_hw[0]), min(self.crop_size, scaled_hw[1])
        rows = nearest_index(scaled_hw[0], label.shape[0])
        cols = nearest_index(scaled_hw[1], label.shape[1])

        def draw():
            top = int(rng.integers(0, scaled_hw[0] - ch + 1))
            left = int(rng.integers(0, scaled_hw[1] - cw + 1))
            window = label.take(rows[top:top + ch], axis=0).take(cols[left:left + cw], axis=1)
            return top, left, window

        top, left, window = draw()
        if self.cat_max_ratio < 1.0:
            for _ in range(self.cat_max_tries):
                if crop_passes(window, self.cat_max_ratio, self.ignore_index):
                    break
                top, left, window = draw()
        return top, left, window

    def __call__(self, image: np.ndarray, label_png: np.ndarray, seed) -> Tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(int(np.asarray(seed)))
        label = decode_label(label_png)
        height, width = image.shape[:2]
        if label.shape != (height, width):
            raise ValueError(f"image {height}x{width} and label {label.shape[0]}x{label.shape[1]} differ in size")
        ratio = rng.uniform(*self.ratio_range)
        scaled_hw = rescale_size(height, width, self.base_size, ratio)
        top, left, label_crop = self.choose_window(label, scaled_hw, rng)
        image_crop = resize_window(image, scaled_hw, top, left, label_crop.shape)
        if self.photometric is not None:
            image_crop = self.photometric(image_crop, rng)
        return image_crop, np.ascontiguousarray(label_crop)

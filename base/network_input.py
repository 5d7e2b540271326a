"""The network's input made from uint8 RGB: (x - mean) / std, channels first, at the inference size.

One definition for evaluation (`pipelines.eval_pipeline`) and `predict`, so both feed the
network identical arrays; the train step computes the same formula inside its graph with the
constants from `normalization` (`train.normalize`).
"""
from __future__ import annotations

import cv2
import numpy as np

from base.resize import resize_bilinear, source_rows

BAND_ROWS = 256  # rows normalized at a time: the float32 image at the source size is never built


def rescale_size(h: int, w: int, short: int, long: int) -> tuple[int, int]:
    """mmcv's `imrescale` size for mmseg's `Resize(img_scale=(long, short), keep_ratio=True)`: the
    largest scale that keeps the long side within the larger and the short side within the smaller
    of the two, each side `int(side * scale + 0.5)`."""
    scale = min(max(short, long) / max(h, w), min(short, long) / min(h, w))
    return int(h * scale + 0.5), int(w * scale + 0.5)


def inference_size(h: int, w: int, infer_size: int, max_long_side: int | None = 0) -> tuple[int, int]:
    """Size with the short side at `infer_size` (0 = keep), as the official evaluation's resize;
    with `max_long_side` > 0, mmseg's keep-ratio resize to (max_long_side, infer_size) instead
    (None, a config that leaves it to a data set it was never given, caps nothing, as 0)."""
    if infer_size <= 0:
        return h, w
    if max_long_side:
        return rescale_size(h, w, infer_size, max_long_side)
    if min(h, w) == infer_size:
        return h, w
    r = infer_size / min(h, w)
    return int(h * r + 0.5), int(w * r + 0.5)


def normalization(mean, std) -> tuple[np.ndarray, np.ndarray]:
    """(mean, std) as float32 RGB vectors: every normalization computes (x - mean) / std in float32."""
    mean, std = np.asarray(mean, np.float32), np.asarray(std, np.float32)
    if mean.shape != (3,) or std.shape != (3,) or (std == 0).any():
        raise ValueError(f"mean {mean} and std {std} must be 3 values each, std non-zero")
    return mean, std


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """(H, W, 3) uint8 -> (3, H, W) float32 of (rgb - mean) / std."""
    mean, std = normalization(mean, std)
    return np.ascontiguousarray(((rgb.astype(np.float32) - mean) / std).transpose(2, 0, 1))


def network_input(rgb: np.ndarray, mean, std, infer_size: int, max_long_side: int | None = 0) -> np.ndarray:
    """(3, h, w) float32 at `inference_size`. With `max_long_side` > 0 (mmseg's protocol), `rgb` is
    resized as mmcv's `imrescale` does (cv2 bilinear on the uint8 image), then normalized. Otherwise
    `rgb` is normalized, then resized bilinearly (align_corners=False) so that its short side is
    `infer_size` (0 keeps the size); made band by band, bit-identical to normalizing the whole image
    and resizing it."""
    h = rgb.shape[0]
    size = inference_size(h, rgb.shape[1], infer_size, max_long_side)
    if size == rgb.shape[:2]:
        return normalize(rgb, mean, std)
    # Its size is bounded by the callers: they check the sliding window's cost first (evaluate/cost.py).
    if max_long_side:
        return normalize(cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR), mean, std)
    out = np.empty((3, *size), np.float32)
    for r0 in range(0, size[0], BAND_ROWS):
        r1 = min(r0 + BAND_ROWS, size[0])
        s0, s1 = source_rows(h, size[0], r0, r1)
        out[:, r0:r1] = resize_bilinear(normalize(rgb[s0:s1], mean, std), size, rows=(r0, r1), source_height=h,
                                        row_offset=s0)
    return out

"""The one label overlay: a class table's palette blended over an image (prediction sets, inspection, predict)."""
from __future__ import annotations

import numpy as np

from base.class_table import CITYSCAPES, ClassTable
from base.labels import IGNORE


def overlay(rgb: np.ndarray, train_ids: np.ndarray, ignore_index: int = IGNORE, alpha: float = 0.5,
            table: ClassTable = CITYSCAPES) -> np.ndarray:
    """(H, W, 3) uint8: floor((1 - alpha) * rgb + alpha * colour), the colour of each class index in
    `table`'s palette, per channel (at 0.5 exactly
    floor((rgb + colour) / 2): both halves are exact in float32). Pixels of `ignore_index` (void,
    crop padding) are blended with a black/white checkerboard, which no class colour resembles."""
    colours = table.colorize(train_ids)
    void = train_ids == ignore_index
    if void.any():
        yy, xx = np.indices(train_ids.shape)
        checker = np.where(((yy // 8 + xx // 8) % 2 == 0)[..., None], 255, 0).astype(np.uint8)
        colours = np.where(void[..., None], checker, colours)
    a = np.float32(alpha)
    return np.floor((1 - a) * rgb.astype(np.float32) + a * colours.astype(np.float32)).astype(np.uint8)

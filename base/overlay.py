"""The one label overlay: palette colours blended 50 % over an image (prediction sets, inspection)."""
from __future__ import annotations

import numpy as np

from base.labels import IGNORE, colorize


def overlay(rgb: np.ndarray, train_ids: np.ndarray, ignore_index: int = IGNORE) -> np.ndarray:
    """(H, W, 3) uint8: floor((rgb + colour) / 2) per channel. Pixels of `ignore_index` (void, crop
    padding) are blended with a black/white checkerboard, which no class colour resembles."""
    colours = colorize(train_ids)
    void = train_ids == ignore_index
    if void.any():
        yy, xx = np.indices(train_ids.shape)
        checker = np.where(((yy // 8 + xx // 8) % 2 == 0)[..., None], 255, 0).astype(np.uint8)
        colours = np.where(void[..., None], checker, colours)
    return ((rgb.astype(np.uint16) + colours) // 2).astype(np.uint8)

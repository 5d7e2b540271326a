"""NumPy bilinear resize: the sampling positions and weights of the reference's
`F.interpolate(mode="bilinear", align_corners=False)`.

One copy for every user: position-embedding resizing at weight import, the evaluation input
resize and the sliding window's logit resizes.
"""
from __future__ import annotations

import numpy as np


def _axis_weights(n_in: int, n_out: int):
    """torch bilinear, align_corners=False: source index and weight per output index."""
    scale = n_in / n_out
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i0 = np.minimum(i0, n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = (src - i0).astype(np.float32)
    return i0, i1, lam


def resize_bilinear(x: np.ndarray, size) -> np.ndarray:
    """Resize a (C,H,W) float array to size (h,w) exactly like F.interpolate(bilinear, align_corners=False)."""
    h, w = int(size[0]), int(size[1])
    if (h, w) == x.shape[1:]:
        return x
    i0, i1, lam = _axis_weights(x.shape[1], h)
    lam = lam[None, :, None]
    x = x[:, i0] * (1 - lam) + x[:, i1] * lam
    j0, j1, mu = _axis_weights(x.shape[2], w)
    return (x[:, :, j0] * (1 - mu) + x[:, :, j1] * mu).astype(np.float32, copy=False)

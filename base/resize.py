"""NumPy bilinear resize: the sampling positions and weights of the reference's
`F.interpolate(mode="bilinear", align_corners=False)`.

One copy for every user: position-embedding resizing at weight import, the evaluation input
resize and the sliding window's logit resizes. `rows` computes a band of output rows only, from
the two source rows each needs, with the very same arithmetic as the whole resize (bit for bit),
so large outputs can be made band by band in bounded memory.
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


def source_rows(n_in: int, n_out: int, r0: int, r1: int) -> tuple[int, int]:
    """The source rows [s0, s1) that output rows [r0, r1) read."""
    if n_in == n_out:
        return r0, r1
    i0, i1, _ = _axis_weights(n_in, n_out)
    return int(i0[r0]), int(i1[r1 - 1]) + 1


def resize_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) float32 matrix of the same resize along one axis: `m @ x` resizes x's rows
    (two weights per row, summing to 1), so a 2-D resize is `mh @ x @ mw.T`."""
    i0, i1, lam = _axis_weights(n_in, n_out)
    m = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(m, (rows, i0), 1 - lam)  # add: i0 == i1 at the border clamp
    np.add.at(m, (rows, i1), lam)
    return m


def resize_bilinear(x: np.ndarray, size, rows=None, source_height: int | None = None, row_offset: int = 0):
    """Resize a (C,H,W) float array to size (h,w) exactly like F.interpolate(bilinear, align_corners=False).

    `rows` (r0, r1): only output rows r0..r1-1. `x` may then hold just the source rows the band
    needs (`source_rows`), starting at source row `row_offset` of an image `source_height` tall.
    """
    h, w = int(size[0]), int(size[1])
    r0, r1 = rows if rows is not None else (0, h)
    n_in = x.shape[1] if source_height is None else source_height
    if n_in == h:
        x = x[:, r0 - row_offset:r1 - row_offset]
    else:
        i0, i1, lam = (a[r0:r1] for a in _axis_weights(n_in, h))
        lam = lam[None, :, None]
        x = x[:, i0 - row_offset] * (1 - lam) + x[:, i1 - row_offset] * lam
    if w == x.shape[2]:
        return x if x.dtype == np.float32 else x.astype(np.float32)
    j0, j1, mu = _axis_weights(x.shape[2], w)
    return (x[:, :, j0] * (1 - mu) + x[:, :, j1] * mu).astype(np.float32, copy=False)

"""Drop-path (stochastic depth) masks drawn on the host, for both step graphs.

Drawn from (seed, rank, step, micro-batch) rather than inside the graph, so a forward pass that
is recomputed for the backward (per-block step, `train.recompute`) drops exactly the branches the
first pass dropped, and the whole and per-block steps take identical updates.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms


def keep_masks(rates, batch: int, seed: int, rank: int, step: int, micro: int = 0) -> list:
    """Per block a (2,B,1,1) float32 mask (0 or 1/keep_prob) for its attention and MLP branches."""
    # Micro-batch 0 keeps the (seed, rank, step) key masks had before accumulation existed.
    key = [int(seed), int(rank), int(step)] + ([int(micro)] if micro else [])
    rng = np.random.default_rng(key)
    masks = []
    for rate in rates:
        u = rng.random((2, batch, 1, 1))
        keep = (u >= rate).astype(np.float32) / np.float32(1.0 - rate) if rate > 0 else np.ones_like(u, np.float32)
        masks.append(ms.Tensor(keep.astype(np.float32)))
    return masks


def block_rates(net) -> list:
    """The drop-path rate of each encoder block of a Segmenter."""
    return [blk.drop_path.rate for blk in net.encoder.blocks]

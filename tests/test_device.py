"""The exact count reduction's arithmetic (the collective itself runs in tests/test_train_dist.py)."""
from __future__ import annotations

import numpy as np

from base.device import from_limbs, to_limbs


def test_counts_survive_a_float32_sum_of_limbs_exactly():
    rng = np.random.default_rng(0)
    ranks = [rng.integers(0, 2**40, size=(19, 20), dtype=np.int64) for _ in range(256)]
    ranks[0][0, 0] = 2**47 - 1  # every limb at its maximum
    summed = np.sum([to_limbs(r) for r in ranks], axis=0, dtype=np.float32)  # what AllReduce computes
    assert summed.max() < 2**24  # each limb's sum is exact in float32
    assert np.array_equal(from_limbs(summed), np.sum(ranks, axis=0))
    # A plain float32 sum of the counts would not be exact.
    assert not np.array_equal(np.sum([r.astype(np.float32) for r in ranks], axis=0).astype(np.int64),
                              np.sum(ranks, axis=0))

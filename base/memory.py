"""How much memory this machine has: the bound every size is checked against before it is allocated."""
from __future__ import annotations

import functools
import os

_CGROUP_LIMITS = ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")


@functools.cache
def physical_memory_bytes() -> int:
    """RAM, or the container's memory limit if lower; a huge number where neither is known (no refusal)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 1 << 62
    for path in _CGROUP_LIMITS:
        try:
            with open(path) as fh:
                total = min(total, int(fh.read().strip()))
        except (OSError, ValueError):  # absent, or "max"
            continue
    return total


def gib(n: int) -> str:
    """Bytes as GiB in words, e.g. '56.3 GiB'."""
    return f"{n / 2**30:.3g} GiB" if n < 1000 * 2**30 else f"{n / 2**30:,.0f} GiB"

"""glibc malloc tuning for the shard writers."""
from __future__ import annotations

import ctypes


def reuse_freed_memory() -> None:
    """Let glibc's malloc keep freed multi-MB buffers for reuse (no effect elsewhere).

    Each sample allocates several 4-6 MB buffers (file bytes, decoded pixels, FileWriter's blob
    copies); by default glibc maps each from fresh zeroed pages and unmaps it on free. Raising
    the mmap and trim thresholds serves them from the heap instead, which more than halves
    FileWriter's write of a frame (docs/benchmarks.md). Peak memory stays that of one sample.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)

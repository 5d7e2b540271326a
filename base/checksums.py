"""CRC-32 checksums (ISA-L: the same values as zlib's, several times faster) for change and damage
detection.

Not security: CRC-32 is what PNG, gzip and zip rely on to find accidental damage; it misses a
random change with probability ~2**-32. Timings: docs/benchmarks.md.
"""
from __future__ import annotations

from isal import isal_zlib


def crc32_hex(data: bytes) -> str:
    return f"{isal_zlib.crc32(data):08x}"


def fingerprint(data: bytes) -> str:
    """A file's identity for change detection: CRC-32 and the size."""
    return f"{crc32_hex(data)}-{len(data)}"


def file_crc32(path) -> str:
    """CRC-32 of a file's bytes, read in 4 MB pieces (memory stays flat for multi-GB shards)."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = isal_zlib.crc32(chunk, crc)
    return f"{crc:08x}"

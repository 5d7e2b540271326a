"""CRC-32 checksums (ISA-L: the same values as zlib's, several times faster) for change and damage
detection.

Not security: CRC-32 is what PNG, gzip and zip rely on to find accidental damage; it misses a
random change with probability ~2**-32. Timings: docs/benchmarks.md.
"""
from __future__ import annotations

from isal import isal_zlib


def crc32_hex(data: bytes) -> str:
    return crc32_text(isal_zlib.crc32(data))


def crc32_text(crc: int) -> str:
    """A CRC-32 as the project records it (8 hex digits)."""
    return f"{crc:08x}"


def crc32_update(data: bytes, crc: int = 0) -> int:
    """The CRC-32 of what `crc` covered followed by `data`."""
    return isal_zlib.crc32(data, crc)


def crc32_concat(first: int, second: int, second_length: int) -> int:
    """The CRC-32 of two pieces one after the other from each one's CRC-32: a file written out of
    order (plane by plane, band by band) is checksummed as it is written, never read back."""
    return isal_zlib.crc32_combine(first, second, second_length)


def fingerprint(data: bytes) -> str:
    """A file's identity for change detection: CRC-32 and the size."""
    return f"{crc32_hex(data)}-{len(data)}"


def file_crc32(path) -> str:
    """CRC-32 of a file's bytes, read in 4 MB pieces (memory stays flat for multi-GB shards)."""
    crc = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            crc = isal_zlib.crc32(chunk, crc)
    return crc32_text(crc)

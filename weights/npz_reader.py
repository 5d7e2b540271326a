"""Reading a `.npz` (Google ViT weights) with every array's size checked before it is allocated.

`np.load` allocates the shape an array's header declares before reading its data, so a 1 KB
file declaring a (10**6, 10**6) array raises MemoryError (or swaps) instead of a clear error. Here
each member's `.npy` header is parsed first; its byte count (shape x itemsize) is charged to the
archive's inflate budget (weights/bounded_zip.py) and then read as exactly that many bytes.
Object arrays (pickles) are refused, as `allow_pickle=False` does.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

from base.errors import UserError
from weights.bounded_zip import BoundedZip, BoundExceeded

HEADER_LIMIT = 1 << 16  # a .npy header is a short dict literal


class NpzError(UserError, ValueError):
    """The file is not a readable .npz of plain arrays; the message names it."""


def _read_array(archive: BoundedZip, member: str) -> np.ndarray:
    with archive.open(member) as fh:
        version = npy.read_magic(fh)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise NpzError(f"{member}: unsupported .npy version {version}")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        shape, fortran, dtype = read_header(fh, max_header_size=HEADER_LIMIT)
        if dtype.hasobject:
            raise NpzError(f"{member}: object arrays (pickled data) are refused")
        count = int(np.prod(shape, dtype=object)) if shape else 1
        nbytes = count * dtype.itemsize
        archive.check(nbytes, f"{member} {shape} {dtype}")  # the read below charges it
        data = fh.read(nbytes + 1)
    if len(data) != nbytes:
        raise NpzError(f"{member}: holds {len(data)} data bytes, its header declares {nbytes} ({shape} {dtype})")
    array = np.frombuffer(data, dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def read_npz(path) -> dict[str, np.ndarray]:
    """{key: array} of a .npz; NpzError naming the file for a truncated, oversized or unsafe one."""
    path = Path(path)
    try:
        with BoundedZip(path) as archive:
            names = [n for n in archive.names() if n.endswith(".npy")]
            return {n[: -len(".npy")]: _read_array(archive, n) for n in names}
    except NpzError as err:
        raise NpzError(f"{path}: {err}") from None
    except (BoundExceeded, ValueError, zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError) as err:
        raise NpzError(f"{path}: not a readable .npz ({type(err).__name__}: {err})") from None
    except MemoryError:
        raise NpzError(f"{path}: declares more data than fits in memory") from None

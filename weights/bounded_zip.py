"""Reading zip members (a `.pth`'s storages, a `.npz`'s arrays) with a hard bound on what they inflate to.

A zip's own size fields are written by whoever made the file, so nothing here trusts them:
every member is read through `read_member`, which stops after the number of bytes the caller
expects (plus one, to tell "longer" from "exact") and charges them to a budget for the whole
archive. The budget is a fixed multiple of the file's size on disk: weight files are stored
uncompressed (`torch.save`, `np.savez`) or deflate float data by far less than that, while a
zip bomb (1.5 MB inflating to 1.5 GB) is stopped after a few megabytes.
"""
from __future__ import annotations

import io
import os
from base.errors import UserError
import zipfile

# Inflated bytes allowed per byte of file: float weights deflate by ~1.1x; 8x leaves ample room.
INFLATE_RATIO = 8
INFLATE_SLACK = 1 << 20  # small files (tiny test models, metadata members) need a floor


class BoundExceeded(UserError, ValueError):
    """A member would inflate past the caller's expectation or the archive's budget."""


class BoundedZip:
    def __init__(self, path):
        self.path = path
        self.archive = zipfile.ZipFile(path)
        self.budget = INFLATE_RATIO * os.path.getsize(path) + INFLATE_SLACK

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.archive.close()

    def names(self) -> list[str]:
        return self.archive.namelist()

    def check(self, nbytes: int, what: str) -> None:
        """Refuse, before allocating, an item that would need more than the budget left."""
        if nbytes > self.budget:
            raise BoundExceeded(f"{what} needs {nbytes} bytes, more than the file could hold "
                                f"({self.budget} bytes left of {INFLATE_RATIO}x its size)")

    def charge(self, nbytes: int, what: str) -> None:
        self.check(nbytes, what)
        self.budget -= nbytes

    def open(self, name: str):
        """The member as a stream that raises BoundExceeded once it has inflated past the budget."""
        return _Limited(self.archive.open(name), self, name)

    def read_member(self, name: str, expected: int) -> bytes:
        """Exactly `expected` bytes of member `name`; longer or shorter members are errors."""
        self.charge(expected, name)
        with self.archive.open(name) as fh:
            data = fh.read(expected + 1)
        if len(data) != expected:
            raise BoundExceeded(f"{name} holds {'more' if len(data) > expected else len(data)} bytes, "
                                f"expected {expected}")
        return data


class _Limited(io.RawIOBase):
    def __init__(self, raw, owner: BoundedZip, name: str):
        self.raw, self.owner, self.name = raw, owner, name

    def readable(self):
        return True

    def readinto(self, buffer):
        n = self.raw.readinto(buffer)
        self.owner.charge(n, self.name)
        return n

    def read(self, size=-1):
        # The unpickler asks for the lengths the pickle declares: read in bounded steps.
        if size is None or size < 0:
            size = self.owner.budget + 1
        out = bytearray()
        while len(out) < size:
            chunk = self.raw.read(min(size - len(out), 1 << 20))
            if not chunk:
                break
            self.owner.charge(len(chunk), self.name)
            out += chunk
        return bytes(out)

    def readline(self, size=-1):
        line = self.raw.readline(size if size and size > 0 else 1 << 16)
        self.owner.charge(len(line), self.name)
        return line

    def close(self):
        self.raw.close()
        super().close()

"""Atomic file writes shared by every stage: a reader never sees a half-written file.

Write to a temporary name beside the target, then `os.replace` (atomic on one file system);
on any failure the temporary file is removed and the target is left as it was.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path, suffix: str | None = None):
    """Yield a temporary path beside `path` (ending in `suffix`, default the target's own, so
    writers that pick the format from the extension work); on success it replaces `path`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp{path.suffix if suffix is None else suffix}")
    try:
        yield tmp
        # mkstemp and MindSpore create 0600/0400 files; outputs are ordinary shareable files.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:  # name the file the user asked for, not the temporary one
        if err.filename is None or Path(err.filename).name.startswith(f".{path.name}."):
            raise OSError(err.errno, err.strerror, str(path)) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes_atomic(path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def check_writable_dir(folder) -> None:
    """Raise OSError (naming `folder`) unless a file can be created in it: the only honest test,
    since root passes every permission check but still cannot write a read-only mount."""
    folder = Path(folder)
    probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
    try:
        probe.touch()
    except OSError as err:
        raise OSError(err.errno, err.strerror, str(folder)) from None
    probe.unlink()


def check_can_create_dir(folder) -> None:
    """Raise OSError unless `folder` is, or could be created as, a writable folder; creates nothing."""
    folder = Path(folder)
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(20, "exists and is not a folder", str(existing))
    check_writable_dir(existing)


def png_bytes(image) -> bytes:
    """An (H, W) or (H, W, 3) RGB uint8 array encoded as PNG.

    Encoded in memory and written as bytes by the caller: cv2.imwrite only says "failed", while a
    write of the bytes raises the file system's own reason (a full disk, a read-only mount)."""
    import cv2

    pixels = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    ok, encoded = cv2.imencode(".png", pixels)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {image.dtype} array of shape {image.shape} as PNG")
    return encoded.tobytes()


def write_png_atomic(path, image) -> None:
    """`png_bytes(image)` written atomically; OSError naming `path` (with its errno) on failure."""
    write_bytes_atomic(path, png_bytes(image))


@contextmanager
def private_output(path: Path, suffix: str):
    """A name for a library to write `path` under, inside a private folder beside it: MindSpore's
    writers add temporary files of their own next to the name they are given, and removing the
    folder takes them all, on success or failure. The finished file replaces `path` atomically."""
    try:
        folder = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    except OSError as err:  # name the file the user asked for, not the private folder
        raise OSError(err.errno, err.strerror, str(path)) from None
    try:
        with atomic_path(path, suffix) as tmp:
            inner = folder / tmp.name
            yield inner
            os.replace(inner, tmp)
    finally:
        shutil.rmtree(folder, ignore_errors=True)

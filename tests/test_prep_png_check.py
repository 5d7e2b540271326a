"""`check_rgb_png`: an image stored as found is proven decodable without building its pixels."""
from __future__ import annotations

import struct
import zlib

import cv2
import numpy as np
import pytest

from base.checksums import fingerprint
from prep.convert import check_rgb_png
from prep.errors import PrepError


def _png(image: np.ndarray, params=()) -> bytes:
    return cv2.imencode(".png", image, list(params))[1].tobytes()


def _chunks(data: bytes):
    pos, out = 8, []
    while pos < len(data):
        length, tag = struct.unpack(">I4s", data[pos:pos + 8])
        out.append((tag, data[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return out


def _assemble(chunks) -> bytes:
    body = b"".join(struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d)) for t, d in chunks)
    return b"\x89PNG\r\n\x1a\n" + body


def _with_idat(data: bytes, raw: bytes) -> bytes:
    """The same PNG with its pixel stream replaced (valid CRCs)."""
    chunks = [c for c in _chunks(data) if c[0] != b"IDAT"]
    return _assemble(chunks[:1] + [(b"IDAT", raw)] + chunks[1:])


@pytest.fixture
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)


def test_valid_rgb_png_gives_its_size_and_matches_cv2(image):
    data = _png(image)
    assert check_rgb_png(data, "x.png") == (37, 53)
    # Several IDAT chunks and every compression level are fine too.
    for level in (0, 9):
        assert check_rgb_png(_png(image, [cv2.IMWRITE_PNG_COMPRESSION, level]), "x.png") == (37, 53)
    idat = b"".join(d for t, d in _chunks(data) if t == b"IDAT")
    chunks = [c for c in _chunks(data) if c[0] != b"IDAT"]
    split = _assemble(chunks[:1] + [(b"IDAT", idat[:10]), (b"IDAT", idat[10:])] + chunks[1:])
    assert check_rgb_png(split, "x.png") == (37, 53)
    assert cv2.imdecode(np.frombuffer(split, np.uint8), cv2.IMREAD_UNCHANGED).shape == (37, 53, 3)


@pytest.mark.parametrize("damage,message", [
    (lambda d: d[: len(d) - 30], "truncated or not a PNG"),
    (lambda d: d[:60] + bytes([d[60] ^ 1]) + d[61:], "CRC error in a IDAT chunk"),
    (lambda d: b"GIF89a" + d[6:], "no PNG signature"),
])
def test_damaged_files_are_rejected(image, damage, message):
    with pytest.raises(PrepError, match=f"bad.png: .*{message}"):
        check_rgb_png(damage(_png(image)), "bad.png")


def test_pixel_stream_errors_behind_valid_crcs_are_rejected(image):
    data = _png(image)
    stride = 1 + 3 * 53
    rows = bytearray(zlib.decompress(b"".join(d for t, d in _chunks(data) if t == b"IDAT")))
    with pytest.raises(PrepError, match="truncated PNG image data"):
        check_rgb_png(_with_idat(data, zlib.compress(bytes(rows[: 30 * stride]))), "bad.png")
    with pytest.raises(PrepError, match="corrupt image data"):
        check_rgb_png(_with_idat(data, b"\x78\x9c" + b"\xff" * 40), "bad.png")
    rows[5 * stride] = 7  # filter types are 0..4
    bad_filter = _with_idat(data, zlib.compress(bytes(rows)))
    with pytest.raises(PrepError, match="bad row filter type"):
        check_rgb_png(bad_filter, "bad.png")
    assert cv2.imdecode(np.frombuffer(bad_filter, np.uint8), cv2.IMREAD_UNCHANGED) is None  # libpng agrees


def test_stream_end_agrees_with_libpng(image):
    data = _png(image)
    rows = zlib.decompress(b"".join(d for t, d in _chunks(data) if t == b"IDAT"))
    # Data past the last row: libpng warns and decodes, so the check accepts it.
    longer = _with_idat(data, zlib.compress(rows + rows[:500]))
    assert (cv2.imdecode(np.frombuffer(longer, np.uint8), cv2.IMREAD_UNCHANGED) == image).all()
    assert check_rgb_png(longer, "long.png") == (37, 53)
    # Every row present but the stream cut before its end (checksum missing), or its checksum wrong.
    cut = _with_idat(data, zlib.compress(rows)[:-4])
    with pytest.raises(PrepError, match="cut.png: truncated PNG image data"):
        check_rgb_png(cut, "cut.png")
    stream = bytearray(zlib.compress(rows))
    stream[-1] ^= 1
    with pytest.raises(PrepError, match="sum.png: unreadable PNG .corrupt image data"):
        check_rgb_png(_with_idat(data, bytes(stream)), "sum.png")
    for bad in (cut, _with_idat(data, bytes(stream))):
        assert cv2.imdecode(np.frombuffer(bad, np.uint8), cv2.IMREAD_UNCHANGED) is None


def test_other_png_kinds_take_the_full_decode(image):
    with pytest.raises(PrepError, match="expected an 8-bit RGB PNG"):
        check_rgb_png(_png(image[:, :, 0]), "gray.png")
    with pytest.raises(PrepError, match="expected an 8-bit RGB PNG"):
        check_rgb_png(_png(np.dstack([image, image[:, :, :1]])), "rgba.png")
    with pytest.raises(PrepError, match="deep.png: expected an 8-bit RGB PNG, got 16-bit RGB PNG"):
        check_rgb_png(_png(image.astype(np.uint16) * 257), "deep.png")


def test_fingerprint_changes_with_any_edit():
    data = bytes(range(256)) * 100
    assert fingerprint(data) == fingerprint(bytes(data))
    assert fingerprint(data) != fingerprint(data[:-1] + b"\x00")
    assert fingerprint(data) != fingerprint(data + b"\x00")

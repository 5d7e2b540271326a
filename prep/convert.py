"""One sample from source files to a MindRecord row: checked, labels mapped with the 256-entry LUT.

The image is stored as found (PNG) or re-encoded as JPEG quality 95; the label becomes a
single-channel PNG of trainIds (255 ignore). Every source file is proven complete and decodable:
labels (and images to re-encode) are decoded; an image stored as found is checked without
building its pixels (`check_rgb_png`), since the build never needs them.
"""
from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np
from isal import isal_zlib

from base.checksums import crc32_hex, fingerprint
from base.images import ImageError, decode_image, decode_label, read_info
from prep.errors import PrepError
from base.labels import IGNORE, NUM_CLASSES, VALID_LABEL_IDS, label_to_train_lut
from prep.polygons import draw, parse_polygons

LUT = label_to_train_lut()
_INVALID_IDS = np.array([i not in VALID_LABEL_IDS for i in range(256)])
JPEG_QUALITY = 95
_EXACT_HIST = 1 << 24  # cv2.calcHist counts in float32: exact up to 2**24 pixels


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise PrepError(f"{path}: cannot read ({err.strerror})") from None


def _decoded(decode, data: bytes, path: Path, **options):
    """`decode(data, path, **options)` of base/images.py, its ImageError as a PrepError."""
    try:
        return decode(data, path, **options)
    except ImageError as err:
        raise PrepError(str(err)) from None


def decode_rgb_png(data: bytes, path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a source image, which must be an 8-bit RGB PNG (Cityscapes' leftImg8bit)."""
    info = _decoded(read_info, data, path)
    if (info.format, info.mode, info.bits) != ("PNG", "RGB", 8):
        raise PrepError(f"{path}: expected an 8-bit RGB PNG, got {info.describe()}")
    return _decoded(decode_image, data, path)


def decode_label_png(data: bytes, path: Path) -> np.ndarray:
    """(H, W) uint8 labelIds of a source label PNG (8-bit grey, or palette indices; base/images.py)."""
    return _decoded(decode_label, data, path, what="labelIds")


def _png_chunks(data: bytes, path: Path):
    """(type, payload view) of every chunk, each CRC-checked; the file must end with IEND."""
    view, pos = memoryview(data), 8
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise PrepError(f"{path}: unreadable PNG (no PNG signature)")
    while pos + 12 <= len(data):
        length, tag = struct.unpack(">I4s", view[pos:pos + 8])
        end = pos + 12 + length
        if end > len(data):
            break
        if isal_zlib.crc32(view[pos + 4:pos + 8 + length]) != struct.unpack(">I", view[end - 4:end])[0]:
            raise PrepError(f"{path}: unreadable PNG (CRC error in a {tag.decode('latin-1')} chunk)")
        yield tag, view[pos + 8:pos + 8 + length]
        if tag == b"IEND":
            return
        pos = end
    raise PrepError(f"{path}: truncated or not a PNG file")


def check_rgb_png(data: bytes, path: Path) -> tuple[int, int]:
    """(height, width) of an 8-bit RGB PNG, proven decodable without building its pixels.

    Every chunk's CRC, the header, the complete deflate stream of at least height x (1 + 3 x
    width) bytes and every row's filter type are checked: what libpng checks, minus unfiltering
    and the colour conversion. The inflate is ISA-L's, several times faster than cv2's full decode
    (docs/benchmarks.md). Excess data after the last row is accepted,
    as libpng does. PNGs other than 8-bit RGB non-interlaced take the full cv2 decode.
    """
    chunks = list(_png_chunks(data, path))
    if chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise PrepError(f"{path}: unreadable PNG (no IHDR header)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if (depth, colour, interlace) != (8, 2, 0) or not width or not height:
        return decode_rgb_png(data, path).shape[:2]
    _decoded(read_info, data, path)  # its size, against the memory bounds, before the inflate
    stride = 1 + 3 * width
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(payload for tag, payload in chunks if tag == b"IDAT"), height * stride)
        # max_length stops the inflate at the last row; ISA-L keeps the rest of the input, so one
        # more byte of output tells a longer (valid) stream from a cut-off one.
        complete = inflater.eof or (len(raw) == height * stride and inflater.decompress(b"", 1) != b"")
    except isal_zlib.error as err:
        raise PrepError(f"{path}: unreadable PNG (corrupt image data: {err})") from None
    if len(raw) != height * stride or not complete:
        raise PrepError(f"{path}: truncated PNG image data ({len(raw)} of {height * stride} bytes)")
    if np.frombuffer(raw, np.uint8)[::stride].max() > 4:
        raise PrepError(f"{path}: unreadable PNG (bad row filter type)")
    return height, width


def label_ids_to_train(label_ids: np.ndarray, path) -> tuple[np.ndarray, list[int]]:
    """(trainIds uint8, pixels of each of the 19 classes then ignore); raises if an id is
    outside the official table. One histogram serves both the check and the counts."""
    if label_ids.size < _EXACT_HIST:
        hist = cv2.calcHist([label_ids], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(label_ids.ravel(), minlength=256)
    bad = np.flatnonzero((hist > 0) & _INVALID_IDS)
    if bad.size:
        raise PrepError(f"{path}: label ids {bad.tolist()} are not in the official Cityscapes table")
    train_hist = np.bincount(LUT, weights=hist, minlength=256).astype(np.int64)
    counts = [int(c) for c in train_hist[:NUM_CLASSES]] + [int(train_hist[IGNORE])]
    return cv2.LUT(label_ids, LUT), counts


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", isal_zlib.crc32(tag + data))


def encode_label_png(train_ids: np.ndarray) -> bytes:
    """8-bit grayscale PNG, rows unfiltered, deflated by ISA-L at level 1.

    Label maps are long runs of one value: this encodes an order of magnitude faster than zlib's
    run-length mode or cv2's adaptive-filter PNG, for files a little larger (docs/benchmarks.md).
    """
    h, w = train_ids.shape
    raw = np.zeros((h, w + 1), np.uint8)  # each row starts with its filter byte: 0 = none
    raw[:, 1:] = train_ids
    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit, grayscale, no interlace
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", isal_zlib.compress(raw.data, 1))
            + _png_chunk(b"IEND", b""))


def convert(root: Path, sample, image_format: str) -> tuple[dict, dict]:
    """(MindRecord row, manifest facts) for one `prep.discover.Sample`."""
    image_path, label_path = root / sample.image, root / sample.label
    image_bytes = _read(image_path)
    if image_format == "jpeg":
        image = decode_rgb_png(image_bytes, image_path)
        height, width = image.shape[:2]
        stored = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes()
    else:
        height, width = check_rgb_png(image_bytes, image_path)
        stored = image_bytes
    label_bytes = _read(label_path)
    if sample.label_is_polygons:
        h, w, objects = parse_polygons(label_bytes, label_path)
        if (h, w) != (height, width):
            raise PrepError(f"{label_path}: size {h}x{w} differs from its image {image_path} ({height}x{width})")
        label_ids = draw(h, w, objects, label_path)
    else:
        label_ids = decode_label_png(label_bytes, label_path)
        if label_ids.shape != (height, width):
            raise PrepError(f"{label_path}: size {label_ids.shape[0]}x{label_ids.shape[1]} differs from its "
                            f"image {image_path} ({height}x{width})")
    train_ids, counts = label_ids_to_train(label_ids, label_path)
    record = {"id": sample.id, "city": sample.city, "image": stored, "label": encode_label_png(train_ids),
              "height": int(height), "width": int(width)}
    # The stored bytes' CRCs let `verify` find damage no decoder reports (libjpeg decodes altered data).
    facts = {"image_fingerprint": fingerprint(image_bytes), "label_fingerprint": fingerprint(label_bytes),
             "image_crc32": crc32_hex(record["image"]), "label_crc32": crc32_hex(record["label"]),
             "pixels": counts, "height": int(height), "width": int(width)}
    return record, facts

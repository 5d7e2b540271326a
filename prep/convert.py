"""One sample from source files to a MindRecord row: checked, labels mapped with the data set's
256-entry LUT (`Encoding`).

An 8-bit RGB PNG or JPEG image is stored as found (`--image-format jpeg`: a PNG is re-encoded as
JPEG quality 95); any other image a data set holds (grey, palette, 16-bit, another format) is
decoded and stored as a lossless 8-bit RGB PNG, the record's format. Cityscapes' images must be
8-bit RGB PNGs. The label becomes a single-channel PNG of train indices (the data set's ignore
index for ignored pixels). Every source file is proven complete and decodable: labels, JPEGs and
images to re-encode are decoded; a PNG stored as found is checked without building its pixels
(`check_rgb_png`), since the build never needs them.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from isal import isal_zlib

from base.checksums import crc32_hex, fingerprint
from base.images import ImageError, check_whole, decode_image, decode_label, read_info
from prep.errors import PrepError
from base.labels import VALID_LABEL_IDS, label_to_train_lut
from prep.polygons import draw, parse_polygons
from settings.datasets import DatasetSpec

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


@dataclass(frozen=True)
class Encoding:
    """How a data set's source label values become train indices, and what its sources may be
    (picklable: it travels to the build's workers)."""
    lut: np.ndarray    # (256,) uint8: source value -> train index or ignore
    valid: np.ndarray  # (256,) bool: the values a source label may hold
    n_cls: int
    ignore: int
    cityscapes: bool   # labelIds by the official table, polygon labels, 8-bit RGB PNG images only
    invalid: str       # the error for values outside `valid`, with a {values} placeholder


def encoding(spec: DatasetSpec) -> Encoding:
    """The data set's `Encoding`: Cityscapes' official labelId table, or for a folder data set its
    classes as stored (0..N-1), or with `reduce_zero_label` 0 ignored and k -> k-1 (mmseg's rule:
    the ignore value stays ignore)."""
    n, ignore = len(spec.classes), spec.ignore_index
    if spec.layout == "cityscapes":
        valid = np.array([i in VALID_LABEL_IDS for i in range(256)])
        return Encoding(label_to_train_lut(), valid, n, ignore, True,
                        "label ids {values} are not in the official Cityscapes table")
    lut = np.full(256, ignore, np.uint8)
    shift = int(spec.reduce_zero_label)
    lut[shift:n + shift] = np.arange(n)
    lut[ignore] = ignore
    valid = np.zeros(256, bool)
    valid[:n + shift] = valid[ignore] = True
    rule = ", 0 ignored and k -> class k-1" if shift else ""
    return Encoding(lut, valid, n, ignore, False,
                    f"label values {{values}} are outside {spec.name}'s labels 0..{n - 1 + shift} and {ignore} "
                    f"(ignore){rule}")


def label_ids_to_train(label_ids: np.ndarray, path, enc: Encoding) -> tuple[np.ndarray, list[int]]:
    """(train indices uint8, pixels of each class then ignore); raises if a value is not one the
    data set's labels may hold. One histogram serves both the check and the counts."""
    if label_ids.size < _EXACT_HIST:
        hist = cv2.calcHist([label_ids], [0], None, [256], [0, 256]).ravel().astype(np.int64)
    else:
        hist = np.bincount(label_ids.ravel(), minlength=256)
    bad = np.flatnonzero((hist > 0) & ~enc.valid)
    if bad.size:
        raise PrepError(f"{path}: " + enc.invalid.format(values=bad.tolist()))
    train_hist = np.bincount(enc.lut, weights=hist, minlength=256).astype(np.int64)
    counts = [int(c) for c in train_hist[:enc.n_cls]] + [int(train_hist[enc.ignore])]
    return cv2.LUT(label_ids, enc.lut), counts


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


def _stored_image(data: bytes, path: Path, image_format: str, enc: Encoding) -> tuple[bytes, int, int]:
    """(the bytes the record stores, height, width) of a source image (see the module doc)."""
    if enc.cityscapes and image_format == "png":
        return (data, *check_rgb_png(data, path))
    if enc.cityscapes:
        image = decode_rgb_png(data, path)
    else:
        info = _decoded(read_info, data, path)
        rgb = (info.mode, info.bits) == ("RGB", 8)
        if rgb and info.format == "PNG" and image_format == "png":
            return (data, *check_rgb_png(data, path))
        if rgb and info.format == "JPEG":  # decoded only to prove it whole; re-encoding would lose quality
            _decoded(check_whole, data, path)
            return (data, info.height, info.width)
        image = _decoded(decode_image, data, path)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if image_format == "jpeg" else []
    return (cv2.imencode(".jpg" if image_format == "jpeg" else ".png", bgr, params)[1].tobytes(), *image.shape[:2])


def convert(root: Path, sample, image_format: str, enc: Encoding) -> tuple[dict, dict]:
    """(MindRecord row, manifest facts) for one `prep.discover.Sample` of a data set encoded as `enc`."""
    image_path, label_path = root / sample.image, root / sample.label
    image_bytes = _read(image_path)
    stored, height, width = _stored_image(image_bytes, image_path, image_format, enc)
    label_bytes = _read(label_path)
    if enc.cityscapes and sample.label_is_polygons:
        h, w, objects = parse_polygons(label_bytes, label_path)
        if (h, w) != (height, width):
            raise PrepError(f"{label_path}: size {h}x{w} differs from its image {image_path} ({height}x{width})")
        label_ids = draw(h, w, objects, label_path)
    else:
        label_ids = _decoded(decode_label, label_bytes, label_path, what="labelIds" if enc.cityscapes else "label")
        if label_ids.shape != (height, width):
            raise PrepError(f"{label_path}: size {label_ids.shape[0]}x{label_ids.shape[1]} differs from its "
                            f"image {image_path} ({height}x{width})")
    train_ids, counts = label_ids_to_train(label_ids, label_path, enc)
    record = {"id": sample.id, "city": sample.city, "image": stored, "label": encode_label_png(train_ids),
              "height": int(height), "width": int(width)}
    # The stored bytes' CRCs let `verify` find damage no decoder reports (libjpeg decodes altered data).
    facts = {"image_fingerprint": fingerprint(image_bytes), "label_fingerprint": fingerprint(label_bytes),
             "image_crc32": crc32_hex(record["image"]), "label_crc32": crc32_hex(record["label"]),
             "pixels": counts, "height": int(height), "width": int(width)}
    return record, facts

"""One sample from source files to a MindRecord row: checked, labels mapped with the 256-entry LUT.

The image is stored as found (PNG) or re-encoded as JPEG quality 95; the label becomes a
single-channel PNG of trainIds (255 ignore). Every source file is decoded once, which also
proves it is complete.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np

from prep.errors import PrepError
from prep.labels import IGNORE, NUM_CLASSES, VALID_LABEL_IDS, label_to_train_lut
from prep.polygons import draw, parse_polygons

LUT = label_to_train_lut()
_INVALID_IDS = np.array([i not in VALID_LABEL_IDS for i in range(256)])
PNG_END = b"IEND\xaeB`\x82"
JPEG_QUALITY = 95
# Labels compress well at any level; 1 is several times faster to encode than the default 3.
LABEL_PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1]


def fingerprint(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise PrepError(f"{path}: cannot read ({err.strerror})") from None


def _decode_png(data: bytes, path: Path, flags: int) -> np.ndarray:
    # libpng may return a partly grey image for a cut-off file: require the closing IEND chunk.
    if not data.endswith(PNG_END):
        raise PrepError(f"{path}: truncated or not a PNG file")
    array = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if array is None:
        raise PrepError(f"{path}: unreadable PNG")
    return array


def label_ids_to_train(label_ids: np.ndarray, path) -> tuple[np.ndarray, np.ndarray]:
    """(trainIds uint8, labelId histogram); raises if an id is outside the official table."""
    hist = np.bincount(label_ids.ravel(), minlength=256)
    bad = np.flatnonzero((hist > 0) & _INVALID_IDS)
    if bad.size:
        raise PrepError(f"{path}: label ids {bad.tolist()} are not in the official Cityscapes table")
    return LUT[label_ids], hist


def pixel_counts(train_ids: np.ndarray) -> list[int]:
    """Pixels of each of the 19 classes, then ignore."""
    hist = np.bincount(train_ids.ravel(), minlength=256)
    return [int(c) for c in hist[:NUM_CLASSES]] + [int(hist[IGNORE])]


def convert(root: Path, sample, image_format: str) -> tuple[dict, dict]:
    """(MindRecord row, manifest facts) for one `prep.discover.Sample`."""
    image_path, label_path = root / sample.image, root / sample.label
    image_bytes = _read(image_path)
    image = _decode_png(image_bytes, image_path, cv2.IMREAD_COLOR)
    height, width = image.shape[:2]
    label_bytes = _read(label_path)
    if sample.label_is_polygons:
        h, w, objects = parse_polygons(label_bytes, label_path)
        if (h, w) != (height, width):
            raise PrepError(f"{label_path}: size {h}x{w} differs from its image {image_path} ({height}x{width})")
        label_ids = draw(h, w, objects, label_path)
    else:
        label_ids = _decode_png(label_bytes, label_path, cv2.IMREAD_UNCHANGED)
        if label_ids.ndim != 2 or label_ids.dtype != np.uint8:
            raise PrepError(f"{label_path}: expected a single-channel 8-bit labelIds PNG, "
                            f"got {label_ids.dtype} with shape {label_ids.shape}")
        if label_ids.shape != (height, width):
            raise PrepError(f"{label_path}: size {label_ids.shape[0]}x{label_ids.shape[1]} differs from its "
                            f"image {image_path} ({height}x{width})")
    train_ids, _ = label_ids_to_train(label_ids, label_path)
    ok, label_png = cv2.imencode(".png", train_ids, LABEL_PNG_PARAMS)
    if image_format == "jpeg":
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
        stored = encoded.tobytes()
    else:
        stored = image_bytes
    record = {"id": sample.id, "city": sample.city, "image": stored, "label": label_png.tobytes(),
              "height": int(height), "width": int(width)}
    facts = {"image_fingerprint": fingerprint(image_bytes), "label_fingerprint": fingerprint(label_bytes),
             "pixels": pixel_counts(train_ids), "height": int(height), "width": int(width)}
    return record, facts

"""The MindRecord layout every stage agrees on: fields, file names, manifest columns.

A built split lives in `OUT/{split}/`: shards `{split}.mindrecordNNN` (each with its `.db`
index), `manifest.parquet` (one row per sample) and `summary.json` (class frequencies, shard
sizes, build options). The manifest is written last: a split without it is not (completely) built.
"""
from __future__ import annotations

import cv2
import numpy as np

from base.labels import CLASS_NAMES

# MindRecord arrays may only be int32/int64/float32/float64, so pixels travel as encoded bytes.
SCHEMA = {
    "id": {"type": "string"},
    "city": {"type": "string"},
    "image": {"type": "bytes"},   # encoded PNG (as found) or JPEG (--image-format jpeg), RGB
    "label": {"type": "bytes"},   # single-channel 8-bit PNG of trainIds, 255 = ignore
    "height": {"type": "int32"},
    "width": {"type": "int32"},
}
SCHEMA_DESC = "cityscapes"
INDEX_FIELDS = ["id", "city"]

MANIFEST = "manifest.parquet"
SUMMARY = "summary.json"
STATE_DIR = ".state"      # one JSON per committed shard: its samples, source fingerprints, file sizes
STAGING_DIR = ".staging"  # finished-but-not-yet-committed shards of a build in progress

# Manifest pixel-count columns: the 19 classes in trainId order, then ignore.
PIXEL_COLUMNS = tuple("pixels_" + name.replace(" ", "_") for name in CLASS_NAMES) + ("pixels_ignore",)


def shard_name(split: str, index: int) -> str:
    return f"{split}.mindrecord{index:03d}"


def decode_label(data) -> np.ndarray:
    """A stored label PNG -> (H, W) uint8 trainIds; ValueError if it is not single-channel 8-bit.

    Not vision.Decode: it expands a grayscale PNG to 3 channels and costs twice as much.
    """
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError("label is not a single-channel 8-bit PNG")
    return label

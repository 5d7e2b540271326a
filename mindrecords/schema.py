"""The MindRecord layout every stage agrees on: fields, file names, manifest columns.

A built split lives in `OUT/{split}/`: shards `{split}.mindrecordNNN` (each with its `.db`
index), `manifest.parquet` (one row per sample) and `summary.json` (class frequencies, shard
sizes, build options). The manifest is written last: a split without it is not (completely) built.
"""
from __future__ import annotations

import re

import numpy as np

from base.images import ImageError, read_info
from base.images import decode_label as decode_label_png
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


def is_shard_name(split: str, name: str) -> bool:
    """True for a name `shard_name` gives (the shard itself, not its `.db`)."""
    return re.fullmatch(rf"{re.escape(split)}\.mindrecord\d{{3,}}", name) is not None


_SPLIT_RE = re.compile(r"[A-Za-z0-9_-]+")


def check_split_name(split) -> None:
    """ValueError unless `split` is a plain folder name: it becomes OUT/{split}/ and every shard's name."""
    if not isinstance(split, str) or not _SPLIT_RE.fullmatch(split):
        raise ValueError(f"split {split!r}: not a plain name (letters, digits, _ and - only)")


# Record fields that become part of an output path (`labelIds/{city}/{id}.png`).
PATH_FIELDS = ("id", "city")
_MAX_PART_BYTES = 255  # the longest file name Linux file systems accept


def check_path_field(name: str, value, where: str) -> None:
    """ValueError (`where: name VALUE ...`) unless `value` can be joined under a folder and stay there:
    a string of '/'-separated parts (a nested id `a/b/c`), each a plain file name."""
    def refuse(why):
        raise ValueError(f"{where}: {name} {str(value)[:100]!r} {why}")

    if not isinstance(value, str):
        refuse(f"is a {type(value).__name__}, not a string")
    if value.startswith("/"):
        refuse("is an absolute path")
    if any(ord(c) < 32 or c == "\\" for c in value):
        refuse("holds a control character or a backslash")
    for part in value.split("/"):
        if part in ("", ".", ".."):
            refuse(f"has the path part {part!r}")
        if len(part.encode()) > _MAX_PART_BYTES:
            refuse(f"has a part longer than {_MAX_PART_BYTES} bytes")


def decode_label(data) -> np.ndarray:
    """A stored label PNG -> (H, W) uint8 trainIds (base/images.py); ValueError if it is not the
    single-channel 8-bit PNG the build writes, or does not decode.

    Not vision.Decode: it expands a grayscale PNG to 3 channels and costs twice as much.
    """
    try:
        info = read_info(data, "label")
        if (info.format, info.mode, info.bits) != ("PNG", "L", 8):
            raise ImageError("label", f"got a {info.describe()}")
        return decode_label_png(data, "label")
    except ImageError as err:
        raise ValueError(f"label is not a single-channel 8-bit PNG: {err.reason}") from None

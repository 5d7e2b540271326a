"""The MindRecord layout every stage agrees on: fields, file names, manifest columns.

A built split lives in `OUT/{split}/`: shards `{split}.mindrecordNNN` (each with its `.db`
index), `manifest.parquet` (one row per sample) and `summary.json` (class frequencies, shard
sizes, build options). The manifest is written last: a split without it is not (completely) built.
"""
from __future__ import annotations

import re

import numpy as np

from base.images import ImageError
from base.images import decode_label as decode_label_png
from base.messages import short_repr
from base.names import split_name_problem

# MindRecord arrays may only be int32/int64/float32/float64, so pixels travel as encoded bytes.
SCHEMA = {
    "id": {"type": "string"},
    "city": {"type": "string"},
    "image": {"type": "bytes"},   # encoded RGB PNG or JPEG: as found, or re-encoded (docs/datasets.md)
    "label": {"type": "bytes"},   # single-channel 8-bit PNG of train indices, the data set's ignore_index
    "height": {"type": "int32"},
    "width": {"type": "int32"},
}
INDEX_FIELDS = ["id", "city"]

MANIFEST = "manifest.parquet"
SUMMARY = "summary.json"
STATE_DIR = ".state"      # one JSON per committed shard: its samples, source fingerprints, file sizes
STAGING_DIR = ".staging"  # finished-but-not-yet-committed shards of a build in progress


def pixel_columns(class_names) -> tuple:
    """Manifest pixel-count columns: one per class in train-index order, then ignore; ValueError if
    two names give one column."""
    columns = tuple("pixels_" + name.replace(" ", "_") for name in class_names) + ("pixels_ignore",)
    clashes = sorted(c for c in set(columns) if columns.count(c) > 1)
    if clashes:
        raise ValueError(f"class names give the manifest column {clashes[0]!r} twice (names that differ only "
                         "by spaces and underscores, or a class named 'ignore')")
    return columns


def shard_name(split: str, index: int) -> str:
    return f"{split}.mindrecord{index:03d}"


def is_shard_name(split: str, name: str) -> bool:
    """True for a name `shard_name` gives (the shard itself, not its `.db`)."""
    return re.fullmatch(rf"{re.escape(split)}\.mindrecord\d{{3,}}", name) is not None


def check_split_name(split) -> None:
    """ValueError unless `split` is a plain folder name (`base.names`): it becomes OUT/{split}/
    and every shard's name."""
    problem = split_name_problem(split)
    if problem:
        raise ValueError(f"split {short_repr(split)}: {problem}")


# Record fields that become part of an output path (`labelIds/{city}/{id}.png`).
PATH_FIELDS = ("id", "city")
_MAX_PART_BYTES = 255  # the longest file name Linux file systems accept


def check_path_field(name: str, value, where: str) -> None:
    """ValueError (`where: name VALUE ...`) unless `value` can be joined under a folder and stay there:
    a string of '/'-separated parts (a nested id `a/b/c`), each a plain file name; only `city` may be
    empty (a flat data set's: joined, it names no folder), an id names a file."""
    def refuse(why):
        raise ValueError(f"{where}: {name} {short_repr(value)} {why}")

    if not isinstance(value, str):
        refuse(f"is a {type(value).__name__}, not a string")
    if value.startswith("/"):
        refuse("is an absolute path")
    if not value and name != "city":
        refuse("is empty")
    if any(ord(c) < 32 or c == "\\" for c in value):
        refuse("holds a control character or a backslash")
    for part in value.split("/") if value else ():
        if part in ("", ".", ".."):
            refuse(f"has the path part {part!r}")
        if len(part.encode()) > _MAX_PART_BYTES:
            refuse(f"has a part longer than {_MAX_PART_BYTES} bytes")


def decode_label(data) -> np.ndarray:
    """A stored label PNG (a record's bytes, read in place) -> (H, W) uint8 trainIds
    (base/images.py: one header parse, its size checked against fixed bounds); ValueError if it is
    not the single-channel 8-bit PNG the build writes, or does not decode.

    Not vision.Decode: it expands a grayscale PNG to 3 channels and costs twice as much.
    """
    try:
        return decode_label_png(data, "label", stored=True)
    except ImageError as err:
        raise ValueError(f"label is not a single-channel 8-bit PNG: {err.reason}") from None

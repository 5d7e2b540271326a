"""A built split's manifest: reading it, writing it (with summary.json), finding the shards it lists.

`split_shard_files` is what every consumer (training, evaluation) calls: it refuses a split
that was never built, whose build did not finish (no manifest), or whose shard files are missing.
"""
from __future__ import annotations

import json
from pathlib import Path

from base.atomic import write_bytes_atomic
from mindrecords.schema import MANIFEST, PIXEL_COLUMNS, STATE_DIR, SUMMARY


class MindRecordError(Exception):
    """A built split that is missing, incomplete or damaged; the message names the file."""


def read_manifest(out_dir, split: str, columns=None):
    """The split's manifest as a pyarrow Table (one row per sample, in shard order)."""
    import pyarrow.parquet as pq

    split_dir = Path(out_dir) / split
    path = split_dir / MANIFEST
    if not split_dir.is_dir():
        raise MindRecordError(f"{split_dir}: split {split!r} was never built (run build-mindrecord)")
    if not path.is_file():
        raise MindRecordError(f"{path}: missing; the build of split {split!r} did not finish "
                              "(rerun build-mindrecord)")
    try:
        return pq.read_table(path, columns=columns)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise MindRecordError(f"{path}: unreadable manifest ({err})") from None


def split_shard_files(out_dir, split: str) -> list[str]:
    """Sorted shard paths of a built split, each checked to exist with its `.db` index."""
    split_dir = Path(out_dir) / split
    names = sorted(set(read_manifest(out_dir, split, columns=["shard"]).column("shard").to_pylist()))
    if not names:
        raise MindRecordError(f"{split_dir / MANIFEST}: lists no shards")
    files = []
    for name in names:
        path = split_dir / name
        for part in (path, Path(f"{path}.db")):
            if not part.is_file():
                raise MindRecordError(f"{part}: missing shard file listed in {split_dir / MANIFEST}")
        files.append(str(path))
    return files


def built_splits(out_dir) -> list[str]:
    """Splits under OUT that have a manifest or at least look like an attempted build."""
    out = Path(out_dir)
    return sorted(p.name for p in out.iterdir()
                  if p.is_dir() and ((p / MANIFEST).exists() or (p / STATE_DIR).exists()
                                     or any(p.glob(f"{p.name}.mindrecord*"))))


def rows_by_shard(rows: list) -> dict[str, list]:
    """Manifest rows grouped by shard, in manifest (shard) order."""
    by_shard: dict[str, list] = {}
    for row in rows:
        by_shard.setdefault(row["shard"], []).append(row)
    return by_shard


# Columns of manifest.parquet, in order; integer columns' types (every other column is a string).
MANIFEST_COLUMNS = ("id", "city", "shard", "index_in_shard", "image_path", "image_bytes", "image_fingerprint",
                    "label_path", "label_bytes", "label_fingerprint", "height", "width", "image_crc32",
                    "label_crc32", *PIXEL_COLUMNS)
_INT_COLUMNS = {"index_in_shard": "int32", "height": "int32", "width": "int32", "image_bytes": "int64",
                "label_bytes": "int64", **{c: "int64" for c in PIXEL_COLUMNS}}


def write_split_index(split_dir: Path, columns: dict, summary: dict) -> None:
    """Write summary.json, then manifest.parquet (`columns`: name -> values, MANIFEST_COLUMNS) last:
    its presence means the split is complete."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    if set(columns) != set(MANIFEST_COLUMNS):
        raise ValueError(f"manifest columns differ from the format: {sorted(set(columns) ^ set(MANIFEST_COLUMNS))}")
    table = pa.table({k: pa.array(columns[k], type=getattr(pa, _INT_COLUMNS.get(k, "string"))())
                      for k in MANIFEST_COLUMNS})
    table = table.replace_schema_metadata({"build_key": summary["build_key"],
                                           "options": json.dumps(summary["options"], sort_keys=True)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(split_dir / SUMMARY, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    write_bytes_atomic(split_dir / MANIFEST, buf.getvalue())

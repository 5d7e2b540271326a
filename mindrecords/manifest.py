"""A built split's manifest: reading it, writing it (with summary.json), finding the shards it lists.

`split_shard_files` is what every consumer (training, evaluation, inspection) calls: it refuses a
split that was never built, whose build did not finish (no manifest), whose shard files are missing
or whose `.db` indexes are damaged. Every read is bounded and validated (`read_manifest`): a split
name must be a plain name, the row count must be backed by the shards' indexes, strings are short,
and the fields that become paths (`schema.check_path_field`) are safe.
"""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

from base.class_table import CITYSCAPES, ClassTable
from base.errors import UserError
from base.atomic import write_bytes_atomic
from mindrecords.schema import (MANIFEST, PATH_FIELDS, STATE_DIR, SUMMARY, check_path_field, check_split_name,
                                is_shard_name, pixel_columns)
from settings.datasets import DatasetEval, DatasetSpec, dataset_from_dict, load_dataset


class MindRecordError(UserError):
    """A built split that is missing, incomplete or damaged; the message names the file."""


# A manifest of up to this many rows is read as it is (its rows fit in memory many times over); a
# larger one must be backed by as many records in the shards' indexes, so a small damaged or
# crafted file cannot declare millions of rows and take gigabytes to read.
_ROWS_READ_UNCHECKED = 50_000
_MAX_ROW_BYTES = 4096     # unpacked; an honest row needs a fraction of it
_MAX_PAGE_BYTES = 1 << 20  # what a manifest of a few rows may unpack to beyond that (per-column overhead)
_MAX_STRING_CHARS = 4096   # ids, cities and source paths are short


def _split_dir(out_dir, split: str) -> Path:
    try:
        check_split_name(split)
    except ValueError as err:
        raise MindRecordError(f"{out_dir}: {err}") from None
    return Path(out_dir) / split


def _manifest_file(out_dir, split: str):
    """The split's manifest as an open `pyarrow.parquet.ParquetFile`, its size checked (footer only)."""
    import pyarrow.parquet as pq

    split_dir = _split_dir(out_dir, split)
    path = split_dir / MANIFEST
    if not split_dir.is_dir():
        raise MindRecordError(f"{split_dir}: split {split!r} was never built (run build-mindrecord)")
    if not path.is_file():
        raise MindRecordError(f"{path}: missing; the build of split {split!r} did not finish "
                              "(rerun build-mindrecord)")
    try:
        manifest = pq.ParquetFile(path)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise MindRecordError(f"{path}: unreadable manifest ({err})") from None
    meta = manifest.metadata
    unpacked = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
    if unpacked > meta.num_rows * _MAX_ROW_BYTES + _MAX_PAGE_BYTES:
        raise MindRecordError(f"{path}: damaged manifest: {unpacked} bytes unpacked for {meta.num_rows} rows")
    if meta.num_rows > _ROWS_READ_UNCHECKED:
        held = _held_records(split_dir, split)
        if meta.num_rows > held:
            raise MindRecordError(f"{path}: damaged manifest: declares {meta.num_rows} rows, but the shard "
                                  f"indexes in {split_dir} hold {held} records (rebuild with build-mindrecord)")
    return manifest


def manifest_rows(out_dir, split: str) -> int:
    """The split's number of samples, from the manifest's footer (no column is read)."""
    return _manifest_file(out_dir, split).metadata.num_rows


def read_manifest(out_dir, split: str, columns=None):
    """The split's manifest as a pyarrow Table (one row per sample, in shard order).

    Bounded: the row count is checked against the shards first (`_manifest_file`), strings are read
    dictionary-encoded and their lengths checked before they are expanded. Every path field
    (`schema.PATH_FIELDS`) and shard name read is validated: a damaged or crafted manifest is a
    `MindRecordError` naming it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    manifest = _manifest_file(out_dir, split)
    path = Path(out_dir) / split / MANIFEST
    schema = manifest.schema_arrow
    checked = [name for name in (*PATH_FIELDS, "shard") if name in schema.names]
    wanted = None if columns is None else list(dict.fromkeys([*columns, *checked]))
    strings = [f.name for f in schema if pa.types.is_string(f.type) and (wanted is None or f.name in wanted)]
    try:
        table = pq.read_table(path, columns=wanted, read_dictionary=strings)
    except Exception as err:  # pyarrow raises several types for a damaged file
        raise MindRecordError(f"{path}: unreadable manifest ({err})") from None
    try:
        for name in set(strings) | set(checked):
            _check_column(table.column(name), name, name in strings, name in checked, split)
    except ValueError as err:
        raise MindRecordError(f"{path}: damaged manifest: {err}") from None
    table = table.cast(pa.schema([pa.field(f.name, pa.string()) if f.name in strings else f for f in table.schema],
                                 metadata=table.schema.metadata))
    return table if columns is None else table.select(columns)


# The data set a split was built from, in the manifest's parquet schema metadata (docs/datasets.md).
DATASET_KEY = b"segmenter.dataset"
_MAX_DATASET_BYTES = 64 << 10  # 255 long class names and their colours fit several times over


def dataset_block(spec: DatasetSpec) -> dict:
    """What the manifest records of the data set: its classes and how they were encoded and are scored."""
    table = spec.class_table().to_dict()
    return {**table, "reduce_zero_label": spec.reduce_zero_label, "layout": spec.layout,
            "eval": dataclasses.asdict(spec.eval)}


def _raw_dataset_block(out_dir, split: str) -> bytes | None:
    return (_manifest_file(out_dir, split).schema_arrow.metadata or {}).get(DATASET_KEY)


def recorded_dataset_block(out_dir, split: str) -> dict | None:
    """The dataset block of the split's manifest as written; None where there is no readable one."""
    try:
        return json.loads(_raw_dataset_block(out_dir, split))
    except (MindRecordError, TypeError, ValueError):
        return None


def _built_dataset(out_dir, split: str) -> DatasetSpec | None:
    """The data set recorded in the split's manifest (schema metadata only, its size bounded and its
    content checked as a dataset file is), or None for a build made before the block existed."""
    raw = _raw_dataset_block(out_dir, split)
    if raw is None:
        return None
    where = str(Path(out_dir) / split / MANIFEST)
    if len(raw) > _MAX_DATASET_BYTES:
        raise MindRecordError(f"{where}: damaged manifest: a {len(raw)}-byte dataset block")
    try:
        block = json.loads(raw)
        data = {"name": block["dataset"], "eval": block["eval"],
                **{k: block[k] for k in ("classes", "palette", "ignore_index", "reduce_zero_label", "layout")}}
    except (ValueError, KeyError, TypeError) as err:
        raise MindRecordError(f"{where}: damaged manifest: unreadable dataset block ({type(err).__name__})") from None
    return dataset_from_dict(data, f"{where}: {DATASET_KEY.decode()}")


def data_classes(out_dir, split: str) -> ClassTable:
    """The class table of the data set the split was built from (Cityscapes' for older builds)."""
    spec = _built_dataset(out_dir, split)
    return CITYSCAPES if spec is None else spec.class_table()


def data_eval_protocol(out_dir, split: str) -> DatasetEval:
    """The evaluation protocol of the data set the split was built from (Cityscapes' for older builds)."""
    spec = _built_dataset(out_dir, split)
    return load_dataset("cityscapes").eval if spec is None else spec.eval


def data_label_offset(out_dir, split: str) -> int:
    """What turns the split's class indices back into the source's label values: 1 where the build
    moved every label down by one (reduce_zero_label), else 0 (prediction exports use it)."""
    spec = _built_dataset(out_dir, split)
    return int(spec is not None and spec.reduce_zero_label)


def _check_column(column, name: str, dictionary: bool, path_field: bool, split: str) -> None:
    """ValueError unless every value of a string column (read dictionary-encoded) is short and, for a
    path field or the shard, safe to join under a folder."""
    import pyarrow.compute as pc

    if not dictionary:
        raise ValueError(f"column {name} holds {column.type}, not strings")
    for chunk in column.chunks:
        values = chunk.dictionary
        longest = pc.max(pc.utf8_length(values)).as_py() or 0
        if longest > _MAX_STRING_CHARS:
            raise ValueError(f"column {name} holds a {longest}-character value")
        for value in values.to_pylist() if path_field else ():
            check_path_field(name, value, f"column {name}")
            if name == "shard" and not is_shard_name(split, value):
                raise ValueError(f"column shard: {value!r} is not a shard name of split {split!r}")


def _index(db: Path) -> tuple[list, int]:
    """(shard names, record count) a shard's `.db` index holds; sqlite3.Error if it is no MindRecord index."""
    import sqlite3

    conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        names = [name for (name,) in conn.execute("SELECT NAME FROM SHARD_NAME").fetchmany(2)]
        return names, conn.execute("SELECT count(*) FROM INDEXES").fetchone()[0]
    finally:
        conn.close()


def _held_records(split_dir: Path, split: str) -> int:
    """How many records the split's shard indexes hold together (an unreadable one: none)."""
    import sqlite3

    held = 0
    for db in split_dir.glob(f"{split}.mindrecord*.db"):
        if is_shard_name(split, db.name[:-3]):
            try:
                held += _index(db)[1]
            except sqlite3.Error:
                pass
    return held


def check_shard(path: Path, records: int) -> None:
    """MindRecordError naming the file unless the shard and its `.db` exist and the index belongs to
    this shard and lists `records` records: what MindSpore's readers would otherwise report as a
    bare C++ error (or a traceback) when the pipeline starts."""
    import sqlite3

    db = Path(f"{path}.db")
    for part in (path, db):
        if not part.is_file():
            raise MindRecordError(f"{part}: missing shard file listed in {path.parent / MANIFEST}")
    try:
        names, count = _index(db)
    except sqlite3.Error as err:
        raise MindRecordError(f"{db}: damaged shard index ({err}); rebuild the split with build-mindrecord") from None
    if names != [path.name]:
        raise MindRecordError(f"{db}: damaged shard index: it names the shard {names[:1]}, not {path.name!r}")
    if count != records:
        raise MindRecordError(f"{db}: damaged shard index: {count} records, the manifest lists {records}")


def split_shard_files(out_dir, split: str) -> list[str]:
    """Sorted shard paths of a built split, each checked (`check_shard`) against the manifest,
    whose path fields are validated on the way."""
    split_dir = _split_dir(out_dir, split)
    table = read_manifest(out_dir, split, columns=["shard", *PATH_FIELDS])
    counts = Counter(table.column("shard").to_pylist())
    if not counts:
        raise MindRecordError(f"{split_dir / MANIFEST}: lists no shards")
    files = []
    for name in sorted(counts):
        check_shard(split_dir / name, counts[name])
        files.append(str(split_dir / name))
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


# Columns of manifest.parquet, in order, before the pixel counts (`schema.pixel_columns`); integer
# columns' types (every other column is a string, every pixel count int64).
SAMPLE_COLUMNS = ("id", "city", "shard", "index_in_shard", "image_path", "image_bytes", "image_fingerprint",
                  "label_path", "label_bytes", "label_fingerprint", "height", "width", "image_crc32", "label_crc32")
_INT_COLUMNS = {"index_in_shard": "int32", "height": "int32", "width": "int32", "image_bytes": "int64",
                "label_bytes": "int64"}


def manifest_columns(classes: ClassTable) -> tuple:
    """The manifest's columns, in order, for a data set with these classes."""
    return SAMPLE_COLUMNS + pixel_columns(classes.names)


def write_split_index(split_dir: Path, columns: dict, summary: dict, dataset: DatasetSpec) -> None:
    """Write summary.json, then manifest.parquet (`columns`: name -> values, the columns of
    `manifest_columns`; the data set's block in its schema metadata) last: its presence means the
    split is complete."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    names = manifest_columns(dataset.class_table())
    if set(columns) != set(names):
        raise ValueError(f"manifest columns differ from the format: {sorted(set(columns) ^ set(names))}")
    types = {**_INT_COLUMNS, **dict.fromkeys(names[len(SAMPLE_COLUMNS):], "int64")}
    table = pa.table({k: pa.array(columns[k], type=getattr(pa, types.get(k, "string"))()) for k in names})
    table = table.replace_schema_metadata({"build_key": summary["build_key"],
                                           "options": json.dumps(summary["options"], sort_keys=True),
                                           DATASET_KEY: json.dumps(dataset_block(dataset), sort_keys=True)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(split_dir / SUMMARY, (json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    write_bytes_atomic(split_dir / MANIFEST, buf.getvalue())

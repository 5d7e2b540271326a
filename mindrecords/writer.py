"""Writing one shard so that no reader ever sees half of it.

MindRecord stores a file's base name inside both the shard and its `.db` index, so a shard
cannot be written under a temporary name and renamed: it is written under its final base name
into a private folder, and `commit_shard` later moves both files into place with `os.replace`.
"""
from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Iterable

from mindrecords.schema import INDEX_FIELDS, SCHEMA
from base.errors import mindspore_detail


def write_shard(folder: Path, name: str, records: Iterable[dict], dataset: str = "cityscapes") -> int:
    """Write `records` one by one (memory stays one record deep) to `folder/name` (+ `.db`), the
    shard's schema described by the data set's name.

    `folder` must be private to this writer. Returns the number of records written.
    """
    from mindspore.mindrecord import FileWriter

    folder.mkdir(parents=True, exist_ok=True)
    try:
        writer = FileWriter(str(folder / name), shard_num=1, overwrite=True)
        writer.add_schema(SCHEMA, dataset)
        writer.add_index(INDEX_FIELDS)
        count = 0
        for record in records:
            writer.write_raw_data([record])
            count += 1
        writer.commit()
    except RuntimeError as err:  # MindSpore reports a full disk or a failed write as RuntimeError
        raise writer_error(err, folder / name) from None
    return count


def writer_error(err: RuntimeError, path: Path) -> OSError:
    """MindSpore's multi-line RuntimeError as an OSError naming the shard (a full disk as ENOSPC)."""
    detail = mindspore_detail(err)
    if "free disk" in detail.lower():
        return OSError(errno.ENOSPC, f"no space left on the device while writing the shard ({detail})", str(path))
    return OSError(errno.EIO, f"the MindRecord writer failed: {detail}", str(path))


def shard_files(folder: Path, name: str) -> tuple[Path, Path]:
    return folder / name, folder / f"{name}.db"


def commit_shard(staged: Path, dest: Path, name: str) -> None:
    """Move a staged shard and its index over `dest/name` (each move atomic)."""
    for src, dst in zip(shard_files(staged, name), shard_files(dest, name)):
        os.replace(src, dst)


def remove_shard(dest: Path, name: str) -> None:
    for path in shard_files(dest, name):
        path.unlink(missing_ok=True)


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)

"""Iterating a MindRecord pipeline so that a damaged shard is named, not reported as a bare
MindSpore error: the pipelines read ahead, so their own message names no file."""
from __future__ import annotations

from pathlib import Path

from base.errors import mindspore_detail
from mindrecords.manifest import MindRecordError
from mindrecords.schema import PATH_FIELDS, check_path_field
from mindrecords.verify import find_damage


def reading_error(data_root, split: str, where: str, err: Exception, start_row: int = 0) -> MindRecordError:
    """The error for a pipeline that failed while reading `split`: the damaged shard and record,
    found as `verify` finds them from the shard holding manifest row `start_row` on."""
    found = find_damage(data_root, split, start_row)
    if found is not None:
        path, problem = found
        return MindRecordError(f"{path}: damaged shard ({problem}), found in {where} "
                               f"(rebuild the split with build-mindrecord)")
    return MindRecordError(f"{Path(data_root) / split}: reading the shards failed in {where}: "
                           f"{mindspore_detail(err)} (`cli.py verify {data_root}` checks every shard)")


def read_batches(data, data_root, split: str, where: str, output_numpy: bool = False, as_dict: bool = False,
                 in_manifest_order: bool = False):
    """The dataset's rows (tuples, or dicts with `as_dict`); a read failure becomes `reading_error`.
    A dict row's path fields (`schema.PATH_FIELDS`, e.g. the `city` and `id` prediction files are
    named after) are validated: a record with an unsafe one is reported as damage, never used.

    `in_manifest_order`: the rows follow the manifest (evaluation), so the search for the damage
    starts at the shard of the first row not yet yielded."""
    make = data.create_dict_iterator if as_dict else data.create_tuple_iterator
    rows, done = None, 0
    while True:
        try:
            if rows is None:  # creating the iterator already opens the shards
                rows = make(num_epochs=1, output_numpy=output_numpy)
            row = next(rows)
            for key in PATH_FIELDS if as_dict else ():
                if key in row:
                    check_path_field(key, str(row[key]), f"record {done}")
        except StopIteration:
            return
        except (RuntimeError, ValueError) as err:
            raise reading_error(data_root, split, f"{where} after {done} rows", err,
                                done if in_manifest_order else 0) from None
        done += 1
        yield row

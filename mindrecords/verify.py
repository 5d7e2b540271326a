"""`verify`: every record of a built split read back and checked against its manifest.

`find_damage` runs the same checks for readers that failed mid-stream, to name the shard.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from base.checksums import crc32_hex
from base.errors import mindspore_detail
from base.images import ImageError, decode_image, read_info
from base.class_table import ClassTable
from mindrecords.manifest import (MindRecordError, built_splits, data_classes, manifest_rows, read_manifest,
                                  rows_by_shard)
from mindrecords.schema import (MANIFEST, PATH_FIELDS, SUMMARY, check_path_field, decode_label, is_shard_name,
                                pixel_columns)


@dataclass
class SplitReport:
    split: str
    records: int = 0
    shards: int = 0
    problems: list = field(default_factory=list)  # (file, message)
    notes: list = field(default_factory=list)     # (file, message): not the build's, left alone

    def add(self, path, message: str) -> None:
        self.problems.append((str(path), message))


def _stored_label(rec: dict, where: str, report: SplitReport, shard: Path):
    """The record's label (H, W) uint8 if its image and label decode (base/images.py) as the
    pipelines read them, at the recorded size; else None, the problems added to `report`."""
    h, w = int(rec["height"]), int(rec["width"])
    try:
        info = read_info(rec["image"], f"{where} image")
        if info.format not in ("PNG", "JPEG") or (info.mode, info.bits) != ("RGB", 8):
            report.add(shard, f"{where}: image is a {info.describe()}; records hold 8-bit RGB PNG or JPEG")
        elif (info.height, info.width) != (h, w):
            report.add(shard, f"{where}: image size {info.height}x{info.width} != ({h}, {w})")
        else:
            decode_image(rec["image"], f"{where} image")
    except ImageError as err:
        report.add(shard, f"{where}: image bytes do not decode ({err.reason})")
    try:
        label = decode_label(rec["label"])
    except ValueError as err:
        report.add(shard, f"{where}: label bytes do not decode ({err})")
        return None
    if label.shape != (h, w):
        report.add(shard, f"{where}: label size {label.shape} != ({h}, {w})")
        return None
    return label


def _check_record(rec: dict, expect: dict, classes: ClassTable, report: SplitReport, shard: Path) -> None:
    rid = rec["id"]
    where = f"record {rid!r}"
    for key in PATH_FIELDS:  # they become prediction paths (`labelIds/{city}/{id}.png`)
        try:
            check_path_field(key, rec[key], where)
        except ValueError as err:
            report.add(shard, str(err))
    for key in ("city", "height", "width"):
        if rec[key] != expect[key]:
            report.add(shard, f"{where}: {key} {rec[key]!r} != manifest {expect[key]!r}")
    # Decoders accept much damage silently (libjpeg decodes altered data with a warning), so the
    # stored bytes must also have the CRC-32 the build recorded (manifests before format 3 lack it).
    for key in ("image", "label"):
        crc = crc32_hex(rec[key])
        if f"{key}_crc32" in expect and crc != expect[f"{key}_crc32"]:
            report.add(shard, f"{where}: {key} bytes damaged (CRC-32 {crc}, built as {expect[f'{key}_crc32']})")
    label = _stored_label(rec, where, report, shard)
    if label is None:
        return
    n, ignore = classes.n_cls, classes.ignore_index
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [i for i in np.flatnonzero(counts) if i >= n and i != ignore]
    if bad:
        report.add(shard, f"{where}: label values {bad} outside {classes.dataset}'s classes 0..{n - 1} and {ignore}")
        return
    got = [int(c) for c in counts[:n]] + [int(counts[ignore])]
    want = [expect[c] for c in pixel_columns(classes.names)]
    if got != want:
        report.add(shard, f"{where}: label pixel counts differ from the manifest")


def verify_split(out_dir, split: str, progress=None) -> SplitReport:
    """Read every record of `split` and check it against the manifest; problems are per file."""
    report = SplitReport(split)
    split_dir = Path(out_dir) / split
    try:
        table = read_manifest(out_dir, split)
        classes = data_classes(out_dir, split)
    except MindRecordError as err:
        report.add(split_dir / MANIFEST, str(err).split(": ", 1)[1])
        return report
    if "image_crc32" not in table.column_names:
        report.add(split_dir / MANIFEST, "built by an older version without the stored bytes' checksums; "
                                         "rerun build-mindrecord to bring it up to date")
    rows = table.to_pylist()
    by_shard = rows_by_shard(rows)
    report.shards = len(by_shard)
    _check_folder(split_dir, split, set(by_shard), report)
    _check_summary(split_dir / SUMMARY, len(rows), report)
    for name in sorted(by_shard):
        report.records += _verify_shard(split_dir / name, by_shard[name], classes, report, progress)
    return report


def _check_folder(split_dir: Path, split: str, listed: set, report: SplitReport) -> None:
    """A shard the manifest does not list is a problem; any other file in the split folder is
    someone else's (a user's notes, a backup): noted, never a problem, never touched."""
    ours = listed | {f"{n}.db" for n in listed} | {MANIFEST, SUMMARY}
    for path in sorted(split_dir.iterdir()):
        name = path.name
        if name in ours or name.startswith("."):
            continue
        if is_shard_name(split, name) or (name.endswith(".db") and is_shard_name(split, name[:-3])):
            report.add(path, "shard not listed in the manifest")
        else:
            report.notes.append((str(path), "not written by build-mindrecord (left alone)"))


def _check_summary(path: Path, rows: int, report: SplitReport) -> None:
    if not path.is_file():
        report.add(path, "missing")
        return
    try:
        samples = json.loads(path.read_text()).get("samples")
    except (OSError, ValueError, AttributeError) as err:
        report.add(path, f"unreadable ({err})")
        return
    if samples != rows:
        report.add(path, f"samples {samples} != manifest rows {rows}")


def _verify_shard(path: Path, expected: list, classes: ClassTable, report: SplitReport, progress=None) -> int:
    """Check one shard's records against its manifest rows; returns the number of records read."""
    from mindspore.mindrecord import FileReader

    missing = [p for p in (path, Path(f"{path}.db")) if not p.is_file()]
    for p in missing:
        report.add(p, "missing")
    if missing:
        if progress:
            progress.update(len(expected))
        return 0
    seen = []
    try:
        reader = FileReader(str(path), num_consumer=1)
        try:
            for rec in reader.get_next():
                rid = rec["id"]
                seen.append(rid)
                want = expected[len(seen) - 1] if len(seen) <= len(expected) else None
                if want is None or want["id"] != rid:
                    report.add(path, f"record {len(seen) - 1} is {rid!r}, manifest says "
                                     f"{want['id'] if want else 'no more records'!r}")
                else:
                    _check_record(rec, want, classes, report, path)
                if progress:
                    progress.update(1)
        finally:
            reader.close()
    except Exception as err:  # MindSpore raises RuntimeError/MRMError variants for damaged files
        report.add(path, f"unreadable ({mindspore_detail(err)})")
    if len(seen) != len(expected):
        report.add(path, f"{len(seen)} records read, manifest lists {len(expected)}")
        if progress and len(seen) < len(expected):
            progress.update(len(expected) - len(seen))
    return len(seen)


def find_damage(out_dir, split: str, start_row: int = 0):
    """(file, problem) of the first damaged shard at or after the one holding manifest row
    `start_row`, checked as `verify` checks; None if none is found. Readers that fail mid-stream
    (their pipelines read ahead and name no file) call this to name the shard."""
    rows = read_manifest(out_dir, split).to_pylist()
    classes = data_classes(out_dir, split)
    by_shard = rows_by_shard(rows)
    names = list(by_shard)
    first = names.index(rows[start_row]["shard"]) if start_row < len(rows) else 0
    for name in names[first:]:
        report = SplitReport(split)
        _verify_shard(Path(out_dir) / split / name, by_shard[name], classes, report)
        if report.problems:
            return report.problems[0]
    return None


def verify_output(out_dir, splits=None, progress_factory=None) -> list[SplitReport]:
    """Verify the given splits (default: every split found under OUT)."""
    out = Path(out_dir)
    if not out.is_dir():
        raise MindRecordError(f"{out}: no such folder")
    splits = splits or built_splits(out)
    if not splits:
        raise MindRecordError(f"{out}: no built split found (expected {out}/<split>/{MANIFEST})")
    reports = []
    for split in splits:
        total = 0
        try:
            total = manifest_rows(out, split)
        except MindRecordError:
            pass
        progress = progress_factory(total, f"verify {split}") if progress_factory else None
        reports.append(verify_split(out, split, progress))
        if progress:
            progress.close()
    return reports


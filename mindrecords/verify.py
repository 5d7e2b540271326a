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
from base.labels import IGNORE, NUM_CLASSES
from mindrecords.manifest import MindRecordError, built_splits, read_manifest, rows_by_shard
from mindrecords.schema import MANIFEST, PIXEL_COLUMNS, SUMMARY


@dataclass
class SplitReport:
    split: str
    records: int = 0
    shards: int = 0
    problems: list = field(default_factory=list)  # (file, message)

    def add(self, path, message: str) -> None:
        self.problems.append((str(path), message))


def _check_record(rec: dict, expect: dict, report: SplitReport, shard: Path) -> None:
    import cv2

    rid = rec["id"]
    where = f"record {rid!r}"
    for key in ("city", "height", "width"):
        if rec[key] != expect[key]:
            report.add(shard, f"{where}: {key} {rec[key]!r} != manifest {expect[key]!r}")
    # Decoders accept much damage silently (libjpeg decodes altered data with a warning), so the
    # stored bytes must also have the CRC-32 the build recorded (manifests before format 3 lack it).
    for key in ("image", "label"):
        crc = crc32_hex(rec[key])
        if f"{key}_crc32" in expect and crc != expect[f"{key}_crc32"]:
            report.add(shard, f"{where}: {key} bytes damaged (CRC-32 {crc}, built as {expect[f'{key}_crc32']})")
    h, w = int(rec["height"]), int(rec["width"])
    image = cv2.imdecode(np.frombuffer(rec["image"], np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None:
        report.add(shard, f"{where}: image bytes do not decode")
    elif image.shape[:2] != (h, w) or image.ndim != 3 or image.shape[2] != 3:
        report.add(shard, f"{where}: image shape {image.shape} != ({h}, {w}, 3)")
    label = cv2.imdecode(np.frombuffer(rec["label"], np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None:
        report.add(shard, f"{where}: label bytes do not decode")
        return
    if label.ndim != 2 or label.dtype != np.uint8 or label.shape != (h, w):
        report.add(shard, f"{where}: label {label.dtype} {label.shape} is not single-channel uint8 ({h}, {w})")
        return
    counts = np.bincount(label.ravel(), minlength=256)
    bad = [i for i in np.flatnonzero(counts) if i >= NUM_CLASSES and i != IGNORE]
    if bad:
        report.add(shard, f"{where}: label values {bad} outside 0..{NUM_CLASSES - 1} and {IGNORE}")
        return
    got = [int(c) for c in counts[:NUM_CLASSES]] + [int(counts[IGNORE])]
    want = [expect[c] for c in PIXEL_COLUMNS]
    if got != want:
        report.add(shard, f"{where}: label pixel counts differ from the manifest")


def verify_split(out_dir, split: str, progress=None) -> SplitReport:
    """Read every record of `split` and check it against the manifest; problems are per file."""
    report = SplitReport(split)
    split_dir = Path(out_dir) / split
    try:
        table = read_manifest(out_dir, split)
    except MindRecordError as err:
        report.add(split_dir / MANIFEST, str(err).split(": ", 1)[1])
        return report
    if "image_crc32" not in table.column_names:
        report.add(split_dir / MANIFEST, "built by an older version without the stored bytes' checksums; "
                                         "rerun build-mindrecord to bring it up to date")
    rows = table.to_pylist()
    by_shard = rows_by_shard(rows)
    report.shards = len(by_shard)
    listed = set(by_shard)
    for stray in sorted(p.name for p in split_dir.glob(f"{split}.mindrecord*") if not p.name.endswith(".db")):
        if stray not in listed:
            report.add(split_dir / stray, "shard not listed in the manifest")
    summary_path = split_dir / SUMMARY
    if not summary_path.is_file():
        report.add(summary_path, "missing")
    else:
        summary = json.loads(summary_path.read_text())
        if summary.get("samples") != len(rows):
            report.add(summary_path, f"samples {summary.get('samples')} != manifest rows {len(rows)}")
    for name in sorted(by_shard):
        report.records += _verify_shard(split_dir / name, by_shard[name], report, progress)
    return report


def _verify_shard(path: Path, expected: list, report: SplitReport, progress=None) -> int:
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
                    _check_record(rec, want, report, path)
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
    by_shard = rows_by_shard(rows)
    names = list(by_shard)
    first = names.index(rows[start_row]["shard"]) if start_row < len(rows) else 0
    for name in names[first:]:
        report = SplitReport(split)
        _verify_shard(Path(out_dir) / split / name, by_shard[name], report)
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
            total = read_manifest(out, split, columns=["id"]).num_rows
        except MindRecordError:
            pass
        progress = progress_factory(total, f"verify {split}") if progress_factory else None
        reports.append(verify_split(out, split, progress))
        if progress:
            progress.close()
    return reports


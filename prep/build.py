"""`build-mindrecord`: a data set's splits (Cityscapes, ADE20K, Pascal Context, a dataset file;
settings/datasets.py) to sharded MindRecord, in parallel, resumable, atomic.

Plan: samples sorted by id, cut into consecutive shards of `shard_size` (deterministic).
Each shard is committed with a state file (`.state/NAME.json`: its samples, their source
fingerprints, the build options (of a folder data set, the dataset file's keys that change the
records: `RECORD_KEYS` and the class count), the shard's file sizes and CRC-32s). A rerun keeps
every shard whose state still matches its sources (size + mtime, or content hash when the mtime moved) and
whose files still have the recorded size and CRC-32 (so a shard damaged in place, even without a
size change, is rebuilt), and a changed or added file rebuilds only the shards whose sample list
or sources changed. A rerun with nothing to do writes nothing (it works on a read-only output).

Safety: workers write whole shards into `.staging/` (under the final base name, see
mindrecords/writer.py); nothing in the split folder is touched until every shard of the run has
converted without error, so bad input never damages an earlier good output. Commit then removes
the manifest, moves each staged shard in (its state file written first, see Ownership) and writes
the manifest and summary last. A kill at any moment leaves either staged shards (reused by the rerun)
or committed shards with matching state; the rerun finishes the same output.

Ownership: the build replaces or deletes only files it provably wrote. A shard's state file is
written before its files are moved in, so a shard name in the split folder is the build's exactly
when `.state/NAME.json` exists; any other file there (a user's `train.mindrecord000.bak`, notes,
a shard-named file without a state) is never touched, and one in the way of a planned shard is
refused before any work. A shard the plan no longer has is deleted only when its state is intact
and its files still have the recorded sizes and CRC-32s. Workers exit with the build process.
"""
from __future__ import annotations

import fcntl
import json
import os
import threading
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from base.atomic import check_writable_dir
from base.checksums import file_crc32
from base.progress import Progress
from mindrecords.manifest import dataset_block, manifest_columns, recorded_dataset_block, write_split_index
from mindrecords.schema import (MANIFEST, STAGING_DIR, STATE_DIR, SUMMARY, check_split_name, pixel_columns,
                                shard_name)
from mindrecords.writer import commit_shard, remove_shard, remove_tree, shard_files, write_shard
from prep.convert import convert, encoding
from prep.discover import Sample, dataset_root, discover, discover_folders, source_folders
from prep.errors import PrepError
from prep.malloc import reuse_freed_memory
from prep.report import format_summary, split_summary
from prep.shard_state import SOURCE_KEYS, load_json, usable, write_json, written_as_recorded
from settings.datasets import DatasetSpec, load_dataset

# Bump when the stored bytes or the recorded facts for the same sources and options would change
# (3: the manifest records the stored bytes' CRC-32s, the state each shard file's CRC-32).
FORMAT_VERSION = 3


@dataclass
class SplitResult:
    split: str
    samples: int
    shards: int
    written: int        # shards (re)built in this run
    bytes: int          # apparent size of shards + indexes
    disk_bytes: int     # allocated: MindRecord pads its last page sparsely
    summary: dict = field(repr=False, default_factory=dict)


def plan(samples: list[Sample], split: str, shard_size: int) -> list[tuple[str, list[Sample]]]:
    return [(shard_name(split, i // shard_size), samples[i:i + shard_size])
            for i in range(0, len(samples), shard_size)]


def build_shard(root: Path, staging: Path, name: str, members: list[Sample], options: dict,
                spec: DatasetSpec) -> dict:
    """Convert and write one shard of data set `spec` into `staging/name/` (complete or absent);
    returns its state."""
    tmp = staging / f"{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    enc = encoding(spec)
    entries = []

    def records():
        for sample in members:
            stats = {key: (root / getattr(sample, key)).stat() for key in SOURCE_KEYS}
            record, facts = convert(root, sample, options["image_format"], enc)
            entry = {"id": sample.id, "city": sample.city, "image": sample.image, "label": sample.label,
                     "height": facts["height"], "width": facts["width"], "pixels": facts["pixels"],
                     "image_crc32": facts["image_crc32"], "label_crc32": facts["label_crc32"]}
            for key in SOURCE_KEYS:
                entry[f"{key}_bytes"] = stats[key].st_size
                entry[f"{key}_mtime_ns"] = stats[key].st_mtime_ns
                entry[f"{key}_fingerprint"] = facts[f"{key}_fingerprint"]
            entries.append(entry)
            yield record

    try:
        write_shard(tmp, name, records(), spec.name)
        files = shard_files(tmp, name)
        state = {"name": name, "options": options, "samples": entries,
                 "file_bytes": [p.stat().st_size for p in files], "file_crc32": [file_crc32(p) for p in files]}
        write_json(tmp / "state.json", state)
        final = staging / name
        remove_tree(final)
        os.replace(tmp, final)
    finally:
        remove_tree(tmp)
    return state


def manifest_table(states: list[dict], spec: DatasetSpec) -> dict:
    """The manifest's columns (`mindrecords.manifest.manifest_columns`) from the shards' states."""
    cols = {k: [] for k in manifest_columns(spec.class_table())}
    pixels = pixel_columns(spec.classes)
    for state in states:
        for i, e in enumerate(state["samples"]):
            row = {"id": e["id"], "city": e["city"], "shard": state["name"], "index_in_shard": i,
                   "image_path": e["image"], "label_path": e["label"], "height": e["height"], "width": e["width"],
                   "image_crc32": e["image_crc32"], "label_crc32": e["label_crc32"],
                   **{f"{key}_{what}": e[f"{key}_{what}"] for key in SOURCE_KEYS for what in ("bytes", "fingerprint")},
                   **dict(zip(pixels, e["pixels"]))}
            for k, v in row.items():
                cols[k].append(v)
    return cols


def _stray_shards(split_dir: Path, names: set) -> list[str]:
    """Shards an earlier build committed here that the plan no longer has, each proven the build's
    (`written_as_recorded`); a shard whose files were changed since, or whose state is damaged,
    is left alone."""
    state_dir = split_dir / STATE_DIR
    states = sorted(state_dir.glob("*.json")) if state_dir.is_dir() else []
    return [path.stem for path in states if path.stem not in names
            and written_as_recorded(split_dir, path.stem, load_json(path))]


def _check_not_foreign(out: Path, plans: dict) -> None:
    """Refuse, before any work, to replace a file in a split folder that no build record proves the
    build's: a planned shard's files need their state file, the manifest and summary the `.state/`
    folder of an earlier build."""
    for split, shard_plan in plans.items():
        split_dir = out / split
        state_dir = split_dir / STATE_DIR
        targets = [(path, state_dir / f"{name}.json")
                   for name, _ in shard_plan for path in shard_files(split_dir, name)]
        targets += [(split_dir / name, state_dir) for name in (MANIFEST, SUMMARY)]
        for path, proof in targets:
            if (path.exists() or path.is_symlink()) and not proof.exists():
                raise PrepError(f"{path}: exists and was not written by build-mindrecord (no "
                                f"{proof.relative_to(split_dir)} records it); move it away or choose another --out")


def build(root, out, splits=("train", "val"), workers: int = 0, shard_size: int = 64,
          image_format: str = "png", labels: str = "fine", force: bool = False, echo=print,
          dataset="cityscapes") -> list[SplitResult]:
    """Build (or bring up to date) OUT/{split}/ for each split of `dataset` (a built-in name or a
    dataset file); see the module doc."""
    start = time.perf_counter()
    if shard_size < 1:
        raise PrepError(f"--shard-size must be >= 1, got {shard_size}")
    if image_format not in ("png", "jpeg"):
        raise PrepError(f"--image-format must be png or jpeg, got {image_format!r}")
    for split in splits:
        try:
            check_split_name(split)
        except ValueError as err:
            raise PrepError(f"{out}: {err}") from None
    spec = load_dataset(dataset)
    try:
        pixel_columns(spec.classes)
    except ValueError as err:
        raise PrepError(f"{dataset}: classes: {err}") from None
    root, out = Path(root), Path(out)
    workers = workers or os.cpu_count() or 1
    if spec.layout == "cityscapes":
        _check_out(root, out, SOURCE_FOLDERS)
        found = discover(root, splits, labels)  # every split's names are checked before any write
    else:
        if labels != "fine":
            raise PrepError(f"--labels {labels}: Cityscapes' gtCoarse; {spec.name} has one label folder")
        root = dataset_root(root, spec, list(splits))
        _check_out(root, out, source_folders(spec, splits))
        found = {split: discover_folders(root, spec, split) for split in splits}
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepError(f"{out}: cannot create the output folder ({err.strerror})") from None
    with _exclusive(out):
        return _build(root, out, found, workers, _options(spec, shard_size, image_format, labels), spec, force,
                      echo, start)


# The dataset file's keys that decide a folder data set's records (which files, the label mapping,
# the MindRecord schema's name); names, palette and eval live only in the manifest's dataset block.
RECORD_KEYS = ("name", "ignore_index", "reduce_zero_label", "layout", "img_dir", "ann_dir", "img_suffix",
               "seg_map_suffix", "split_file", "splits")


def _options(spec: DatasetSpec, shard_size: int, image_format: str, labels: str) -> dict:
    """The build options every shard's state records: a change rebuilds the shard. For a folder data
    set, its `RECORD_KEYS` and class count; Cityscapes' records depend on none of its file's fields
    (the label table is code), and its options stay those of builds made before data sets existed."""
    options = {"format_version": FORMAT_VERSION, "image_format": image_format, "labels": labels,
               "shard_size": shard_size}
    if spec.layout == "cityscapes":
        return options
    return {**options, "dataset": {**{k: getattr(spec, k) for k in RECORD_KEYS}, "n_cls": len(spec.classes)}}


SOURCE_FOLDERS = ("leftImg8bit", "gtFine", "gtCoarse")


def _check_out(root: Path, out: Path, folders) -> None:
    """OUT must be a folder (or not exist yet) outside ROOT's image and label `folders`: shards written
    there would become part of the source tree and break every later build from it."""
    if out.exists() and not out.is_dir():
        raise PrepError(f"{out}: exists and is not a folder")
    resolved = out.resolve()
    for name in folders:
        source = (root / name).resolve()
        if resolved == source or source in resolved.parents:
            raise PrepError(f"{out}: inside the source folder {root / name}; choose an --out outside "
                            f"{', '.join(str(root / f) for f in folders)}")


@contextmanager
def _exclusive(out: Path):
    """One build per OUT at a time; the OS drops the lock if the process dies.

    The lock file is opened read-only (flock needs no write access), so an up-to-date rerun works
    on a read-only output; where it cannot even be created, no other build can write there either."""
    try:
        fd = os.open(out / ".build.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise PrepError(f"{out}: another build-mindrecord is writing here") from None
        yield
    finally:
        os.close(fd)


def _build(root: Path, out: Path, found: dict, workers: int, options: dict, spec: DatasetSpec, force: bool, echo,
           start: float) -> list[SplitResult]:
    plans = {split: plan(samples, split, options["shard_size"]) for split, samples in found.items()}
    _check_not_foreign(out, plans)
    ready, refreshed, tasks = _reusable(root, out, plans, options, len(spec.classes) + 1, force)
    if tasks:
        try:
            check_writable_dir(out)
        except OSError as err:
            raise PrepError(f"{out}: cannot write shards here ({err.strerror})") from None
        ready.update(_convert_all(root, out, tasks, options, spec, workers))
    results = [_commit_split(out / split, split, shard_plan, ready, refreshed, options, spec)
               for split, shard_plan in plans.items()]
    _report(results, sum(len(m) for _, _, m in tasks), time.perf_counter() - start, echo)
    return results


def _reusable(root: Path, out: Path, plans: dict, options: dict, pixels: int, force: bool):
    """Which planned shards can be kept: ({(split, name): ("committed"|"staged", state)},
    kept shards whose recorded mtimes need refreshing, [(split, name, members)] to convert)."""
    ready, refreshed, tasks = {}, set(), []
    for split, shard_plan in plans.items():
        split_dir = out / split
        staging = split_dir / STAGING_DIR
        for leftover in staging.glob("*.partial-*") if staging.is_dir() else []:
            remove_tree(leftover)
        for name, members in shard_plan:
            state = None if force else load_json(split_dir / STATE_DIR / f"{name}.json")
            recorded = json.dumps(state, sort_keys=True)
            if usable(state, split_dir, name, root, members, options, pixels):
                ready[(split, name)] = ("committed", state)
                if json.dumps(state, sort_keys=True) != recorded:  # content confirmed a moved mtime
                    refreshed.add((split, name))
                continue
            staged = None if force else load_json(staging / name / "state.json")
            if usable(staged, staging / name, name, root, members, options, pixels):
                ready[(split, name)] = ("staged", staged)
            else:
                tasks.append((split, name, members))
    return ready, refreshed, tasks


def _convert_all(root: Path, out: Path, tasks: list, options: dict, spec: DatasetSpec, workers: int) -> dict:
    """Convert the shards in `tasks` in parallel into their splits' staging folders."""
    from joblib import Parallel, delayed

    ready = {}
    progress = Progress(sum(len(m) for _, _, m in tasks), "build-mindrecord", "img")
    jobs = (delayed(_build_task)(os.getpid(), root, out / split / STAGING_DIR, split, name, members, options, spec)
            for split, name, members in tasks)
    try:
        for split, name, state in Parallel(n_jobs=min(workers, len(tasks)), return_as="generator_unordered")(jobs):
            ready[(split, name)] = ("staged", state)
            progress.update(len(state["samples"]), postfix=f"{split}/{name}")
    except BaseException:  # a refused source: the shards other workers were writing end with the build
        for split in {split for split, _, _ in tasks}:
            for leftover in (out / split / STAGING_DIR).glob("*.partial-*"):
                remove_tree(leftover)
        raise
    finally:
        progress.close()
    return ready


def _commit_split(split_dir: Path, split: str, shard_plan: list, ready: dict, refreshed: set,
                  options: dict, spec: DatasetSpec) -> SplitResult:
    """Move the split's staged shards in and rewrite its manifest when anything changed (the
    dataset block too: a renamed class or a new colour rewrites only the manifest and summary)."""
    names = [name for name, _ in shard_plan]
    states = [ready[(split, n)][1] for n in names]
    staged = [n for n in names if ready[(split, n)][0] == "staged"]
    stray = _stray_shards(split_dir, set(names))
    summary = split_summary(split, states, options, spec.classes)
    old = load_json(split_dir / SUMMARY)
    old_key = old.get("build_key") if isinstance(old, dict) else None
    if (staged or stray or old_key != summary["build_key"] or not (split_dir / MANIFEST).is_file()
            or recorded_dataset_block(split_dir.parent, split) != dataset_block(spec)):
        _commit(split_dir, staged, stray, states, summary, spec)
    staging = split_dir / STAGING_DIR
    for leftover in staging.iterdir() if staging.is_dir() else []:  # the build's private workspace
        remove_tree(leftover)  # what is left there is a killed build's work, of shards no longer planned
    for state in states:  # kept shards: remember source mtimes that were confirmed by content
        if (split, state["name"]) in refreshed:
            write_json(split_dir / STATE_DIR / f"{state['name']}.json", state)
    disk = sum(p.stat().st_blocks * 512 for n in names for p in shard_files(split_dir, n))
    return SplitResult(split, summary["samples"], len(names), len(staged), summary["bytes"], disk, summary)


def _report(results: list[SplitResult], converted: int, seconds: float, echo) -> None:
    for r in results:
        echo(format_summary(r.summary))
    n = sum(r.samples for r in results)
    if converted:
        rate = f"{converted} images converted, {converted / max(seconds, 1e-9):.1f} images/s"
    else:
        rate = "up to date: every source and shard verified unchanged"
    echo(f"done: {n} samples, {sum(r.shards for r in results)} shards ({sum(r.written for r in results)} written), "
         f"{sum(r.bytes for r in results) / 1e6:.1f} MB ({sum(r.disk_bytes for r in results) / 1e6:.1f} MB on disk), "
         f"{seconds:.1f}s; {rate}")


def _build_task(parent, root, staging, split, name, members, options, spec):
    _end_with_parent(parent)
    reuse_freed_memory()
    cv2.setNumThreads(1)  # one shard per worker already; OpenCV's idle pool threads only spin
    staging.mkdir(parents=True, exist_ok=True)
    return split, name, build_shard(root, staging, name, members, options, spec)


_PARENT_POLL_S = 0.5
_watching = threading.Event()


def _end_with_parent(parent: int) -> None:
    """In a worker: exit as soon as the build process `parent` is gone (even by kill -9), instead of
    converting on for minutes. An orphan is adopted by another process, so its parent pid changes.
    (Not prctl's parent-death signal: it follows the thread that spawned the worker, and joblib may
    spawn from a thread that ends before the build does.)"""
    if parent == os.getpid() or _watching.is_set():  # one worker: joblib runs it in the build process
        return
    _watching.set()

    def watch():
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        os._exit(1)

    threading.Thread(target=watch, name="end-with-parent", daemon=True).start()


def _commit(split_dir: Path, staged: list[str], stray: list[str], states: list[dict], summary: dict,
            spec: DatasetSpec) -> None:
    state_dir = split_dir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / MANIFEST).unlink(missing_ok=True)  # readers now see "build did not finish"
    by_name = {s["name"]: s for s in states}
    for name in staged:
        # State first: it proves the name the build's from now on (it matches the files once they are in).
        write_json(state_dir / f"{name}.json", by_name[name])
        commit_shard(split_dir / STAGING_DIR / name, split_dir, name)
        remove_tree(split_dir / STAGING_DIR / name)
    for name in stray:  # files first: an interrupted removal keeps the proof for what is left
        remove_shard(split_dir, name)
        (state_dir / f"{name}.json").unlink()
    write_split_index(split_dir, manifest_table(states, spec), summary, spec)

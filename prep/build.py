"""`build-mindrecord`: Cityscapes splits to sharded MindRecord, in parallel, resumable, atomic.

Plan: samples sorted by id, cut into consecutive shards of `shard_size` (deterministic).
Each shard is committed with a state file (`.state/NAME.json`: its samples, their source
fingerprints, the build options, the shard's file sizes and CRC-32s). A rerun keeps every shard
whose state still matches its sources (size + mtime, or content hash when the mtime moved) and
whose files still have the recorded size and CRC-32 (so a shard damaged in place, even without a
size change, is rebuilt), and a changed or added file rebuilds only the shards whose sample list
or sources changed. A rerun with nothing to do writes nothing (it works on a read-only output).

Safety: workers write whole shards into `.staging/` (under the final base name, see
mindrecords/writer.py); nothing in the split folder is touched until every shard of the run has
converted without error, so bad input never damages an earlier good output. Commit then removes
the manifest, moves each staged shard in (state file removed first, written last) and writes the
manifest and summary last. A kill at any moment leaves either staged shards (reused by the rerun)
or committed shards with matching state; the rerun finishes the same output.
"""
from __future__ import annotations

import ctypes
import fcntl
import json
import os
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from mindrecords.schema import MANIFEST, PIXEL_COLUMNS, STAGING_DIR, STATE_DIR, SUMMARY, shard_name
from mindrecords.writer import commit_shard, remove_shard, remove_tree, shard_files, write_shard
from base.atomic import check_writable_dir, write_bytes_atomic
from base.checksums import file_crc32, fingerprint
from prep.convert import convert
from prep.discover import Sample, discover
from prep.errors import PrepError
from base.labels import CLASS_NAMES
from base.progress import Progress

# Bump when the stored bytes or the recorded facts for the same sources and options would change
# (3: the manifest records the stored bytes' CRC-32s, the state each shard file's CRC-32).
FORMAT_VERSION = 3
SOURCE_KEYS = ("image", "label")


@dataclass
class SplitResult:
    split: str
    samples: int
    shards: int
    written: int        # shards (re)built in this run
    bytes: int          # apparent size of shards + indexes
    disk_bytes: int     # allocated: MindRecord pads its last page sparsely
    summary: dict = field(repr=False, default_factory=dict)


def _atomic_json(path: Path, obj, indent=None) -> None:
    # indent=None keeps json on its C encoder: state files are written per shard, on the hot path.
    write_bytes_atomic(path, (json.dumps(obj, indent=indent, sort_keys=True) + "\n").encode())


def _load_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def plan(samples: list[Sample], split: str, shard_size: int) -> list[tuple[str, list[Sample]]]:
    return [(shard_name(split, i // shard_size), samples[i:i + shard_size])
            for i in range(0, len(samples), shard_size)]


def _sources_match(root: Path, members: list[Sample], entries: list) -> bool:
    """True if `entries` (a state's samples) describe exactly these samples' current sources.

    Size and mtime equal: unchanged. Size equal but mtime moved (copied, touched): compare the
    content hash, so only a real change rebuilds. Updates the entries' mtimes when content matched.
    """
    if [(m.id, m.image, m.label) for m in members] != [(e["id"], e["image"], e["label"]) for e in entries]:
        return False
    for entry in entries:
        for key in SOURCE_KEYS:
            path = root / entry[key]
            try:
                st = path.stat()
            except OSError:
                return False
            if st.st_size != entry[f"{key}_bytes"]:
                return False
            if st.st_mtime_ns != entry[f"{key}_mtime_ns"]:
                if fingerprint(path.read_bytes()) != entry[f"{key}_fingerprint"]:
                    return False
                entry[f"{key}_mtime_ns"] = st.st_mtime_ns
    return True


def _files_match(folder: Path, name: str, state: dict) -> bool:
    """The shard and its index have the size and CRC-32 recorded when they were written."""
    files = shard_files(folder, name)
    try:
        if [p.stat().st_size for p in files] != state["file_bytes"]:
            return False
        return [file_crc32(p) for p in files] == state.get("file_crc32")
    except OSError:
        return False


def _usable(state, folder: Path, name: str, root: Path, members, options: dict) -> bool:
    return (state is not None and state.get("options") == options and state.get("name") == name
            and _files_match(folder, name, state) and _sources_match(root, members, state["samples"]))


def build_shard(root: Path, staging: Path, name: str, members: list[Sample], options: dict) -> dict:
    """Convert and write one shard into `staging/name/` (complete or absent); returns its state."""
    tmp = staging / f"{name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    entries = []

    def records():
        for sample in members:
            stats = {key: (root / getattr(sample, key)).stat() for key in SOURCE_KEYS}
            record, facts = convert(root, sample, options["image_format"])
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
        write_shard(tmp, name, records())
        files = shard_files(tmp, name)
        state = {"name": name, "options": options, "samples": entries,
                 "file_bytes": [p.stat().st_size for p in files], "file_crc32": [file_crc32(p) for p in files]}
        _atomic_json(tmp / "state.json", state)
        final = staging / name
        remove_tree(final)
        os.replace(tmp, final)
    finally:
        remove_tree(tmp)
    return state


def _manifest_table(states: list[dict]):
    import pyarrow as pa

    rows = {k: [] for k in ("id", "city", "shard", "index_in_shard", "image_path", "image_bytes",
                            "image_fingerprint", "label_path", "label_bytes", "label_fingerprint",
                            "height", "width", "image_crc32", "label_crc32", *PIXEL_COLUMNS)}
    for state in states:
        for i, e in enumerate(state["samples"]):
            for k, v in (("id", e["id"]), ("city", e["city"]), ("shard", state["name"]), ("index_in_shard", i),
                         ("image_path", e["image"]), ("label_path", e["label"]), ("height", e["height"]),
                         ("width", e["width"]), ("image_crc32", e["image_crc32"]), ("label_crc32", e["label_crc32"])):
                rows[k].append(v)
            for key in SOURCE_KEYS:
                rows[f"{key}_bytes"].append(e[f"{key}_bytes"])
                rows[f"{key}_fingerprint"].append(e[f"{key}_fingerprint"])
            for col, n in zip(PIXEL_COLUMNS, e["pixels"]):
                rows[col].append(n)
    types = {"index_in_shard": pa.int32(), "height": pa.int32(), "width": pa.int32(),
             "image_bytes": pa.int64(), "label_bytes": pa.int64(), **{c: pa.int64() for c in PIXEL_COLUMNS}}
    return pa.table({k: pa.array(v, type=types.get(k, pa.string())) for k, v in rows.items()})


def _build_key(states: list[dict]) -> str:
    """Identity of a committed split: what the manifest was written from (mtimes excluded)."""
    slim = [{**s, "samples": [{k: v for k, v in e.items() if not k.endswith("_mtime_ns")} for e in s["samples"]]}
            for s in states]
    return fingerprint(json.dumps(slim, sort_keys=True).encode())


def _summary(split: str, states: list[dict], options: dict) -> dict:
    totals = [0] * len(PIXEL_COLUMNS)
    for s in states:
        for e in s["samples"]:
            totals = [a + b for a, b in zip(totals, e["pixels"])]
    labeled = sum(totals[:-1])
    all_pixels = sum(totals)
    return {
        "split": split, "samples": sum(len(s["samples"]) for s in states), "options": options,
        "shards": [{"name": s["name"], "samples": len(s["samples"]), "bytes": sum(s["file_bytes"])} for s in states],
        "bytes": sum(sum(s["file_bytes"]) for s in states),
        "class_pixels": dict(zip(CLASS_NAMES, totals[:-1])),
        "class_frequency": {n: (c / labeled if labeled else 0.0) for n, c in zip(CLASS_NAMES, totals[:-1])},
        "ignore_pixels": totals[-1], "ignore_fraction": totals[-1] / all_pixels if all_pixels else 0.0,
        "build_key": _build_key(states),
    }


def _write_manifest(split_dir: Path, states: list[dict], summary: dict) -> None:
    import io

    import pyarrow.parquet as pq

    table = _manifest_table(states)
    table = table.replace_schema_metadata({"build_key": summary["build_key"],
                                           "options": json.dumps(summary["options"], sort_keys=True)})
    buf = io.BytesIO()
    pq.write_table(table, buf)
    _atomic_json(split_dir / SUMMARY, summary, indent=1)
    write_bytes_atomic(split_dir / MANIFEST, buf.getvalue())  # last: its presence means "complete"


def _stray_shards(split_dir: Path, split: str, names: set) -> set:
    found = {p.name[:-3] if p.name.endswith(".db") else p.name for p in split_dir.glob(f"{split}.mindrecord*")}
    found |= {p.stem for p in (split_dir / STATE_DIR).glob("*.json")} if (split_dir / STATE_DIR).is_dir() else set()
    return found - names


def build(root, out, splits=("train", "val"), workers: int = 0, shard_size: int = 64,
          image_format: str = "png", labels: str = "fine", force: bool = False, echo=print) -> list[SplitResult]:
    """Build (or bring up to date) OUT/{split}/ for each split; see the module doc."""
    start = time.perf_counter()
    if shard_size < 1:
        raise PrepError(f"--shard-size must be >= 1, got {shard_size}")
    if image_format not in ("png", "jpeg"):
        raise PrepError(f"--image-format must be png or jpeg, got {image_format!r}")
    root, out = Path(root), Path(out)
    workers = workers or os.cpu_count() or 1
    _check_out(root, out)
    found = discover(root, splits, labels)  # every split's names are checked before any write
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise PrepError(f"{out}: cannot create the output folder ({err.strerror})") from None
    with _exclusive(out):
        return _build(root, out, found, workers, shard_size, image_format, labels, force, echo, start)


SOURCE_FOLDERS = ("leftImg8bit", "gtFine", "gtCoarse")


def _check_out(root: Path, out: Path) -> None:
    """OUT must be a folder (or not exist yet) outside ROOT's image and label folders: shards written
    there would become part of the source tree and break every later build from it."""
    if out.exists() and not out.is_dir():
        raise PrepError(f"{out}: exists and is not a folder")
    resolved = out.resolve()
    for name in SOURCE_FOLDERS:
        source = (root / name).resolve()
        if resolved == source or source in resolved.parents:
            raise PrepError(f"{out}: inside the source folder {root / name}; choose an --out outside "
                            f"{root}/{{{','.join(SOURCE_FOLDERS)}}}")


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


def _build(root: Path, out: Path, found: dict, workers: int, shard_size: int, image_format: str, labels: str,
           force: bool, echo, start: float) -> list[SplitResult]:
    from joblib import Parallel, delayed

    options = {"format_version": FORMAT_VERSION, "image_format": image_format, "labels": labels,
               "shard_size": shard_size}

    plans, tasks, ready, refreshed = {}, [], {}, set()
    for split, samples in found.items():
        split_dir = out / split
        staging = split_dir / STAGING_DIR
        for leftover in staging.glob("*.partial-*") if staging.is_dir() else []:
            remove_tree(leftover)
        plans[split] = plan(samples, split, shard_size)
        for name, members in plans[split]:
            state = None if force else _load_json(split_dir / STATE_DIR / f"{name}.json")
            recorded = json.dumps(state, sort_keys=True)
            if _usable(state, split_dir, name, root, members, options):
                ready[(split, name)] = ("committed", state)
                if json.dumps(state, sort_keys=True) != recorded:  # content confirmed a moved mtime
                    refreshed.add((split, name))
                continue
            staged = None if force else _load_json(staging / name / "state.json")
            if _usable(staged, staging / name, name, root, members, options):
                ready[(split, name)] = ("staged", staged)
            else:
                tasks.append((split, name, members))

    to_build = sum(len(m) for _, _, m in tasks)
    if tasks:
        try:
            check_writable_dir(out)
        except OSError as err:
            raise PrepError(f"{out}: cannot write shards here ({err.strerror})") from None
        progress = Progress(to_build, "build-mindrecord", "img")
        jobs = (delayed(_build_task)(root, out / split / STAGING_DIR, split, name, members, options)
                for split, name, members in tasks)
        try:
            for split, name, state in Parallel(n_jobs=min(workers, len(tasks)), return_as="generator_unordered")(jobs):
                ready[(split, name)] = ("staged", state)
                progress.update(len(state["samples"]), postfix=f"{split}/{name}")
        finally:
            progress.close()

    results = []
    for split, shard_plan in plans.items():
        split_dir = out / split
        names = [name for name, _ in shard_plan]
        states = [ready[(split, n)][1] for n in names]
        staged = [n for n in names if ready[(split, n)][0] == "staged"]
        stray = _stray_shards(split_dir, split, set(names))
        summary = _summary(split, states, options)
        old = _load_json(split_dir / SUMMARY) or {}
        if staged or stray or old.get("build_key") != summary["build_key"] or not (split_dir / MANIFEST).is_file():
            _commit(split_dir, staged, stray, states, summary)
        for state in states:  # kept shards: remember source mtimes that were confirmed by content
            if (split, state["name"]) in refreshed:
                _atomic_json(split_dir / STATE_DIR / f"{state['name']}.json", state)
        disk = sum(p.stat().st_blocks * 512 for n in names for p in shard_files(split_dir, n))
        results.append(SplitResult(split, summary["samples"], len(names), len(staged), summary["bytes"], disk,
                                   summary))
    for r in results:
        echo(format_summary(r.summary))
    seconds = time.perf_counter() - start
    n = sum(r.samples for r in results)
    if tasks:
        rate = f"{to_build} images converted, {to_build / max(seconds, 1e-9):.1f} images/s"
    else:
        rate = "up to date: every source and shard verified unchanged"
    echo(f"done: {n} samples, {sum(r.shards for r in results)} shards ({sum(r.written for r in results)} written), "
         f"{sum(r.bytes for r in results) / 1e6:.1f} MB ({sum(r.disk_bytes for r in results) / 1e6:.1f} MB on disk), "
         f"{seconds:.1f}s; {rate}")
    return results


def reuse_freed_memory() -> None:
    """Let glibc's malloc keep freed multi-MB buffers for reuse (no effect elsewhere).

    Each sample allocates several 4-6 MB buffers (file bytes, decoded pixels, FileWriter's blob
    copies); by default glibc maps each from fresh zeroed pages and unmaps it on free. Raising
    the mmap and trim thresholds serves them from the heap instead: FileWriter's write of a
    4 MB record drops from ~12 to ~5 ms (measured). Peak memory stays that of one sample.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    mallopt(m_mmap_threshold, 64 << 20)
    mallopt(m_trim_threshold, 256 << 20)


def _build_task(root, staging, split, name, members, options):
    reuse_freed_memory()
    staging.mkdir(parents=True, exist_ok=True)
    return split, name, build_shard(root, staging, name, members, options)


def _commit(split_dir: Path, staged: list[str], stray: set, states: list[dict], summary: dict) -> None:
    state_dir = split_dir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    (split_dir / MANIFEST).unlink(missing_ok=True)  # readers now see "build did not finish"
    by_name = {s["name"]: s for s in states}
    for name in staged:
        src = split_dir / STAGING_DIR / name
        (state_dir / f"{name}.json").unlink(missing_ok=True)
        commit_shard(src, split_dir, name)
        os.replace(src / "state.json", state_dir / f"{name}.json")
        remove_tree(src)
        by_name[name]["file_bytes"] = [p.stat().st_size for p in shard_files(split_dir, name)]
    for name in sorted(stray):
        (state_dir / f"{name}.json").unlink(missing_ok=True)
        remove_shard(split_dir, name)
        remove_tree(split_dir / STAGING_DIR / name)
    _write_manifest(split_dir, states, summary)


def format_summary(summary: dict) -> str:
    freq = summary["class_frequency"]
    lines = [f"{summary['split']}: {summary['samples']} samples in {len(summary['shards'])} shards, "
             f"{summary['bytes'] / 1e6:.1f} MB, ignore {summary['ignore_fraction']:.1%} of pixels; "
             "class frequencies (of labeled pixels):"]
    items = [f"{name:>13} {freq[name]:6.2%}" for name in CLASS_NAMES]
    for i in range(0, len(items), 4):
        lines.append("  " + "  ".join(items[i:i + 4]))
    return "\n".join(lines)

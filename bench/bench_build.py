"""Build throughput on full-size (1024x2048) frames, side by side with two baselines.

    .venv/bin/python bench/bench_build.py [--images 128,512] [--distinct 128] [--workers 2] [--shard-size 64]
        [--data DIR]

Sets larger than --distinct generated frames repeat them under other sequence numbers (hard
links), so a Cityscapes-sized run does not need gigabytes of generated frames; every mode reads
the same bytes from the page cache.

For each set size, four fresh processes run on the same files (page cache warmed first):
  floor   read every source file and decode each image and label once with cv2, on the same
          number of joblib workers: the physical minimum of any exact, validating build;
  build   `prep.build.build` (what `build-mindrecord` runs);
  single  the usual approach: one process converts sample by sample (the build's own conversion
          and checks) into one MindRecord file;
  single_malloc  the same with the build workers' malloc setting (`reuse_freed_memory`), to show
          how much of the build's lead over `single` is that setting rather than parallelism.
Each reports wall seconds (process pool start and imports included), CPU time per image (all
its processes: a contention-proof view when the machine is shared) and peak RSS of its largest
process; the build's peak is over its workers. Peak memory must not grow with the set.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _usage() -> tuple[float, float, float]:
    """(this process peak RSS MB, largest reaped child peak RSS MB, CPU seconds of both)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_maxrss / 1024, kids.ru_maxrss / 1024, me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _floor_task(root: str, pairs) -> int:
    import cv2
    import numpy as np

    for image, label in pairs:
        for rel in (image, label):
            data = np.frombuffer((Path(root) / rel).read_bytes(), np.uint8)
            if cv2.imdecode(data, cv2.IMREAD_UNCHANGED) is None:
                raise RuntimeError(rel)
    return len(pairs)


MODES = ("floor", "build", "single", "single_malloc")


def run_mode(mode: str, root: Path, out: Path, workers: int, shard_size: int) -> dict:
    from prep.discover import discover_split

    samples = discover_split(root, "train")
    cpu_before = _usage()[2]
    start = time.perf_counter()
    if mode == "floor":
        from joblib import Parallel, delayed

        chunks = [[(s.image, s.label) for s in samples[i:i + shard_size]] for i in range(0, len(samples), shard_size)]
        Parallel(n_jobs=workers)(delayed(_floor_task)(str(root), c) for c in chunks)
    elif mode == "build":
        from prep.build import build

        build(root, out, ["train"], workers=workers, shard_size=shard_size, echo=lambda *_: None)
    elif mode in ("single", "single_malloc"):
        from mindspore.mindrecord import FileWriter

        from mindrecords.schema import INDEX_FIELDS, SCHEMA
        from prep.malloc import reuse_freed_memory
        from prep.convert import convert, encoding
        from settings.datasets import load_dataset

        if mode == "single_malloc":
            reuse_freed_memory()

        out.mkdir(parents=True)
        writer = FileWriter(str(out / "train.mindrecord"), shard_num=1, overwrite=True)
        writer.add_schema(SCHEMA, "cityscapes")
        writer.add_index(INDEX_FIELDS)
        enc = encoding(load_dataset("cityscapes"))
        for sample in samples:
            writer.write_raw_data([convert(root, sample, "png", enc)[0]])
        writer.commit()
    seconds = time.perf_counter() - start
    if mode in ("floor", "build"):
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)  # reap the workers so their peak RSS is counted
    main_mb, child_mb, cpu = _usage()
    return {"mode": mode, "images": len(samples), "seconds": seconds, "main_mb": main_mb, "worker_mb": child_mb,
            "cpu_ms_per_image": 1000 * (cpu - cpu_before) / len(samples)}


def _subset(full: Path, dest: Path, n: int) -> Path:
    """n frames hard-linked from `full` (no copy, same page cache); frame i > len(full) repeats
    frame i % len(full) under sequence number seq + 1000 * (i // len(full))."""
    if dest.exists():
        return dest
    from prep.discover import discover_split

    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    frames = discover_split(full, "train")
    for i in range(n):
        s = frames[i % len(frames)]
        stem = s.image[: -len("_leftImg8bit.png")].replace("leftImg8bit/", "gtFine/", 1)
        city, seq, frame = s.id.rsplit("_", 2)
        new_id = f"{city}_{int(seq) + 1000 * (i // len(frames)):06d}_{frame}"
        for src in [full / s.image, *full.glob(stem + "_gtFine_*")]:
            target = tmp / str(src.relative_to(full)).replace(s.id, new_id)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(src, target)
    os.replace(tmp, dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", default="128,512", help="comma-separated set sizes")
    ap.add_argument("--distinct", type=int, default=128, help="distinct frames to generate")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=64, help="samples per shard (the CLI default)")
    ap.add_argument("--data", default=str(REPO / "bench_out" / "build"), help="where frames and outputs go")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:  # one measurement, in its own fresh process
        print(json.dumps(run_mode(args.mode, Path(args.root), Path(args.out), args.workers, args.shard_size)))
        return

    from prep.sample import make_sample

    sizes = sorted(int(n) for n in args.images.split(","))
    data = Path(args.data)
    distinct = min(args.distinct, sizes[-1])
    full = data / f"frames{distinct}"
    if not full.exists():
        print(f"generating {distinct} frames of 1024x2048 in {full} ...", flush=True)
        make_sample(full.with_name(full.name + ".tmp"), n_train=distinct, n_val=0, height=1024, width=2048, seed=0)
        os.replace(full.with_name(full.name + ".tmp"), full)
    rows = []
    for n in sizes:
        root = _subset(full, data / f"set{n}-of{distinct}", n)
        source_mb = sum(p.stat().st_size for p in root.rglob("*") if p.is_file()) / 1e6
        for p in root.rglob("*.png"):
            p.read_bytes()  # warm the page cache: every mode reads from memory
        result = {}
        for mode in MODES:
            out = data / f"out_{mode}{n}"
            shutil.rmtree(out, ignore_errors=True)
            proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--root", str(root), "--out", str(out),
                                   "--workers", str(args.workers), "--shard-size", str(args.shard_size)],
                                  check=True, capture_output=True, text=True)
            result[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
            shutil.rmtree(out, ignore_errors=True)
        rows.append((n, source_mb, result))
    print(f"\nbuild-mindrecord bench: 1024x2048 frames, {args.workers} workers, shard size {args.shard_size}, "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    print("| images | floor img/s | build img/s | single-process img/s (default / tuned malloc) | build / floor "
          "| build / single (default / tuned malloc) | CPU ms/img floor / build / single / single tuned "
          "| peak RSS build worker / main (MB) | peak RSS single (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, _, r in rows:
        rate = {m: r[m]["images"] / r[m]["seconds"] for m in r}
        print(f"| {n} | {rate['floor']:.2f} | {rate['build']:.2f} | {rate['single']:.2f} / {rate['single_malloc']:.2f} | "
              f"{rate['build'] / rate['floor']:.0%} | {rate['build'] / rate['single']:.2f}x / "
              f"{rate['build'] / rate['single_malloc']:.2f}x | "
              + " / ".join(f"{r[m]['cpu_ms_per_image']:.0f}" for m in MODES) + " | "
              f"{r['build']['worker_mb']:.0f} / {r['build']['main_mb']:.0f} | {r['single']['main_mb']:.0f} |")


if __name__ == "__main__":
    main()

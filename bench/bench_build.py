"""Build throughput on full-size (1024x2048) frames, side by side with two baselines.

    .venv/bin/python bench/bench_build.py [--images 128,512] [--distinct 128] [--workers 2] [--shard-size 64]
        [--data DIR]
    .venv/bin/python bench/bench_build.py --dataset ade20k [--images 100,300] [--distinct 24] ...

`--dataset ade20k`: the same four measurements on an ADE20K-shaped tree (ADEChallengeData2016:
images/{training,validation}/ADE_*.jpg, quality-90 JPEGs of varying size, short side 300-512, long
side up to 700, aspect ratios 0.5-2; annotations/*.png, 8-bit grey, values 0..150 in regions), the
training split timed (`build-mindrecord --dataset ade20k`). Its floor decodes with the decoders the
build must use (`base.images`: PIL/libjpeg-turbo for the JPEG, libpng for the label).

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


def _floor_task_ade(root: str, pairs) -> int:
    """The build's decoders (base/images.py): the JPEG with PIL, the label with libpng."""
    from base.images import decode_image, decode_label

    for image, label in pairs:
        decode_image((Path(root) / image).read_bytes(), image)
        decode_label((Path(root) / label).read_bytes(), label)
    return len(pairs)


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


def run_mode(mode: str, root: Path, out: Path, workers: int, shard_size: int, dataset: str = "cityscapes") -> dict:
    if dataset == "cityscapes":
        from prep.discover import discover_split

        samples = discover_split(root, "train")
    else:
        from prep.discover import discover_folders
        from settings.datasets import load_dataset

        samples = discover_folders(root, load_dataset(dataset), "train")
    cpu_before = _usage()[2]
    start = time.perf_counter()
    if mode == "floor":
        from joblib import Parallel, delayed

        chunks = [[(s.image, s.label) for s in samples[i:i + shard_size]] for i in range(0, len(samples), shard_size)]
        task = _floor_task if dataset == "cityscapes" else _floor_task_ade
        Parallel(n_jobs=workers)(delayed(task)(str(root), c) for c in chunks)
    elif mode == "build":
        from prep.build import build

        build(root, out, ["train"], workers=workers, shard_size=shard_size, echo=lambda *_: None, dataset=dataset)
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
        writer.add_schema(SCHEMA, dataset)
        writer.add_index(INDEX_FIELDS)
        enc = encoding(load_dataset(dataset))
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


ADE_ROOT = "ADEChallengeData2016"


def _ade_scene(rng, h: int, w: int) -> tuple:
    """(RGB uint8, label uint8 0..150) of one synthetic ADE20K-like picture: a few large regions
    (a background split in two, "floor" and "wall"), then 12-40 objects (polygons, ellipses,
    boxes), each a class 1..150 with its own colour, gradient and texture; some pixels stay 0
    ("other", ignored by reduce_zero_label) in small void blobs."""
    import cv2
    import numpy as np

    label = np.zeros((h, w), np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.7))
    label[:horizon], label[horizon:] = rng.integers(1, 151, 2)
    for _ in range(int(rng.integers(12, 41))):
        value = int(rng.integers(0, 151)) if rng.random() < 0.1 else int(rng.integers(1, 151))
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        rx, ry = rng.uniform(0.02, 0.25) * w, rng.uniform(0.02, 0.25) * h
        kind = rng.integers(3)
        if kind == 0:
            angles = np.sort(rng.uniform(0, 2 * np.pi, int(rng.integers(3, 9))))
            radius = rng.uniform(0.4, 1.0, angles.size)
            pts = np.stack([cx + rx * radius * np.cos(angles), cy + ry * radius * np.sin(angles)], 1)
            cv2.fillPoly(label, [pts.astype(np.int32)], value)
        elif kind == 1:
            cv2.ellipse(label, (int(cx), int(cy)), (int(rx), int(ry)), float(rng.uniform(0, 180)), 0, 360, value, -1)
        else:
            cv2.rectangle(label, (int(cx - rx), int(cy - ry)), (int(cx + rx), int(cy + ry)), value, -1)
    colours = rng.integers(20, 236, (256, 3)).astype(np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    shade = 0.75 + 0.5 * (0.6 * yy / h + 0.4 * xx / w)  # light falling across the scene
    stripes = 12 * np.sin(xx * rng.uniform(0.05, 0.3) + yy * rng.uniform(0.02, 0.2))
    texture = stripes[..., None] * (label[..., None] % 3 == 0)  # some classes striped, others flat
    grain = cv2.GaussianBlur(rng.normal(0, 14, (h, w, 3)).astype(np.float32), (0, 0), 0.8)
    image = colours[label] * shade[..., None] + texture + grain
    image = cv2.GaussianBlur(image, (0, 0), 0.7)  # soft edges, as a lens gives
    return np.clip(image, 0, 255).astype(np.uint8), label


def make_ade(dest: Path, n_train: int, n_val: int, seed: int = 0) -> None:
    """An ADE20K-shaped tree at `dest/ADEChallengeData2016`, deterministic from `seed`."""
    import numpy as np
    from PIL import Image

    for folder, kind, n in (("training", "train", n_train), ("validation", "val", n_val)):
        for d in ("images", "annotations"):
            (dest / ADE_ROOT / d / folder).mkdir(parents=True, exist_ok=True)
        for i in range(1, n + 1):
            rng = np.random.default_rng([seed, kind == "val", i])
            short = int(rng.integers(300, 513))
            long = int(min(700, max(short, round(short * float(np.exp(rng.uniform(0, np.log(2))))))))
            h, w = (short, long) if rng.random() < 0.7 else (long, short)  # most ADE pictures are landscape
            image, label = _ade_scene(rng, h, w)
            stem = f"ADE_{kind}_{i:08d}"
            Image.fromarray(image).save(dest / ADE_ROOT / "images" / folder / f"{stem}.jpg", quality=90)
            Image.fromarray(label).save(dest / ADE_ROOT / "annotations" / folder / f"{stem}.png")


def _subset_ade(full: Path, dest: Path, n: int) -> Path:
    """n training pictures hard-linked from `full` (no copy, same page cache); picture i > the
    generated count repeats picture i % count under number i + 1; validation linked as is."""
    if dest.exists():
        return dest
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    src_root = full / ADE_ROOT
    for folder, kind in (("training", "train"), ("validation", "val")):
        stems = sorted(p.stem for p in (src_root / "images" / folder).glob("*.jpg"))
        count = n if kind == "train" else len(stems)
        for i in range(count):
            stem, new = stems[i % len(stems)], f"ADE_{kind}_{i + 1:08d}"
            for sub, suffix in (("images", ".jpg"), ("annotations", ".png")):
                target = tmp / ADE_ROOT / sub / folder / f"{new}{suffix}"
                target.parent.mkdir(parents=True, exist_ok=True)
                os.link(src_root / sub / folder / f"{stem}{suffix}", target)
    os.replace(tmp, dest)
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dataset", choices=("cityscapes", "ade20k"), default="cityscapes",
                    help="cityscapes: 1024x2048 PNG frames; ade20k: ADE20K-shaped JPEGs of varying size")
    ap.add_argument("--images", help="comma-separated set sizes (default 128,512; ade20k 100,300)")
    ap.add_argument("--distinct", type=int, help="distinct frames to generate (default 128; ade20k 24)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--shard-size", type=int, default=64, help="samples per shard (the CLI default)")
    ap.add_argument("--data", help="where frames and outputs go (default bench_out/build, ade20k bench_out/build_ade20k)")
    ap.add_argument("--mode", help=argparse.SUPPRESS)
    ap.add_argument("--root", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.mode:  # one measurement, in its own fresh process
        print(json.dumps(run_mode(args.mode, Path(args.root), Path(args.out), args.workers, args.shard_size,
                                  args.dataset)))
        return
    ade = args.dataset == "ade20k"
    args.images = args.images or ("100,300" if ade else "128,512")
    args.distinct = args.distinct or (24 if ade else 128)
    args.data = args.data or str(REPO / "bench_out" / ("build_ade20k" if ade else "build"))
    if ade:
        return main_ade(args)

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
        for p in root.rglob("*.png"):
            p.read_bytes()  # warm the page cache: every mode reads from memory
        rows.append((n, _measure(root, data / f"out{n}", args, "cityscapes")))
    print(f"\nbuild-mindrecord bench: 1024x2048 frames, {args.workers} workers, shard size {args.shard_size}, "
          f"{os.cpu_count()} cores, load avg {os.getloadavg()[0]:.1f}")
    _print_table(rows, cpu_decimals=0)


def _measure(root: Path, out_base: Path, args, dataset: str) -> dict:
    """Every mode on the same files, each in a fresh process: mode -> its measurement."""
    result = {}
    for mode in MODES:
        out = out_base.with_name(f"{out_base.name}_{mode}")
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--root", str(root), "--out", str(out),
                               "--workers", str(args.workers), "--shard-size", str(args.shard_size),
                               "--dataset", dataset], check=True, capture_output=True, text=True)
        result[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
        shutil.rmtree(out, ignore_errors=True)
    return result


def _print_table(rows: list, cpu_decimals: int) -> None:
    print("| images | floor img/s | build img/s | single-process img/s (default / tuned malloc) | build / floor "
          "| build / single (default / tuned malloc) | CPU ms/img floor / build / single / single tuned "
          "| peak RSS build worker / main (MB) | peak RSS single (MB) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for n, r in rows:
        rate = {m: r[m]["images"] / r[m]["seconds"] for m in r}
        print(f"| {n} | {rate['floor']:.2f} | {rate['build']:.2f} | {rate['single']:.2f} / {rate['single_malloc']:.2f} | "
              f"{rate['build'] / rate['floor']:.0%} | {rate['build'] / rate['single']:.2f}x / "
              f"{rate['build'] / rate['single_malloc']:.2f}x | "
              + " / ".join(f"{r[m]['cpu_ms_per_image']:.{cpu_decimals}f}" for m in MODES) + " | "
              f"{r['build']['worker_mb']:.0f} / {r['build']['main_mb']:.0f} | {r['single']['main_mb']:.0f} |")



def main_ade(args) -> None:
    import numpy as np

    sizes = sorted(int(n) for n in args.images.split(","))
    data = Path(args.data)
    distinct = min(args.distinct, sizes[-1])
    n_val = max(2, distinct // 8)
    full = data / f"ade{distinct}"
    if not full.exists():
        print(f"generating {distinct} + {n_val} ADE20K-shaped pictures in {full} ...", flush=True)
        make_ade(full.with_name(full.name + ".tmp"), n_train=distinct, n_val=n_val, seed=0)
        os.replace(full.with_name(full.name + ".tmp"), full)
    jpegs = sorted((full / ADE_ROOT / "images" / "training").glob("*.jpg"))
    from PIL import Image

    shapes = [Image.open(p).size for p in jpegs]
    rows = []
    for n in sizes:
        root = _subset_ade(full, data / f"set{n}-of{distinct}", n) / ADE_ROOT
        for p in root.rglob("*"):
            if p.is_file():
                p.read_bytes()  # warm the page cache: every mode reads from memory
        rows.append((n, _measure(root, data / f"out{n}", args, "ade20k")))
    kb = np.mean([p.stat().st_size for p in jpegs]) / 1e3
    label_kb = np.mean([p.stat().st_size for p in (full / ADE_ROOT / "annotations" / "training").glob("*.png")]) / 1e3
    print(f"\nbuild-mindrecord bench, ADE20K-shaped: {distinct} distinct training JPEGs (quality 90, mean {kb:.0f} KB, "
          f"labels {label_kb:.0f} KB), {min(min(s) for s in shapes)}-{max(min(s) for s in shapes)} short side, "
          f"{max(max(s) for s in shapes)} longest, mean {np.mean([w * h for w, h in shapes]) / 1e3:.0f} kpixels; "
          f"{args.workers} workers, shard size {args.shard_size}, {os.cpu_count()} cores, "
          f"load avg {os.getloadavg()[0]:.1f}")
    _print_table(rows, cpu_decimals=1)


if __name__ == "__main__":
    main()

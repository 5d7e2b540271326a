"""A user's own data set, end to end with no code: does a tiny model learn it?

Writes a 4-class folder data set of flat shapes (background, circle, square, triangle) in mmseg's
convention (images/{train,val}/*.jpg, annotations/{train,val}/*.png) with its dataset file, then
runs the commands a user runs: build-mindrecord --dataset FILE, train (the demo model, a few
hundred steps), eval (per-class IoU under the class names) and predict (the data set's palette).
Prints the val mIoU and the time of each stage; docs/datasets.md records the figures.

    .venv/bin/python bench/learn_shapes.py --out shapes_out [--steps 300]
"""
from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CLASSES = ("background", "circle", "square", "triangle")
PALETTE = ((0, 0, 0), (220, 60, 60), (60, 200, 60), (60, 90, 230))
SIZE = 96


def shape_image(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One (SIZE, SIZE, 3) RGB image and its (SIZE, SIZE) class map: 1-3 flat shapes on a noisy ground."""
    image = rng.integers(90, 160, size=(1, 1, 3)) + rng.integers(-12, 12, size=(SIZE, SIZE, 3))
    image = np.clip(image, 0, 255).astype(np.uint8)
    label = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, 4))
        colour = np.clip(np.array(PALETTE[cls]) + rng.integers(-40, 40, size=3), 0, 255).tolist()
        cx, cy, r = (int(v) for v in (rng.integers(16, SIZE - 16), rng.integers(16, SIZE - 16), rng.integers(8, 22)))
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if cls == 1:
            cv2.circle(mask, (cx, cy), r, 1, -1)
        elif cls == 2:
            cv2.rectangle(mask, (cx - r, cy - r), (cx + r, cy + r), 1, -1)
        else:
            cv2.fillPoly(mask, [np.array([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], np.int32)], 1)
        image[mask > 0] = colour
        label[mask > 0] = cls
    return image, label


def write_dataset(root: Path, n_train: int, n_val: int, seed: int) -> Path:
    """The folder data set and its dataset file (returned)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image, label = shape_image(rng)
            cv2.imwrite(str(root / "images" / split / f"shape_{i:04d}.jpg"), image[..., ::-1],
                        [cv2.IMWRITE_JPEG_QUALITY, 95])
            cv2.imwrite(str(root / "annotations" / split / f"shape_{i:04d}.png"), label)
    spec = root / "shapes.yaml"
    spec.write_text("name: shapes\nclasses: [" + ", ".join(CLASSES) + "]\n"
                    "palette: [" + ", ".join(f"[{r}, {g}, {b}]" for r, g, b in PALETTE) + "]\n"
                    "img_dir: images/{split}\nann_dir: annotations/{split}\nimg_suffix: .jpg\nseg_map_suffix: .png\n"
                    f"eval: {{infer_size: 0, window: {SIZE}, stride: {SIZE}}}\n")
    return spec


def write_config(path: Path, steps: int) -> None:
    """The demo model on 96x96 shapes: crops of the whole image, no multi-scale."""
    path.write_text(f"base: {REPO / 'configs' / 'seg_tiny_demo.yaml'}\n"
                    "model: {n_cls: 4, image_size: [96, 96]}\n"
                    f"data: {{crop_size: {SIZE}, base_size: [{SIZE}, {SIZE}], ratio_range: [0.75, 1.25]}}\n"
                    f"train: {{iterations: {steps}, checkpoint_every: {steps}, eval_every: 0, batch_size: 8}}\n"
                    f"eval: {{window_size: {SIZE}, window_stride: {SIZE}, infer_size: 0}}\n")


def cli(*args) -> str:
    done = subprocess.run([sys.executable, str(REPO / "cli.py"), *map(str, args)], cwd=REPO, capture_output=True,
                          text=True)
    if done.returncode != 0:
        sys.exit(f"cli.py {' '.join(map(str, args))} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("shapes_out"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--train", type=int, default=96)
    parser.add_argument("--val", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)  # the benchmark's own folder, made below
    root, data, run, config = args.out / "shapes", args.out / "mindrecord", args.out / "run", args.out / "shapes_cfg.yaml"
    times = {}
    start = time.perf_counter()
    spec = write_dataset(root, args.train, args.val, args.seed)
    write_config(config, args.steps)
    times["generate"] = time.perf_counter() - start
    for stage, command in (
            ("build", ("build-mindrecord", "--dataset", spec, "--root", root, "--out", data)),
            ("train", ("train", "--config", config, "--data", data, "--out", run)),
            ("eval", ("eval", "--checkpoint", run / "checkpoints" / f"step_{args.steps:07d}.ckpt", "--data", data,
                      "--split", "val", "--json", args.out / "val.json")),
            ("predict", ("predict", root / "images" / "val", "--checkpoint",
                         run / "checkpoints" / f"step_{args.steps:07d}.ckpt", "--out", args.out / "predict"))):
        t0 = time.perf_counter()
        out = cli(*command)
        times[stage] = time.perf_counter() - t0
        if stage == "eval":
            print(out)
            miou = float(re.search(r"mIoU\s+([0-9.]+)", out).group(1))
    print("seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
    print(f"val mIoU {miou:.2f} after {args.steps} steps (target >= 60)")


if __name__ == "__main__":
    main()

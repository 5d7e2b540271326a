"""Training input pipeline throughput at crop 768 from 1024x2048 shards, side by side.

Contenders, run in alternating rounds in one process on the same cores (the machine is shared,
so only the ratios between contenders measured together mean much):

  ours        pipelines.train_pipeline.train_dataset: MindDataset, C decode, the native
              scale+crop+photometric op, C flip, native pad, uint8 batches (normalization
              runs in the train step's graph, not here).
  port        the approach this project replaces: per-sample Python augmentation in dataset
              threads on the raw PNG files, labelIds mapped to trainIds with a Python dict loop,
              full-image rescale before cropping, float64 labels, unseeded NumPy randomness.
  floor       decode only: MindDataset + vision.Decode of the stored image and label, no
              augmentation (the rate no augmenting pipeline over these shards can beat).
  floor-img   the same, image column only (for reference: what decoding the image alone costs).

Targets: ours >= 3x port and >= 85% of floor.

    .venv/bin/python bench/bench_pipeline.py [--images 12] [--rounds 3] [--samples 24] [--work DIR]
        [--image-format png|jpeg]

Sample data: `cli.py make-sample` at 1024x2048 and `cli.py build-mindrecord` (images stored as
found, PNG, or re-encoded as JPEG with --image-format jpeg) into --work (kept and reused when
given; a temporary folder otherwise).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mindspore.dataset as ds  # noqa: E402
import mindspore.dataset.vision as vision  # noqa: E402

from settings.schema import Config  # noqa: E402
from mindrecords.manifest import split_shard_files  # noqa: E402
from pipelines.train_pipeline import train_dataset  # noqa: E402
from base.labels import label_to_train_lut  # noqa: E402

HEIGHT, WIDTH = 1024, 2048


# --------------------------------------------------------------------------- the earlier port's approach
class SeedCityscapes:
    """Random-access source doing everything per sample in Python, as the earlier port did."""

    def __init__(self, root: Path, cfg: Config):
        self.images = sorted((root / "leftImg8bit" / "train").glob("*/*_leftImg8bit.png"))
        self.labels = [Path(str(p).replace("leftImg8bit", "gtFine").replace("_gtFine.png", "_gtFine_labelIds.png"))
                       for p in self.images]
        lut = label_to_train_lut()
        self.label_mapping = {label_id: int(lut[label_id]) for label_id in range(-1, 34)}
        self.cfg = cfg
        self.mean = np.array(cfg.model.mean)
        self.std = np.array(cfg.model.std)

    def __len__(self):
        return len(self.images)

    def convert_label(self, label):
        temp = label.copy()
        for k, v in self.label_mapping.items():
            label[temp == k] = v
        return label

    @staticmethod
    def convert(img, alpha=1.0, beta=0.0):
        img = img.astype(np.float32) * alpha + beta
        return np.clip(img, 0, 255).astype(np.uint8)

    def photometric(self, img):
        if np.random.randint(2):
            img = self.convert(img, beta=np.random.uniform(-32, 32))
        mode = np.random.randint(2)
        if mode == 1 and np.random.randint(2):
            img = self.convert(img, alpha=np.random.uniform(0.5, 1.5))
        if np.random.randint(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 1] = self.convert(hsv[:, :, 1], alpha=np.random.uniform(0.5, 1.5))
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        if np.random.randint(2):
            hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + np.random.randint(-18, 18)) % 180
            img = cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)
        if mode == 0 and np.random.randint(2):
            img = self.convert(img, alpha=np.random.uniform(0.5, 1.5))
        return img

    def __getitem__(self, index):
        d = self.cfg.data
        crop = d.crop_size
        image = cv2.imread(str(self.images[index]), cv2.IMREAD_COLOR)
        label = self.convert_label(cv2.imread(str(self.labels[index]), cv2.IMREAD_GRAYSCALE))
        ratio = np.random.uniform(*d.ratio_range)
        h, w = image.shape[:2]
        factor = min(d.base_size[0] * ratio / max(h, w), d.base_size[1] * ratio / min(h, w))
        size = (int(w * factor + 0.5), int(h * factor + 0.5))
        image = cv2.resize(image, size, interpolation=cv2.INTER_LINEAR)
        label = cv2.resize(label, size, interpolation=cv2.INTER_NEAREST)
        h, w = label.shape
        for _ in range(d.cat_max_tries):
            top, left = np.random.randint(0, max(h - crop, 0) + 1), np.random.randint(0, max(w - crop, 0) + 1)
            window = label[top:top + crop, left:left + crop]
            values, counts = np.unique(window, return_counts=True)
            counts = counts[values != d.ignore_index]
            if len(counts) > 1 and counts.max() / counts.sum() < d.cat_max_ratio:
                break
        image = image[top:top + crop, left:left + crop]
        label = label[top:top + crop, left:left + crop]
        if np.random.rand() < d.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        image = self.photometric(np.ascontiguousarray(image))
        image = (image[:, :, ::-1].astype(np.float32) - self.mean) / self.std
        pad_h, pad_w = crop - image.shape[0], crop - image.shape[1]
        image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), constant_values=0)
        label = np.pad(label, ((0, pad_h), (0, pad_w)), constant_values=d.ignore_index)
        return image.transpose(2, 0, 1).astype(np.float32), label.astype(np.float64)


def port_dataset(root: Path, cfg: Config, workers: int):
    source = SeedCityscapes(root, cfg)
    data = ds.GeneratorDataset(source, ["image", "label"], shuffle=True, num_parallel_workers=workers,
                               python_multiprocessing=False)
    return data.batch(cfg.train.batch_size, drop_remainder=True)


# --------------------------------------------------------------------------- the decode-only floor
def floor_dataset(out: Path, cfg: Config, workers: int, columns=("image", "label")):
    data = ds.MindDataset(split_shard_files(out, "train"), columns_list=list(columns), shuffle=True,
                          num_parallel_workers=workers)
    for column in columns:
        data = data.map(vision.Decode(), input_columns=[column], num_parallel_workers=workers)
    return data.batch(cfg.train.batch_size, drop_remainder=True)


# --------------------------------------------------------------------------- measuring
def rate(make, samples: int) -> tuple[float, float]:
    """(samples/s, process CPU ms per sample) after the first batch (start-up is not throughput).

    CPU time counts every thread of this process; on a shared machine it moves less than
    wall-clock rates when other jobs take cores away.
    """
    data = make().repeat()
    it = data.create_tuple_iterator(output_numpy=True, num_epochs=1)
    next(it)
    seen, start, cpu = 0, time.perf_counter(), time.process_time()
    for batch in it:
        seen += len(batch[0])
        if seen >= samples:
            break
    return seen / (time.perf_counter() - start), 1000 * (time.process_time() - cpu) / seen


def prepare(work: Path, images: int, image_format: str) -> tuple[Path, Path]:
    root, out = work / "cityscapes", work / f"mindrecord-{image_format}"
    py = sys.executable
    if not (root / "leftImg8bit" / "train").is_dir():
        subprocess.run([py, str(ROOT / "cli.py"), "make-sample", "--out", str(root), "--train", str(images),
                        "--val", "1", "--height", str(HEIGHT), "--width", str(WIDTH), "--seed", "0"], check=True)
    subprocess.run([py, str(ROOT / "cli.py"), "build-mindrecord", "--root", str(root), "--out", str(out),
                    "--splits", "train", "--image-format", image_format], check=True)
    return root, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12, help="1024x2048 training images to generate")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    parser.add_argument("--samples", type=int, default=24, help="samples timed per contender per round")
    parser.add_argument("--workers", type=int, default=2, help="dataset worker threads (data.num_parallel_workers)")
    parser.add_argument("--work", type=Path, help="folder for the generated data (kept; default: temporary)")
    parser.add_argument("--image-format", choices=("png", "jpeg"), default="png",
                        help="how build-mindrecord stores the images (the earlier port always reads the raw PNG files)")
    args = parser.parse_args()

    cfg = Config()  # the paper's recipe: crop 768, base (2048, 1024), ratio 0.5-2.0, cat_max_ratio 0.75
    cfg.train.batch_size = 2
    cfg.data.num_parallel_workers = args.workers
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        root, out = prepare(work, args.images, args.image_format)
        contenders = {
            "ours": lambda: train_dataset(cfg, out),
            "port": lambda: port_dataset(root, cfg, args.workers),
            "floor": lambda: floor_dataset(out, cfg, args.workers),
            "floor-img": lambda: floor_dataset(out, cfg, args.workers, columns=("image",)),
        }
        rates = {name: [] for name in contenders}
        cpu = {name: [] for name in contenders}
        for r in range(args.rounds):
            for name, make in contenders.items():
                value, ms = rate(make, args.samples)
                rates[name].append(value)
                cpu[name].append(ms)
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {v[-1]:.2f}/s" for n, v in rates.items()),
                  flush=True)
    def ratio(a, b):  # per round (contenders measured back to back), then the median over rounds
        return statistics.median(x / y for x, y in zip(rates[a], rates[b]))

    print(f"\nmedian of {args.rounds} rounds, {args.samples} samples each, batch {cfg.train.batch_size}, "
          f"crop {cfg.data.crop_size}, {args.workers} workers, {args.images} images {HEIGHT}x{WIDTH}, "
          f"shards store {args.image_format.upper()}:")
    for name in contenders:
        print(f"  {name:10s} {statistics.median(rates[name]):7.2f} samples/s   "
              f"{statistics.median(cpu[name]):6.1f} CPU ms/sample")
    vs_port, vs_floor = ratio("ours", "port"), ratio("ours", "floor")
    print(f"ours / port      = {vs_port:.2f}x   (target >= 3x: {'met' if vs_port >= 3 else 'NOT met'})")
    print(f"ours / floor     = {100 * vs_floor:.0f}%   (target >= 85%: {'met' if vs_floor >= 0.85 else 'NOT met'})")
    print(f"ours / floor-img = {100 * ratio('ours', 'floor-img'):.0f}%")
    cpu_med = {name: statistics.median(v) for name, v in cpu.items()}
    print(f"CPU per sample: port / ours = {cpu_med['port'] / cpu_med['ours']:.2f}x, "
          f"floor / ours = {100 * cpu_med['floor'] / cpu_med['ours']:.0f}%")


if __name__ == "__main__":
    main()

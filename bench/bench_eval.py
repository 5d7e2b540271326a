"""Evaluation throughput at 1024x2048 (window 768, stride 512: 8 windows per image), side by side.

Contenders, run in one process on the same images, model and cores (the machine is shared, so
the ratio between contenders measured together is what means most):

  ours   evaluate.evaluator.evaluate_split: shards streamed with C decode/normalize, the project's
         sliding_window_predict (float32 merge in row bands, argmax per band: ours' argmax time
         is part of its merge), bincount confusion matrix.
  port   the earlier port's merge: the same windows and batches, but every window's logits
         copied into a float64 numpy canvas per image, float64 softmax, argmax, same metric.

Reported per image: model forward time, merge (everything in the sliding window that is not the
model), input wait, argmax, metric accumulation, and each part's share of the total. A second
pass replays the recorded model outputs so everything but the model is compared without the
model's run-to-run noise.
Target: metric accumulation under 5 % of the total.

    .venv/bin/python bench/bench_eval.py [--images 3] [--config configs/seg_tiny_mask.yaml]
        [--batch-windows 2] [--work DIR]

Sample data: `cli.py make-sample` at 1024x2048 and `cli.py build-mindrecord` into --work (kept and
reused when given; a temporary folder otherwise). The model is randomly initialised (seeded):
speed does not depend on the weights.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import mindspore as ms  # noqa: E402

from settings.files import apply_overrides, load_config  # noqa: E402

from settings.schema import Config  # noqa: E402
from evaluate.evaluator import evaluate_split  # noqa: E402
from evaluate.metrics import ConfusionMatrix  # noqa: E402
from evaluate.sliding_window import window_anchors  # noqa: E402
from pipelines.eval_pipeline import eval_dataset  # noqa: E402
from base.device import setup_context  # noqa: E402
from model.segmenter import build_segmenter  # noqa: E402

HEIGHT, WIDTH = 1024, 2048
WINDOW_BATCHES = 4  # set from --batch-windows in main(): batches per image (8 windows)


class _Out:
    def __init__(self, array):
        self.array = array

    def asnumpy(self):
        return self.array


class TimedNet:
    """Wraps the network so the forward passes (to host memory) are timed apart from the merge."""

    def __init__(self, net):
        self.net = net
        self.seconds = 0.0
        self.recorded: list = []  # the first image's outputs, kept for ReplayNet

    def __call__(self, x):
        t0 = time.perf_counter()
        out = self.net(x).asnumpy()
        self.seconds += time.perf_counter() - t0
        if len(self.recorded) < WINDOW_BATCHES:
            self.recorded.append(out)
        return _Out(out)

    @property
    def training(self):
        return self.net.training

    def set_train(self, mode=True):
        self.net.set_train(mode)


class ReplayNet(TimedNet):
    """Returns recorded model outputs instantly (in call order, cyclically): running both contenders
    on it measures everything but the model, free of the model's noise on a shared machine."""

    def __init__(self, net: TimedNet):
        super().__init__(net.net)
        self.outputs = net.recorded
        self.calls = 0

    def __call__(self, x):
        out = self.outputs[self.calls % len(self.outputs)]
        self.calls += 1
        return _Out(out)


def make_data(work: Path, images: int) -> Path:
    root, out = work / "cityscapes", work / "mindrecord"
    py = sys.executable
    if not (out / "val" / "manifest.parquet").is_file():
        subprocess.run([py, str(ROOT / "cli.py"), "make-sample", "--out", str(root), "--train", "1",
                        "--val", str(images), "--height", str(HEIGHT), "--width", str(WIDTH), "--seed", "0"],
                       check=True)
        subprocess.run([py, str(ROOT / "cli.py"), "build-mindrecord", "--root", str(root), "--out", str(out),
                        "--splits", "val"], check=True)
    return out


def run_ours(net: TimedNet, cfg: Config, data: Path, images: int) -> dict:
    timings: dict = {}
    net.seconds = 0.0
    result = evaluate_split(net, cfg, data, "val", max_images=images, timings=timings, show_progress=False)
    total = result["seconds"]
    return {"images": result["images"], "total": total, "model": net.seconds,
            "merge": timings["inference"] - net.seconds, "input": timings["input"],
            "argmax": timings["argmax"], "metric": timings["metric"]}


def port_probs(net: TimedNet, image: np.ndarray, n_cls: int, window: int, stride: int, batch: int) -> np.ndarray:
    """The earlier port's merge: float64 canvases, window logits added one by one, float64 softmax."""
    _, h, w = image.shape
    canvas = np.zeros((n_cls, h, w), dtype=np.float64)
    count = np.zeros((h, w), dtype=np.float64)
    anchors = [(a, b) for a in window_anchors(h, window, stride) for b in window_anchors(w, window, stride)]
    for i in range(0, len(anchors), batch):
        chunk = anchors[i:i + batch]
        crops = np.stack([image[:, a:a + window, b:b + window] for a, b in chunk])
        out = net(ms.Tensor(crops)).asnumpy()
        for seg, (a, b) in zip(out, chunk):
            canvas[:, a:a + window, b:b + window] += seg.astype(np.float64)
            count[a:a + window, b:b + window] += 1.0
    canvas /= count
    canvas = np.exp(canvas - canvas.max(axis=0, keepdims=True))
    return canvas / canvas.sum(axis=0, keepdims=True)


def run_port(net: TimedNet, cfg: Config, data: Path, images: int) -> dict:
    e = cfg.eval
    cm = ConfusionMatrix()
    spent = dict.fromkeys(("input", "inference", "argmax", "metric"), 0.0)
    net.seconds = 0.0
    start = time.perf_counter()
    rows = eval_dataset(cfg, data, "val").take(images).create_dict_iterator(num_epochs=1, output_numpy=True)
    done = 0
    while True:
        t0 = time.perf_counter()
        row = next(rows, None)
        if row is None:
            break
        t1 = time.perf_counter()
        probs = port_probs(net, row["image"], cfg.model.n_cls, e.window_size, e.window_stride, e.batch_windows)
        t2 = time.perf_counter()
        pred = np.argmax(probs, axis=0).astype(np.uint8)
        t3 = time.perf_counter()
        cm.update(row["label"], pred)
        t4 = time.perf_counter()
        for key, dt in zip(spent, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
            spent[key] += dt
        done += 1
    total = time.perf_counter() - start
    return {"images": done, "total": total, "model": net.seconds, "merge": spent["inference"] - net.seconds,
            "input": spent["input"], "argmax": spent["argmax"], "metric": spent["metric"]}


def report(name: str, r: dict) -> str:
    n = max(r["images"], 1)
    parts = ("model", "merge", "input", "argmax", "metric")
    other = r["total"] - sum(r[p] for p in parts)
    cells = " ".join(f"{r[p] / n:7.3f}s {100 * r[p] / r['total']:5.1f}%" for p in parts)
    return (f"{name:<5} {n / r['total']:7.3f} img/s  {r['total'] / n:7.2f} s/img | {cells} | "
            f"other {100 * other / r['total']:4.1f}%")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=3)
    ap.add_argument("--config", default=str(ROOT / "configs" / "seg_tiny_mask.yaml"))
    ap.add_argument("--batch-windows", type=int, default=2)
    ap.add_argument("--work", help="keep the generated data here and reuse it")
    args = ap.parse_args()

    cfg = load_config(args.config) if Path(args.config).is_file() else Config()
    cfg = apply_overrides(cfg, ["eval.window_size=768", "eval.window_stride=512", "eval.infer_size=1024",
                                f"eval.batch_windows={args.batch_windows}", "eval.flip=false", "eval.scales=[1.0]"],
                          "bench")
    tmp = None if args.work else tempfile.TemporaryDirectory(prefix="bench_eval_")
    work = Path(args.work or tmp.name)
    data = make_data(work, args.images)

    setup_context(cfg.device_target, cfg.mode, cfg.seed)
    net = TimedNet(build_segmenter(cfg.model))
    net.set_train(False)
    # Compile / warm up both batch shapes the contenders use, outside the timed runs.
    for b in {args.batch_windows, 8 % args.batch_windows or args.batch_windows}:
        net(ms.Tensor(np.zeros((b, 3, 768, 768), np.float32)))
    net.recorded.clear()

    global WINDOW_BATCHES
    WINDOW_BATCHES = -(-8 // args.batch_windows)
    print(f"eval bench: {args.images} images {HEIGHT}x{WIDTH}, {cfg.model.backbone} d={cfg.model.d_model} "
          f"L={cfg.model.n_layers}, window 768 stride 512 (8 windows), batch {args.batch_windows}, "
          f"mode {cfg.mode}, device {cfg.device_target}")
    # One untimed image through each contender first: first-run costs are nobody's merit.
    run_ours(net, cfg, data, 1)
    run_port(net, cfg, data, 1)
    net.recorded.clear()
    ours = run_ours(net, cfg, data, args.images)
    port = run_port(net, cfg, data, args.images)
    replay = ReplayNet(net)
    ours_replay = run_ours(replay, cfg, data, args.images)
    replay.calls = 0
    port_replay = run_port(replay, cfg, data, args.images)
    print("                rate     per image | per image and share of total: "
          "model, merge, input wait, argmax, metric")
    print(report("ours", ours))
    print(report("port", port))
    print("without the model (recorded outputs replayed):")
    print(report("ours", ours_replay))
    print(report("port", port_replay))
    ratio = (ours["images"] / ours["total"]) / (port["images"] / port["total"])
    post = (port_replay["total"] / port_replay["images"]) / (ours_replay["total"] / ours_replay["images"])
    metric_share = ours["metric"] / ours["total"]
    print(f"ours/port throughput with the model: {ratio:.2f}x; everything but the model, port/ours time: {post:.2f}x")
    print(f"metric accumulation: {100 * metric_share:.2f}% of the total "
          f"({'OK' if metric_share < 0.05 else 'FAIL'}: target < 5%)")
    if tmp is not None:
        tmp.cleanup()
    return 0 if metric_share < 0.05 else 1


if __name__ == "__main__":
    sys.exit(main())

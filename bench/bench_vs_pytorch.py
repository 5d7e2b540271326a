"""Side by side with PyTorch on this CPU: the same Segmenter in MindSpore (ours) and in PyTorch.

    make bench    # once: torch, onnx, onnxruntime into .venv (requirements-bench.txt)
    .venv/bin/python bench/bench_vs_pytorch.py [--rounds 3] [--tasks forward_tiny,...] [--threads N]

Tasks (random weights, the same architecture, width, depth, heads and token count on both sides):
  forward_tiny, forward_small  one forward of seg_{tiny,small}_mask on 1x3x768x768
  sliding_tiny                 sliding window over a 3x1024x2048 image, window 768 stride 512
                               (8 windows, batches of 4), merged softmax probabilities
  train_tiny                   one train step of seg_tiny_mask on 2x768x768 (ours: the per_block
                               step of bench/bench_train.py, with loss scaling and clipping; PyTorch:
                               SGD momentum 0.9 on cross-entropy with ignore index 255); time and
                               peak RSS of the process
  onnx_tiny                    the forward at 768 on ONNX Runtime: our export (deploy/onnx_export.py)
                               against torch.onnx.export of the PyTorch model (opset 17)
The PyTorch model is bench/torch_segmenter.py (the official blocks' math, eager mode).

Every measurement runs in its own process (so peak RSS is its own) and the contenders alternate
in each round (ours first in even rounds, PyTorch first in odd ones); a round's figure is the
median of `--repeats` calls after one warm-up call (which also compiles). Printed per task: the
median over rounds of each side's seconds and of the ratio PyTorch time / our time (> 1: we are
faster), and peak RSS. PyTorch and ONNX Runtime use `--threads` compute threads (default: one
per core, their best here); MindSpore keeps its default kernel thread pool unless
`--ms-threads` is given (one per core measured no faster, base/device.py).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import _peak_gib  # noqa: E402  (bench/ is on the path)

TASKS = ("forward_tiny", "forward_small", "sliding_tiny", "train_tiny", "onnx_tiny")


def _timed(call, repeats: int) -> float:
    call()  # warm-up (graph compilation, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _ours(task: str, repeats: int, threads: int, ms_threads: int | None) -> float:
    import numpy as np
    import mindspore as ms

    from base.device import setup_context
    from evaluate.sliding_window import sliding_window_probs
    from model.segmenter import build_segmenter
    from settings.files import load_config

    setup_context("CPU", "graph", 0, threads=ms_threads)
    variant = "small" if task == "forward_small" else "tiny"
    net = build_segmenter(load_config(ROOT / "configs" / f"seg_{variant}_mask.yaml").model)
    net.set_train(False)
    rng = np.random.RandomState(0)
    if task == "sliding_tiny":
        image = rng.randn(3, 1024, 2048).astype(np.float32)
        return _timed(lambda: sliding_window_probs(net, image, 19, 768, 512, batch_windows=4), repeats)
    x = rng.randn(1, 3, 768, 768).astype(np.float32)
    if task == "onnx_tiny":
        from deploy.onnx_runtime import onnx_runner

        runner = onnx_runner(net, 768, threads)
        return _timed(lambda: runner(x), repeats)
    tensor = ms.Tensor(x)
    return _timed(lambda: net(tensor).asnumpy(), repeats)


def _pytorch(task: str, repeats: int, threads: int, ms_threads: int | None) -> float:
    import io

    import numpy as np
    import torch

    import torch_segmenter

    torch.set_num_threads(threads)
    variant = "small" if task == "forward_small" else "tiny"
    net = torch_segmenter.build(variant)
    rng = np.random.RandomState(0)
    if task == "train_tiny":
        net.train()
        step = torch_segmenter.train_step_fn(net)
        image = torch.from_numpy(rng.randn(2, 3, 768, 768).astype(np.float32))
        label = torch.from_numpy(rng.randint(0, 19, size=(2, 768, 768)).astype(np.int64))
        label[:, :8] = 255
        return _timed(lambda: step(image, label), repeats)
    net.eval()
    if task == "sliding_tiny":
        image = torch.from_numpy(rng.randn(3, 1024, 2048).astype(np.float32))
        return _timed(lambda: torch_segmenter.sliding_window(net, image, 768, 512, 4).numpy(), repeats)
    x = torch.from_numpy(rng.randn(1, 3, 768, 768).astype(np.float32))
    if task == "onnx_tiny":
        from deploy.onnx_runtime import OnnxRunner

        buf = io.BytesIO()
        torch.onnx.export(net, (x,), buf, opset_version=17, input_names=["image"], output_names=["logits"],
                          dynamic_axes={"image": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
        runner = OnnxRunner(buf.getvalue(), threads)
        xn = x.numpy()
        return _timed(lambda: runner(xn), repeats)
    with torch.no_grad():
        return _timed(lambda: net(x), repeats)


def _child_cmd(task: str, side: str, args) -> list:
    ms_threads = [str(args.ms_threads)] if args.ms_threads else []
    if task == "train_tiny" and side == "ours":  # the per_block step as bench_train measures it
        return [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--variant", "per_block", "--batch", "2",
                "--crop", "768", "--steps", str(args.repeats)] + (["--threads"] + ms_threads if ms_threads else [])
    ms_threads = ["--ms-threads"] + ms_threads if ms_threads else []
    return [sys.executable, __file__, "--child", task, side, "--repeats", str(args.repeats),
            "--threads", str(args.threads)] + ms_threads


def _measure(task: str, side: str, args) -> dict:
    proc = subprocess.run(_child_cmd(task, side, args), capture_output=True, text=True)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SystemExit(f"error: {task} ({side}) failed: {tail}")
    row = json.loads(lines[-1])
    return {"seconds": row.get("seconds", row.get("step_s")), "peak_rss_gib": row["peak_rss_gib"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ms-threads", type=int, default=None, help="MindSpore CPU kernel threads")
    parser.add_argument("--child", nargs=2, metavar=("TASK", "SIDE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        task, side = args.child
        fn = _ours if side == "ours" else _pytorch
        seconds = fn(task, args.repeats, args.threads, args.ms_threads)
        print(json.dumps({"seconds": seconds, "peak_rss_gib": _peak_gib()}), flush=True)
        return
    tasks = args.tasks.split(",")
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise SystemExit(f"error: --tasks: unknown {unknown}; choose from {','.join(TASKS)}")
    results = {t: {"ours": [], "pytorch": []} for t in tasks}
    for r in range(args.rounds):
        for task in tasks:
            for side in (("ours", "pytorch") if r % 2 == 0 else ("pytorch", "ours")):
                row = _measure(task, side, args)
                results[task][side].append(row)
                print(json.dumps({"round": r, "task": task, "side": side, **row}), flush=True)
    import mindspore
    import torch

    print(f"\nMindSpore {mindspore.__version__} GRAPH_MODE vs torch {torch.__version__} eager, {args.threads} threads (MindSpore: {args.ms_threads or 'its default'}), "
          f"{os.cpu_count()} cores; median of {args.rounds} alternating rounds x {args.repeats} calls")
    print("| task | ours s | PyTorch s | PyTorch / ours (speed ratio) | ours peak RSS GiB | PyTorch peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for task in tasks:
        ours, theirs = results[task]["ours"], results[task]["pytorch"]
        ratio = statistics.median(t["seconds"] / o["seconds"] for o, t in zip(ours, theirs))
        print(f"| {task} | {statistics.median(o['seconds'] for o in ours):.3f} | "
              f"{statistics.median(t['seconds'] for t in theirs):.3f} | {ratio:.2f}x | "
              f"{max(o['peak_rss_gib'] for o in ours):.2f} | {max(t['peak_rss_gib'] for t in theirs):.2f} |")


if __name__ == "__main__":
    main()

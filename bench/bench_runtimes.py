"""One window forward through each runtime `predict`/`eval` offer, on the same random weights.

    .venv/bin/python bench/bench_runtimes.py --config configs/seg_tiny_mask.yaml [--window 768]
        [--threads 2] [--rounds 5] [--repeats 3]

Runtimes: MindSpore (the network itself), ONNX Runtime and OpenVINO f32 / bf16 on the ONNX export
(`deploy.onnx_runtime.onnx_runner`, `deploy.openvino_runtime.openvino_runner`, as `--runtime`
builds them). The model is the config's, 19 classes, weights from its seed; the input one random
1x3xWINxWIN window. Every runtime uses `--threads` (MindSpore's CPU kernel pool included). In each
round the runtimes alternate (order rotated per round), each timed as the median of `--repeats`
calls after one warm-up call; printed: per runtime the median over rounds, the median over rounds
of its speed against MindSpore in that round (robust to a shared machine's load drifting between
rounds), and its largest probability difference and argmax agreement against MindSpore.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _probs(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--window", type=int, help="window side [eval.window_size]")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import mindspore as ms

    from base.device import setup_context
    from deploy.onnx_runtime import onnx_runner
    from deploy.openvino_runtime import openvino_runner
    from model.segmenter import build_segmenter
    from settings.files import load_config

    cfg = load_config(args.config)
    cfg.model.n_cls = cfg.model.n_cls or 19
    window = args.window or cfg.eval.window_size
    setup_context("CPU", "graph", cfg.seed, threads=args.threads)
    net = build_segmenter(cfg.model)
    net.set_train(False)
    runners = {"mindspore": lambda x: net(ms.Tensor(x)).asnumpy(),
               "onnxruntime": onnx_runner(net, window, args.threads),
               "openvino f32": openvino_runner(net, window, "f32", args.threads),
               "openvino bf16": openvino_runner(net, window, "bf16", args.threads)}
    x = np.random.RandomState(0).randn(1, 3, window, window).astype(np.float32)
    outputs = {name: run(x) for name, run in runners.items()}  # the warm-up call (MindSpore compiles)
    seconds = {name: [] for name in runners}
    names = list(runners)
    for r in range(args.rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            calls = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                runners[name](x)
                calls.append(time.perf_counter() - start)
            seconds[name].append(statistics.median(calls))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {seconds[n][-1]:.3f}s" for n in names), flush=True)
    print(f"{args.config}: window {window}, {args.threads} threads, median of {args.rounds} rounds x "
          f"{args.repeats} calls")
    for name in names:
        med = statistics.median(seconds[name])
        speed = statistics.median(m / s for m, s in zip(seconds["mindspore"], seconds[name]))
        diff = np.abs(_probs(outputs[name]) - _probs(outputs["mindspore"])).max()
        agree = np.mean(outputs[name].argmax(1) == outputs["mindspore"].argmax(1))
        print(f"  {name:14s} {med:7.3f} s  {speed:5.2f}x MindSpore  max prob diff {diff:.1e}  "
              f"argmax agreement {100 * agree:.2f}%")


if __name__ == "__main__":
    main()

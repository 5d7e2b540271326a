"""Train-step time and peak memory: seg_tiny, batch 2 x 768x768, GRAPH_MODE on CPU.

Compares, each in its own process (so peak RSS is per variant):
  per_block train.block_step.PerBlockTrainStep (`train.step_graph: per_block`, what `auto` picks on CPU):
            one template block's forward and recompute+vjp graphs shared by all blocks, GRAPH_MODE
  whole     train.whole_step.TrainStep, one forward+backward graph (`train.step_graph: whole`), GRAPH_MODE
  recompute the whole graph with MindSpore's recompute of every encoder block (`train.recompute: true`)
  pynative  the per-block step in PyNative mode (config `mode: pynative`)
  plain     the step written plainly: nn.WithLossCell + nn.TrainOneStepCell (no loss scale, no
            clip), loss as one composed expression (one-hot * log_softmax), GRAPH_MODE
Every variant but `plain` has loss scaling and global-norm clipping.
A watchdog kills a variant whose RSS passes --max-rss-gib (this machine is shared).

    .venv/bin/python bench/bench_train.py [--batch 2 --crop 768 --steps 3 --set key=value ...]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _peak_gib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    return 0.0


def _watchdog(limit_gib: float) -> None:
    def watch():
        while True:
            if _rss_gib() > limit_gib:
                print(json.dumps({"error": f"RSS above {limit_gib} GiB, killed"}), flush=True)
                os._exit(3)
            time.sleep(0.05)

    threading.Thread(target=watch, daemon=True).start()


def run_variant(args) -> dict:
    _watchdog(args.max_rss_gib)
    import numpy as np
    import mindspore as ms
    from mindspore import nn, ops

    from settings.files import apply_overrides

    from settings.schema import Config
    from base.device import setup_context
    from model.segmenter import build_segmenter
    from train.loss import SegCrossEntropy
    from train.optim import build_optimizer
    from train.loss_scale import build_loss_scaler
    from train.precision import apply_amp
    from train.step import TrainStepFn, lr_tensor

    step_graph = "whole" if args.variant in ("whole", "recompute") else "per_block"
    cfg = apply_overrides(Config(), [f"data.crop_size={args.crop}", f"train.batch_size={args.batch}",
                                     f"train.step_graph={step_graph}",
                                     f"train.recompute={str(args.variant == 'recompute').lower()}"] + list(args.set))
    setup_context("CPU", "pynative" if args.variant == "pynative" else "graph", 0, threads=args.threads)
    net = build_segmenter(cfg.model)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(args.batch, args.crop, args.crop, 3)).astype(np.uint8)
    image_u8 = ms.Tensor(pixels)  # a pipeline batch: uint8 HWC, normalized in the step's graph
    valid = ms.Tensor(np.full((args.batch, 2), args.crop, np.int32))
    image = ms.Tensor(((pixels - 127.5) / 127.5).transpose(0, 3, 1, 2).astype(np.float32))  # plain: normalized
    label_np = rng.integers(0, cfg.model.n_cls, size=(args.batch, args.crop, args.crop)).astype(np.int32)
    label_np[:, :8] = 255
    label = ms.Tensor(label_np)
    if args.variant != "plain":
        net = apply_amp(net, cfg.train.amp_level)
        opt = build_optimizer(net, cfg.train.optimizer)
        step = TrainStepFn(cfg, net, SegCrossEntropy(255), opt, build_loss_scaler(cfg.train))
        lr = lr_tensor(cfg.train.optimizer.lr)
        # --set train.accumulate=K: the same --batch samples per update, as K micro-batches.
        k = cfg.train.accumulate
        micro = args.batch // k
        batches = [(image_u8[i * micro:(i + 1) * micro], label[i * micro:(i + 1) * micro],
                    valid[i * micro:(i + 1) * micro]) for i in range(k)]
        call = lambda: step(batches, lr, 0)[0]  # noqa: E731
    else:
        class PlainCE(nn.Cell):
            def construct(self, logits, lbl):
                valid = (lbl != 255).astype(ms.float32)
                onehot = ops.one_hot(ops.where(lbl != 255, lbl, 0), logits.shape[1], 1.0, 0.0, axis=1)
                nll = -(onehot * ops.log_softmax(logits, axis=1)).sum(1)
                return (nll * valid).sum() / valid.sum()

        opt = nn.SGD(net.trainable_params(), learning_rate=cfg.train.optimizer.lr,
                     momentum=cfg.train.optimizer.momentum)
        step = nn.TrainOneStepCell(nn.WithLossCell(net, PlainCE()), opt)
        step.set_train()
        call = lambda: step(image, label)  # noqa: E731
    t0 = time.perf_counter()
    float(call().asnumpy())
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        float(call().asnumpy())
        times.append(time.perf_counter() - t0)
    return {"variant": args.variant, "first_step_s": compile_s, "step_s": float(np.median(times)),
            "peak_rss_gib": _peak_gib()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--crop", type=int, default=768)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--max-rss-gib", type=float, default=12.0)
    parser.add_argument("--variants", default="per_block,whole,pynative,plain")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--threads", type=int, default=None, help="CPU kernel threads (default: MindSpore's)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)), flush=True)
        return
    rows = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--variant", variant, "--batch", str(args.batch), "--crop", str(args.crop),
               "--steps", str(args.steps), "--max-rss-gib", str(args.max_rss_gib)]
        for item in args.set:
            cmd += ["--set", item]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
        row = json.loads(lines[-1]) if lines else {"error": proc.stderr.strip().splitlines()[-1:]}
        row.setdefault("variant", variant)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(f"\nseg_tiny train step, batch {args.batch} x {args.crop}x{args.crop}, CPU "
          f"({os.cpu_count()} cores)")
    print(f"{'variant':<10} {'step s':>8} {'first step s':>13} {'peak RSS GiB':>13}")
    for r in rows:
        if "error" in r:
            print(f"{r['variant']:<10} error: {r['error']}")
        else:
            print(f"{r['variant']:<10} {r['step_s']:>8.2f} {r['first_step_s']:>13.1f} {r['peak_rss_gib']:>13.2f}")
    base = next((r for r in rows if r["variant"] == "per_block" and "error" not in r), None)
    for r in rows:
        if base is not None and r is not base and "error" not in r:
            print(f"per_block vs {r['variant']}: time x{base['step_s'] / r['step_s']:.2f}, "
                  f"peak memory x{base['peak_rss_gib'] / r['peak_rss_gib']:.2f}")

if __name__ == "__main__":
    main()

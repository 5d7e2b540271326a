"""Model benchmarks: forward time + peak memory, and sliding-window throughput, each with a baseline.

    .venv/bin/python bench/bench_model.py [--variants tiny,small] [--repeats 3] [--images 1] [--rounds 2]

1. Forward of seg_{variant}_mask at 1x3x768x768 on CPU: GRAPH_MODE vs PyNative (baseline).
2. Sliding-window prediction of a 1024x2048 image (window 768, stride 512 -> 8 windows) with
   seg_tiny_mask in GRAPH_MODE: windows batched by 4 vs one window per forward (baseline),
   in alternating rounds.
Every measurement runs in a fresh process so its peak RSS is its own (the RSS before the first
forward, i.e. imports + weights, is reported too).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def child(args) -> dict:
    import numpy as np
    import mindspore as ms

    from settings.files import load_config
    from evaluate.sliding_window import sliding_window_probs
    from base.device import setup_context
    from model.segmenter import build_segmenter

    setup_context("CPU", args.mode, 0)
    cfg = load_config(ROOT / "configs" / f"seg_{args.variant}_mask.yaml")
    net = build_segmenter(cfg.model)
    net.set_train(False)
    rng = np.random.RandomState(0)
    before = _rss_gib()
    times = []
    if args.task == "forward":
        x = ms.Tensor(rng.randn(1, 3, 768, 768).astype(np.float32))
        t = time.perf_counter()
        net(x).asnumpy()
        first = time.perf_counter() - t  # includes graph compilation in GRAPH_MODE
        for _ in range(args.repeats):
            t = time.perf_counter()
            net(x).asnumpy()
            times.append(time.perf_counter() - t)
    else:
        image = rng.randn(3, 1024, 2048).astype(np.float32)
        t = time.perf_counter()
        sliding_window_probs(net, image, cfg.model.n_cls, 768, 512, batch_windows=args.batch_windows)
        first = time.perf_counter() - t
        for _ in range(args.images):
            t = time.perf_counter()
            sliding_window_probs(net, image, cfg.model.n_cls, 768, 512, batch_windows=args.batch_windows)
            times.append(time.perf_counter() - t)
    return {"first_s": first, "median_s": statistics.median(times), "rss_before_gib": before,
            "peak_rss_gib": _rss_gib()}


def run_child(**kw) -> dict:
    cmd = [sys.executable, __file__, "--child"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "GLOG_v": "3"})
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed: {' '.join(cmd)}\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", default="tiny,small")
    ap.add_argument("--skip-forward", action="store_true", help="only the sliding-window part")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2, help="sliding-window rounds (0 skips that part)")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--task", default="forward", help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="graph", help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="tiny", help=argparse.SUPPRESS)
    ap.add_argument("--batch-windows", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return

    print("forward 1x3x768x768, CPU (median of %d after a warm-up run)" % args.repeats)
    print(f"{'variant':8} {'mode':9} {'first (s)':>9} {'median (s)':>10} {'RSS before':>10} {'peak RSS':>9}")
    for variant in ([] if args.skip_forward else args.variants.split(",")):
        res = {}
        for mode in ("pynative", "graph"):
            r = res[mode] = run_child(task="forward", mode=mode, variant=variant, repeats=args.repeats)
            print(f"{variant:8} {mode:9} {r['first_s']:9.2f} {r['median_s']:10.3f} {r['rss_before_gib']:9.2f}G "
                  f"{r['peak_rss_gib']:8.2f}G")
        print(f"{variant:8} graph vs pynative: {res['pynative']['median_s'] / res['graph']['median_s']:.2f}x faster, "
              f"peak RSS {res['graph']['peak_rss_gib'] / res['pynative']['peak_rss_gib']:.2f}x")

    if args.rounds <= 0:
        return
    print(f"\nsliding window 1024x2048, window 768 stride 512 (8 windows), seg_tiny_mask, GRAPH_MODE; "
          f"{args.rounds} alternating rounds, each a fresh process timing {args.images} image(s) after a warm-up image")
    runs = {1: [], 4: []}
    for _ in range(args.rounds):
        for bw in (1, 4):  # alternate so load from other processes hits both alike
            runs[bw].append(run_child(task="sliding", mode="graph", variant="tiny", images=args.images,
                                      batch_windows=bw))
    med = {bw: statistics.median(r["median_s"] for r in rs) for bw, rs in runs.items()}
    for bw, rs in runs.items():
        print(f"batch_windows {bw}: {1 / med[bw]:.4f} images/s ({med[bw]:.1f} s/image; rounds "
              f"{', '.join('%.1f' % r['median_s'] for r in rs)} s), peak RSS {max(r['peak_rss_gib'] for r in rs):.2f}G")
    print(f"batched (4) vs unbatched (1): {med[1] / med[4]:.2f}x images/s")

if __name__ == "__main__":
    main()

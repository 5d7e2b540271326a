"""Peak memory of `cli.py predict` on one large image, against another checkout side by side.

Each contender runs `cli.py predict` in its own process on the same generated image and the same
randomly initialised (seeded) model; its peak resident memory is the kernel's VmHWM, read in the
process itself when the command returns (ru_maxrss would include the forking parent's peak).
Rounds alternate between the contenders, so the machine's load affects both alike.

    .venv/bin/python bench/bench_predict_memory.py [--size 8000] [--config configs/seg_tiny_mask.yaml]
        [--infer-size 1024] [--save-probs] [--baseline DIR] [--rounds 1] [--work DIR]

`--baseline DIR`: a checkout of an earlier version (e.g. `git worktree add /tmp/old <commit>`),
run with this checkout's Python. Without it only this checkout is measured.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CHILD = """
import json, sys, time
sys.path.insert(0, {repo!r})
sys.argv = ["cli.py"] + {args!r}
import cli
start = time.perf_counter()
try:
    cli.main(standalone_mode=False)
    ok = True
except SystemExit as err:
    ok = not err.code
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({{"ok": ok, "peak_mib": hwm / 1024, "seconds": time.perf_counter() - start}}))
"""


def prepare(work: Path, size: int, config: str) -> tuple[Path, Path]:
    image, ckpt = work / f"large_{size}.png", work / "model.ckpt"
    if not image.exists():
        import numpy as np
        from PIL import Image

        yy, xx = np.mgrid[0:size, 0:size]
        rgb = np.stack([xx * 255 // size, yy * 255 // size, (xx // 7 + yy // 5) % 256], -1).astype(np.uint8)
        Image.fromarray(rgb).save(image)
    if not ckpt.exists():
        sys.path.insert(0, str(REPO))
        from settings.files import load_config
        from weights.checkpoint import save_model
        from base.device import setup_context
        from model.segmenter import build_segmenter

        cfg = load_config(config)
        setup_context("CPU", "graph", cfg.seed)
        save_model(build_segmenter(cfg.model), ckpt, cfg)
    return image, ckpt


def measure(repo: Path, args: list) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD.format(repo=str(repo), args=args)], cwd=repo,
                         capture_output=True, text=True)
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or not lines:
        return {"ok": False, "peak_mib": float("nan"), "seconds": float("nan"), "error": out.stderr[-400:]}
    return json.loads(lines[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=8000, help="square image side in pixels")
    ap.add_argument("--config", default=str(REPO / "configs" / "seg_tiny_mask.yaml"))
    ap.add_argument("--infer-size", type=int, default=1024)
    ap.add_argument("--save-probs", action="store_true")
    ap.add_argument("--baseline", type=Path, help="checkout of an earlier version to compare with")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="bench_predict_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    image, ckpt = prepare(work, a.size, a.config)
    contenders = {"ours": REPO} | ({"baseline": a.baseline.resolve()} if a.baseline else {})
    results = {name: [] for name in contenders}
    for r in range(a.rounds):
        for name, repo in contenders.items():
            out = work / f"out_{name}_{r}_{time.time_ns()}"
            args = ["predict", str(image), "--checkpoint", str(ckpt), "--out", str(out),
                    "--infer-size", str(a.infer_size)] + (["--save-probs"] if a.save_probs else [])
            results[name].append(measure(repo, args))
            print(f"round {r} {name}: {results[name][-1]}", flush=True)
    print(f"\npredict {a.size}x{a.size}, infer size {a.infer_size}, save-probs {a.save_probs}:")
    for name, runs in results.items():
        best = min(runs, key=lambda x: x["peak_mib"])
        print(f"  {name:9s} peak RSS {best['peak_mib']:8.0f} MiB, {best['seconds']:6.1f} s, ok {best['ok']}"
              + (f" ({best.get('error', '')})" if not best["ok"] else ""))
    if "baseline" in results:
        ratio = min(x["peak_mib"] for x in results["baseline"]) / min(x["peak_mib"] for x in results["ours"])
        print(f"  baseline / ours peak memory: {ratio:.2f}x")


if __name__ == "__main__":
    main()

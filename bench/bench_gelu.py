"""The exact GELU kernel, MindSpore beside torch, on one MLP activation of seg_tiny at 768x768.

    benchenv/bin/python bench/bench_gelu.py [--repeats 15] [--threads 2]

Why: the side-by-side profile (docs/benchmarks.md) puts a third of our forward in the GELU and
2 % of the official one's. Timed here, each as its own GRAPH_MODE graph on a (1, 2305, 768)
float32 tensor (best of `--repeats` after a compiling call): MindSpore's GELU (exact and tanh),
its erf and a few element-wise kernels for the floor of one pass over the tensor; an exact GELU
composed from those fast kernels (Abramowitz-Stegun 7.1.26 erf, |error| < 1.5e-7) forward and
forward+backward; torch's GELU and erf. Needs torch (requirements-bench.txt).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from base.device import setup_context  # noqa: E402

SHAPE = (1, 2305, 768)  # seg_tiny's fc1 output at 768x768: 48 x 48 patches + the class token
SQRT_HALF = 0.7071067811865476
# Abramowitz & Stegun 7.1.26: erfc(z) = t (a1 + t (a2 + ...)) exp(-z^2), t = 1 / (1 + p z), z >= 0.
P, A = 0.3275911, (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


class _Fn(nn.Cell):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def construct(self, x):
        return self.fn(x)


class _Grad(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net, self.grad = net, ops.GradOperation()

    def construct(self, x):
        return self.grad(self.net)(x)


def composed_gelu(x):
    """x * Phi(x) with Phi from the A&S erfc on |x| / sqrt(2): every kernel one of the fast ones."""
    z = ops.abs(x) * SQRT_HALF
    t = 1.0 / (1.0 + P * z)
    poly = t * (A[0] + t * (A[1] + t * (A[2] + t * (A[3] + t * A[4]))))
    tail = 0.5 * poly * ops.exp(-z * z)  # Phi(-|x|)
    return x * ops.select(x >= 0, 1.0 - tail, tail)


def gelu_tanh(x):
    return ops.gelu(x, "tanh")


def half(x):
    return x * 0.5


def best_ms(call, x, repeats: int) -> float:
    call(x)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = call(x)
        if hasattr(out, "asnumpy"):
            out.asnumpy()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (MindSpore: its default pool)")
    args = parser.parse_args()
    setup_context("CPU", "graph", 0)
    data = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    x = ms.Tensor(data)
    stock = nn.GELU(approximate=False)
    rows = [("MindSpore nn.GELU (exact)", stock), ("MindSpore ops.gelu tanh", _Fn(gelu_tanh)),
            ("MindSpore ops.erf", _Fn(ops.erf)), ("MindSpore x * 0.5", _Fn(half)),
            ("MindSpore ops.exp", _Fn(ops.exp)), ("MindSpore ops.tanh", _Fn(ops.tanh)),
            ("MindSpore composed exact GELU", _Fn(composed_gelu)),
            ("MindSpore nn.GELU forward+backward", _Grad(stock)),
            ("MindSpore composed forward+backward", _Grad(_Fn(composed_gelu)))]
    for name, cell in rows:
        print(f"{name:40s} {best_ms(cell, x, args.repeats):8.2f} ms", flush=True)
    difference = np.abs(_Fn(composed_gelu)(x).asnumpy() - stock(x).asnumpy()).max()
    print(f"composed vs nn.GELU: max difference {difference:.1e}")
    try:
        import torch
    except ImportError:
        print("torch not installed (pip install -r requirements-bench.txt): no torch rows")
        return
    torch.set_num_threads(args.threads)
    xt = torch.from_numpy(data)
    for name, fn in (("torch F.gelu (exact)", torch.nn.functional.gelu), ("torch erf", torch.erf)):
        print(f"{name:40s} {best_ms(fn, xt, args.repeats):8.2f} ms", flush=True)


if __name__ == "__main__":
    main()

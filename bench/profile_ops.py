"""Per-op profile of the Segmenter forward and backward at 768x768, MindSpore GRAPH_MODE on CPU.

    .venv/bin/python bench/profile_ops.py [--variants tiny,small] [--repeats 5] [--batch 1]

Every op the network runs is timed alone, compiled as its own graph at the exact shape the model
gives it (2305 tokens for a 768x768 image at patch 16), forward and forward+backward (gradient
with respect to the input and the op's weights), best of `--repeats`. Each op's share is its time
x how often one forward runs it; the table is sorted by that total. The last rows time the whole
network (its backward as one graph, for the variants in `--whole-backward`), so the sum of the
rows can be checked against it. The official Conv2d patch embedding
is timed beside the patchify + MatMul form the model uses (model/vit.py), and the stock
softmax backward beside the model's (model/layers.py).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import mindspore as ms  # noqa: E402
from mindspore import nn, ops  # noqa: E402

from base.device import setup_context  # noqa: E402
from model.layers import LayerNorm, Softmax, dense  # noqa: E402
from model.segmenter import build_segmenter  # noqa: E402
from model.vit import PatchProjection  # noqa: E402
from settings.files import load_config  # noqa: E402


class _Op(nn.Cell):
    def __init__(self, fn, *cells):
        super().__init__()
        self.fn = fn
        self.parts = nn.CellList(list(cells))

    def construct(self, *xs):
        return self.fn(*xs)


class _Grad(nn.Cell):
    """Forward + backward of `cell` (inputs and weights) for a sum-of-outputs loss."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell
        self.weights = ms.ParameterTuple(cell.trainable_params())
        self.grad = ops.GradOperation(get_all=True, get_by_list=bool(self.weights))

    def construct(self, *xs):
        if self.weights:
            return self.grad(self.cell, self.weights)(*xs)
        return self.grad(self.cell)(*xs)


def _sync(out):
    while isinstance(out, (tuple, list)):
        out = out[0]
    out.asnumpy()


def _best(cell, xs, repeats) -> float:
    _sync(cell(*xs))  # compile
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _sync(cell(*xs))
        times.append(time.perf_counter() - start)
    return min(times)


def _tensor(rng, *shape):
    return ms.Tensor(rng.randn(*shape).astype(np.float32))


def op_table(d: int, heads: int, n_layers: int, dec_layers: int, n_cls: int, tokens: int, batch: int, side: int):
    """(name, count per forward, cell, inputs) for every op of one forward."""
    rng = np.random.RandomState(0)
    dec_heads = max(d // 64, 1)
    dec_tokens = tokens - 1 + n_cls
    grid = side // 16
    ln = LayerNorm(d)
    softmax = Softmax()
    stock_softmax = ops.Softmax(axis=-1)
    qk = ops.BatchMatMul(transpose_b=True)
    av = ops.BatchMatMul()
    gelu = nn.GELU(approximate=False)
    conv = nn.Conv2d(3, d, kernel_size=16, stride=16, pad_mode="valid", has_bias=True)
    patch = PatchProjection(3, d, 16)
    layers = {name: dense(*shape) for name, shape in
              {"qkv": (d, 3 * d), "proj": (d, d), "fc1": (d, 4 * d), "fc2": (4 * d, d)}.items()}

    def upsample(x):
        return ops.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)

    rows = [
        ("patch embedding: Conv2d k=s=16 (official form, not used)", 0, _Op(conv, conv), (_tensor(rng, batch, 3, side, side),)),
        ("patch embedding: patchify + MatMul (model/vit.py)", 1, _Op(patch, patch), (_tensor(rng, batch, 3, side, side),)),
        ("softmax: stock ops.Softmax backward (not used)", 0, _Op(stock_softmax),
         (_tensor(rng, batch, heads, tokens, tokens),)),
        ("upsample masks bilinear x16", 1, _Op(upsample), (_tensor(rng, batch, n_cls, grid, grid),)),
    ]
    for part, count, h, n in (("encoder", n_layers, heads, tokens), ("decoder", dec_layers, dec_heads, dec_tokens)):
        hd = d // h
        rows += [
            (f"{part} LayerNorm", 2 * count, _Op(ln, ln), (_tensor(rng, batch, n, d),)),
            (f"{part} Dense qkv", count, _Op(layers["qkv"], layers["qkv"]), (_tensor(rng, batch, n, d),)),
            (f"{part} q.k^T BatchMatMul", count, _Op(qk), (_tensor(rng, batch, h, n, hd), _tensor(rng, batch, h, n, hd))),
            (f"{part} softmax (model/layers.py)", count, _Op(softmax), (_tensor(rng, batch, h, n, n),)),
            (f"{part} attn.v BatchMatMul", count, _Op(av), (_tensor(rng, batch, h, n, n), _tensor(rng, batch, h, n, hd))),
            (f"{part} Dense proj", count, _Op(layers["proj"], layers["proj"]), (_tensor(rng, batch, n, d),)),
            (f"{part} Dense fc1", count, _Op(layers["fc1"], layers["fc1"]), (_tensor(rng, batch, n, d),)),
            (f"{part} GELU (exact)", count, _Op(gelu), (_tensor(rng, batch, n, 4 * d),)),
            (f"{part} Dense fc2", count, _Op(layers["fc2"], layers["fc2"]), (_tensor(rng, batch, n, 4 * d),)),
        ]
    return rows


def profile(variant: str, repeats: int, batch: int, whole_backward: bool, side: int = 768) -> None:
    cfg = load_config(ROOT / "configs" / f"seg_{variant}_mask.yaml")
    m = cfg.model
    tokens = (side // m.patch_size) ** 2 + 1
    rows = []
    for name, count, cell, xs in op_table(m.d_model, m.n_heads, m.n_layers, m.decoder.n_layers, m.n_cls, tokens,
                                          batch, side):
        fwd = _best(cell, xs, repeats)
        both = _best(_Grad(cell), xs, repeats)
        rows.append((name, count, fwd, both))
    net = build_segmenter(m)
    net.set_train(False)
    image = _tensor(np.random.RandomState(1), batch, 3, side, side)
    whole_fwd = _best(net, (image,), repeats)
    total_f = sum(c * f for _, c, f, _ in rows)
    total_b = sum(c * b for _, c, _, b in rows)
    whole_both = None
    if whole_backward:
        net.set_train(True)  # drop path / dropout as in training; a sum of the logits as the loss
        whole_both = _best(_Grad(net), (image,), max(1, repeats // 2))
    # Without the whole network's backward, the backward shares are of the sum of the ops.
    share_b = whole_both or total_b
    print(f"\nseg_{variant}_mask, {batch}x3x{side}x{side} ({tokens} tokens), MindSpore {ms.__version__} "
          f"GRAPH_MODE CPU; ms per call (best of {repeats})")
    print(f"| op | per forward | forward ms | fwd+bwd ms | forward total ms | share | fwd+bwd total ms | share |")
    print("|---|---|---|---|---|---|---|---|")
    for name, count, fwd, both in sorted(rows, key=lambda r: -r[1] * r[3]):
        print(f"| {name} | {count} | {1e3 * fwd:.1f} | {1e3 * both:.1f} | {1e3 * count * fwd:.0f} | "
              f"{100 * count * fwd / whole_fwd:.0f} % | {1e3 * count * both:.0f} | {100 * count * both / share_b:.0f} % |")
    print(f"| sum of the ops | | | | {1e3 * total_f:.0f} | {100 * total_f / whole_fwd:.0f} % | {1e3 * total_b:.0f} | "
          f"{100 * total_b / share_b:.0f} % |")
    both = f"{1e3 * whole_both:.0f} | 100 %" if whole_both else "not measured (--whole-backward) |"
    print(f"| whole network | 1 | | | {1e3 * whole_fwd:.0f} | 100 % | {both} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", default="tiny,small")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--whole-backward", default="tiny",
                        help="variants whose whole-network backward is timed as one graph (it keeps every "
                             "intermediate: seg_small at 768 outgrows 24 GiB); 'none' for none")
    args = parser.parse_args()
    setup_context("CPU", "graph", 0)
    for variant in args.variants.split(","):
        profile(variant, args.repeats, args.batch, variant in args.whole_backward.split(","))


if __name__ == "__main__":
    main()

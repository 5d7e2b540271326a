"""The precision policy: which layers compute in float16 under train.amp_level O0/O1/O2."""
from __future__ import annotations

import mindspore as ms
from mindspore import nn

from model.layers import LayerNorm
from model.vit import PatchProjection


class _Float16Compute(nn.Cell):
    """A Dense/Conv2d/patch projection computed in float16 (input and weights cast), its output back in float32."""

    def __init__(self, cell: nn.Cell):
        super().__init__(auto_prefix=False)  # parameter names stay the wrapped layer's
        self.cell = cell.to_float(ms.float16)

    def construct(self, x):
        return self.cell(x).astype(ms.float32)


def _float16_matmul_layers(cell: nn.Cell) -> None:
    for name, sub in list(cell.name_cells().items()):
        if isinstance(sub, (nn.Dense, nn.Conv2d, PatchProjection)):
            cell._cells[name] = _Float16Compute(sub)
        elif not isinstance(sub, _Float16Compute):
            _float16_matmul_layers(sub)


def apply_amp(net: nn.Cell, level: str) -> nn.Cell:
    """Set the network's compute precision in place (weights stay float32 masters); returns `net`.

    O0: float32. O1: the Dense, Conv2d and patch projection layers (all the matmul FLOPs but attention's two
    batched products) compute in float16, everything else stays float32. O2: every cell computes
    in float16 except LayerNorm (float32); the residual stream is float16. The loss always
    casts the logits to float32. Written here rather than with `amp.auto_mixed_precision`,
    which cannot rewrite this network for O1 and wraps it in a new cell for O2 (measured,
    MindSpore 2.10). On CPU both are slower than O0 (no fast float16 kernels).
    """
    if level == "O0":
        return net
    if level == "O1":
        _float16_matmul_layers(net)
        return net
    if level == "O2":
        net.to_float(ms.float16)
        for _, cell in net.cells_and_names():
            if isinstance(cell, LayerNorm):
                cell.to_float(ms.float32)
        return net
    raise ValueError(f"train.amp_level: unknown level {level!r}")

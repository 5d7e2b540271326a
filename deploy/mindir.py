"""MindIR export: the network for a fixed input size, in MindSpore's deployment format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import mindspore as ms

from base.atomic import private_output


def export_mindir(net, out_path, height: int, width: int) -> None:
    """MindIR of `net` for a fixed (1,3,H,W) input, written atomically."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with private_output(out, ".mindir") as tmp:
        # MindSpore appends ".mindir" to file_name itself.
        ms.export(net, ms.Tensor(np.zeros((1, 3, height, width), np.float32)), file_name=str(tmp)[:-len(".mindir")],
                  file_format="MINDIR")

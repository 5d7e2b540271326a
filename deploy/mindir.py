"""MindIR export: the network for a fixed input size, in MindSpore's deployment format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import mindspore as ms

from base.atomic import private_output


def export_mindir(net, out_path, height: int, width: int, written) -> None:
    """MindIR of `net` for a fixed (1,3,H,W) input, written atomically through `written`
    (base.ownership.WrittenFiles of its folder: a file export did not write is never replaced)."""
    out = Path(out_path)
    with written.atomic(out) as staged, private_output(staged.tmp, ".mindir") as tmp:
        # MindSpore appends ".mindir" to file_name itself.
        ms.export(net, ms.Tensor(np.zeros((1, 3, height, width), np.float32)), file_name=str(tmp)[:-len(".mindir")],
                  file_format="MINDIR")

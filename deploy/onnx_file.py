"""The ONNX file `export --format onnx` writes: the graph of deploy/onnx_export.py, checked
against the MindSpore forward through ONNX Runtime before anything is written."""
from __future__ import annotations

from pathlib import Path

from base.atomic import write_bytes_atomic
from base.errors import UserError
from deploy.onnx_export import segmenter_onnx
from deploy.onnx_runtime import OnnxRunner, max_probability_difference

TOLERANCE = 1e-4  # on softmax probabilities, as the official-parity tests


def export_onnx(net, out, height: int, width: int) -> float:
    """Write the ONNX graph of `net` to `out` once ONNX Runtime's probabilities are within
    TOLERANCE of MindSpore's; returns the largest difference. Nothing is written otherwise."""
    data = segmenter_onnx(net, height, width).SerializeToString()
    diff = max_probability_difference(net, OnnxRunner(data), height, width)
    if not diff <= TOLERANCE:
        raise UserError(f"not written: ONNX Runtime's probabilities differ from MindSpore's by {diff:.2e} "
                        f"(tolerance {TOLERANCE:g})", out)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out, data)
    return diff

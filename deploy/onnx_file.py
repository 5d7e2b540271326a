"""The ONNX file `export --format onnx` writes: the graph of deploy/onnx_export.py, checked
against the MindSpore forward through ONNX Runtime before anything is written, with what a
deployment needs beside the graph in its metadata (`metadata_props`, each value JSON text):

    mean, std      [r, g, b]: the input is (rgb - mean) / std of RGB uint8 pixels, channels first
    input_size     [height, width] of the fixed input
    patch_size     the ViT patch side in pixels
    dataset        the class table's data set name
    class_names    [name, ...] in class-index order (the logits' channels)
    palette        [[r, g, b], ...] one colour per class
"""
from __future__ import annotations

import json

from base.errors import UserError
from deploy.onnx_export import segmenter_onnx
from deploy.onnx_runtime import OnnxRunner, ProbabilityMismatch, check_probabilities


def deployment_metadata(model, table, height: int, width: int) -> dict:
    """The metadata entries (name -> JSON text) for a network of `model` (settings.schema.ModelConfig)
    predicting the classes of `table` (base.class_table.ClassTable) at input (height, width)."""
    values = {"mean": list(model.mean), "std": list(model.std), "input_size": [height, width],
              "patch_size": model.patch_size, "dataset": table.dataset, "class_names": list(table.names),
              "palette": [list(map(int, c)) for c in table.palette]}
    return {key: json.dumps(value) for key, value in values.items()}


def export_onnx(net, out, height: int, width: int, written, metadata: dict | None = None) -> float:
    """Write the ONNX graph of `net` with `metadata` (name -> text, `deployment_metadata`) to `out`
    through `written` (base.ownership.WrittenFiles of its folder: a file export did not write is
    never replaced) once ONNX Runtime's probabilities are within deploy.onnx_runtime.TOLERANCE of MindSpore's;
    returns the largest difference. Nothing is written otherwise."""
    model = segmenter_onnx(net, height, width)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    data = model.SerializeToString()
    try:
        diff = check_probabilities(net, OnnxRunner(data), height, width, "ONNX Runtime")
    except ProbabilityMismatch as err:
        raise UserError(f"not written: {err}", out) from None
    written.write_bytes(out, data)
    return diff

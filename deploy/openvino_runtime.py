"""Running the network through OpenVINO on the CPU (the sliding window's windows), from the ONNX
graph that `--runtime onnxruntime` runs (deploy/onnx_export.py).

`OpenVinoRunner(model_bytes, precision)` is a callable from a float32 NumPy batch (N, 3, win, win)
to NumPy logits, like deploy.onnx_runtime.OnnxRunner. The inference precision is set explicitly
and read back from the compiled model: OpenVINO's CPU plugin picks bf16 by itself where the CPU
has bf16 units and silently runs f32 where it has none, so f32 asked for is f32, and bf16 on a CPU
without bf16 units is refused. openvino (with onnx, which builds the graph) is an optional extra:
requirements-openvino.txt; `require_openvino` names it when missing.
"""
from __future__ import annotations

import os

import numpy as np

from base.errors import UserError
from deploy.onnx_runtime import require_modules

EXTRA = "pip install -r requirements-openvino.txt"


class OpenVinoMissing(UserError, RuntimeError):
    pass


class PrecisionUnavailable(UserError, RuntimeError):
    pass


def require_openvino(what: str) -> None:
    """Raise OpenVinoMissing, naming the extra, unless onnx and openvino import."""
    require_modules(what, ("onnx", "openvino"), EXTRA, OpenVinoMissing)


class OpenVinoRunner:
    def __init__(self, model_bytes: bytes, precision: str = "f32", threads: int | None = None):
        import openvino as ov

        core = ov.Core()
        self.model_bytes, self.threads = model_bytes, threads
        # Threads stated (one per core, as OnnxRunner) so both runtimes of a benchmark use the same count.
        compiled = core.compile_model(core.read_model(model=model_bytes), "CPU", {
            "INFERENCE_PRECISION_HINT": precision, "INFERENCE_NUM_THREADS": threads or os.cpu_count() or 1})
        ran = compiled.get_property("INFERENCE_PRECISION_HINT")  # what the compiled model runs, not what was asked
        if ran != {"f32": ov.Type.f32, "bf16": ov.Type.bf16}[precision]:
            raise PrecisionUnavailable(
                f"--precision {precision}: OpenVINO runs this model in {ran.get_type_name()} on this CPU "
                f"(its capabilities: {', '.join(core.get_property('CPU', 'OPTIMIZATION_CAPABILITIES'))}); "
                "bf16 needs a CPU with bfloat16 units (AVX512_BF16 or AMX): use --precision f32")
        self.precision = precision
        self.request = compiled.create_infer_request()
        self.training = False

    def set_train(self, mode: bool = True) -> None:
        if mode:
            raise ValueError("an OpenVINO model only runs inference")

    def with_precision(self, precision: str) -> OpenVinoRunner:
        """The same graph compiled at another precision (bf16's f32 reference)."""
        return OpenVinoRunner(self.model_bytes, precision, self.threads)

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        """Logits in the request's own output buffer, valid until the next call (the sliding window
        adds them to its canvas at once): a fresh copy of a batch's logits, 180 MB for four 768
        windows, cost more than a tenth of the inference (docs/benchmarks.md)."""
        return self.request.infer({"image": np.ascontiguousarray(crops, np.float32)},
                                  share_inputs=True, share_outputs=True)["logits"]


def openvino_runner(net, window: int, precision: str = "f32", threads: int | None = None) -> OpenVinoRunner:
    """An OpenVINO model of `net` for window x window crops (any batch). At f32 its probabilities
    are checked against `net` as the ONNX export's are (`max_difference`; refused above the
    tolerance); bf16 is lossy by design, its cost reported by the caller (agreement, mIoU)."""
    from deploy.onnx_export import segmenter_onnx
    from deploy.onnx_runtime import check_probabilities

    runner = OpenVinoRunner(segmenter_onnx(net, window, window).SerializeToString(), precision, threads)
    runner.max_difference = (check_probabilities(net, runner, window, window, "OpenVINO f32")
                             if precision == "f32" else None)
    return runner

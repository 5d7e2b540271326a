"""Running the network through ONNX Runtime instead of MindSpore (the sliding window's windows).

`OnnxRunner(model_bytes)` is a callable from a float32 NumPy batch (N, 3, win, win) to NumPy
logits, which `evaluate.sliding_window.run_windows` accepts in place of a MindSpore network.
The graph comes from `deploy.onnx_export.segmenter_onnx` at the window size. onnx and
onnxruntime are an optional extra (requirements-onnx.txt); `require_onnx` names it when missing.
`check_probabilities` is the 1e-4 check of such a graph against MindSpore (export, OpenVINO f32).
"""
from __future__ import annotations

import os

from base.errors import UserError
import numpy as np

EXTRA = "pip install -r requirements-onnx.txt"
TOLERANCE = 1e-4  # on softmax probabilities, as the official-parity tests


class OnnxMissing(UserError, RuntimeError):
    pass


class ProbabilityMismatch(UserError, ValueError):
    pass


def require_modules(what: str, modules, extra: str, error: type) -> None:
    """Raise `error`, naming the optional package and the `extra` that installs it, unless every
    module in `modules` imports."""
    for module in modules:
        try:
            __import__(module)
        except ImportError:
            raise error(f"{what} needs the optional {module} package: {extra}") from None


def require_onnx(what: str) -> None:
    """Raise OnnxMissing, naming the extra, unless onnx and onnxruntime import."""
    require_modules(what, ("onnx", "onnxruntime"), EXTRA, OnnxMissing)


class OnnxRunner:
    def __init__(self, model_bytes: bytes, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        # One intra-op thread per core: ONNX Runtime's default, stated so both sides of a
        # benchmark run with the same count.
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        self.training = False

    def set_train(self, mode: bool = True) -> None:
        if mode:
            raise ValueError("an ONNX Runtime session only runs inference")

    def __call__(self, crops: np.ndarray) -> np.ndarray:
        return self.session.run(["logits"], {"image": np.ascontiguousarray(crops, np.float32)})[0]


def max_probability_difference(net, runner, height: int, width: int, seed: int = 0) -> float:
    """Largest |softmax difference| between `net` and `runner` on one random (1,3,H,W) input."""
    import mindspore as ms

    x = np.random.RandomState(seed).randn(1, 3, height, width).astype(np.float32)

    def probs(logits):
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return float(np.abs(probs(net(ms.Tensor(x)).asnumpy()) - probs(runner(x))).max())


def check_probabilities(net, runner, height: int, width: int, name: str) -> float:
    """`max_probability_difference` of `runner` (called `name` in the refusal), refused with
    ProbabilityMismatch above TOLERANCE: the check every exported graph passes before use."""
    diff = max_probability_difference(net, runner, height, width)
    if not diff <= TOLERANCE:
        raise ProbabilityMismatch(f"{name}'s probabilities differ from MindSpore's by {diff:.2e} "
                                  f"(tolerance {TOLERANCE:g})")
    return diff


def onnx_runner(net, window: int, threads: int | None = None) -> OnnxRunner:
    """An ONNX Runtime session of `net` for window x window crops (any batch)."""
    from deploy.onnx_export import segmenter_onnx

    return OnnxRunner(segmenter_onnx(net, window, window).SerializeToString(), threads)

"""--runtime openvino: the ONNX graph compiled by OpenVINO at an explicit precision that is read
back; f32 within 1e-4 of MindSpore, bf16 refused where the CPU would run f32, its cost reported."""
from __future__ import annotations

import re
import sys

import numpy as np
import openvino as ov
import pytest
from PIL import Image

from base.device import setup_context
from deploy.onnx_export import segmenter_onnx
from deploy.onnx_runtime import max_probability_difference
from deploy.openvino_runtime import OpenVinoRunner, PrecisionUnavailable, openvino_runner
from model.segmenter import build_segmenter
from settings.datasets import DatasetEval
from test_datasets_model import TABLE, save_tiny, shapes_data  # noqa: F401  (shapes_data: a fixture)
from test_device import invoke
from test_onnx import _tiny

TOL = 1e-4
HAS_BF16 = "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no bfloat16 units")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class checkpoint (window 32) and a 40x72 image: (ckpt, image)."""
    work = tmp_path_factory.mktemp("ov")
    ckpt = save_tiny(work / "m.ckpt", 3, (TABLE, DatasetEval(0, 0, 32, 32)))
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (40, 72, 3), dtype=np.uint8)).save(work / "im.png")
    return ckpt, work / "im.png"


def _report_f32(monkeypatch):
    """The compiled model reports f32 whatever it was asked for, as on a CPU without bf16 units."""
    real = ov.CompiledModel.get_property
    monkeypatch.setattr(ov.CompiledModel, "get_property", lambda self, name: ov.Type.f32
                        if name == "INFERENCE_PRECISION_HINT" else real(self, name))


def test_f32_is_set_explicitly_and_matches_the_mindspore_forward():
    setup_context("CPU", "graph", 0)
    net = build_segmenter(_tiny("mask_transformer"))
    net.set_train(False)
    runner = openvino_runner(net, 32, "f32", threads=1)
    assert runner.precision == "f32" and runner.max_difference < TOL
    assert max_probability_difference(net, runner, 32, 32, seed=3) < TOL
    assert runner(np.zeros((3, 3, 32, 32), np.float32)).shape == (3, 19, 32, 32)  # the batch axis is free
    if HAS_BF16:  # OpenVINO's own default on this CPU: bf16, which the 1e-4 check would not pass
        core = ov.Core()
        default = core.compile_model(core.read_model(model=runner.model_bytes), "CPU")
        assert max_probability_difference(net, lambda x: default({"image": x})["logits"], 32, 32, seed=3) > TOL


def test_predict_openvino_f32_gives_the_mindspore_probabilities(tiny, tmp_path):
    ckpt, image = tiny
    outputs = {}
    for runtime in ("mindspore", "openvino"):
        code, outputs[runtime] = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / runtime,
                                        "--save-probs", "--runtime", runtime)
        assert code == 0, outputs[runtime]
    np.testing.assert_allclose(np.load(tmp_path / "openvino" / "im_probs.npy"),
                               np.load(tmp_path / "mindspore" / "im_probs.npy"), atol=TOL, rtol=0)
    assert "runtime mindspore on CPU" in outputs["mindspore"]
    assert re.search(r"runtime openvino f32 on CPU \(max probability difference vs MindSpore \d\.\de-\d\d\)",
                     outputs["openvino"])


@needs_bf16
def test_predict_bf16_reports_its_agreement_with_f32_on_the_first_image(tiny, tmp_path):
    ckpt, image = tiny
    maps, outputs = {}, {}
    for precision in ("bf16", "f32"):
        code, outputs[precision] = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / precision,
                                          "--runtime", "openvino", "--precision", precision)
        assert code == 0, outputs[precision]
        maps[precision] = np.asarray(Image.open(tmp_path / precision / "im.png"))
    agreement = re.search(rf"bf16 vs f32 on {re.escape(str(image))}: (\d+\.\d\d)% of pixels get the same class",
                          outputs["bf16"])
    assert float(agreement.group(1)) == pytest.approx(100 * np.mean(maps["bf16"] == maps["f32"]), abs=0.005)


def test_bf16_where_the_cpu_runs_f32_is_refused_before_anything_is_written(tiny, tmp_path, monkeypatch):
    ckpt, image = tiny
    _report_f32(monkeypatch)
    code, output = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / "out", "--runtime", "openvino",
                          "--precision", "bf16")
    assert code == 2
    assert "--precision bf16: OpenVINO runs this model in f32 on this CPU" in output
    assert "use --precision f32" in output and not (tmp_path / "out").exists()
    setup_context("CPU", "graph", 0)
    data = segmenter_onnx(build_segmenter(_tiny("linear")), 32, 32).SerializeToString()
    assert OpenVinoRunner(data, "f32").precision == "f32"  # f32 reported as f32 passes
    with pytest.raises(PrecisionUnavailable):
        OpenVinoRunner(data, "bf16")


def test_eval_through_openvino_reports_the_miou_and_its_precision(tiny, shapes_data, tmp_path):  # noqa: F811
    ckpt, _ = tiny
    precision = "bf16" if HAS_BF16 else "f32"
    lines = {}
    for runtime, options in (("mindspore", []), ("openvino", ["--precision", precision])):
        code, output = invoke("eval", "--checkpoint", ckpt, "--data", shapes_data, "--runtime", runtime, *options)
        assert code == 0, output
        lines[runtime] = output
    assert f"eval: runtime openvino {precision} on CPU" in lines["openvino"]
    miou = [float(re.search(r"mIoU\s+(\d+\.\d\d)", lines[r]).group(1)) for r in ("mindspore", "openvino")]
    assert miou[1] == pytest.approx(miou[0], abs=5.0)  # bf16's cost is shown, and small on this model


def test_missing_openvino_names_the_extra_before_any_work(tiny, tmp_path, monkeypatch):
    ckpt, image = tiny
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    code, output = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / "out", "--runtime", "openvino")
    assert code == 2
    assert "--runtime openvino needs the optional openvino package: pip install -r requirements-openvino.txt" in output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("options,message", [
    (["--runtime", "openvino", "--device", "GPU"], "--device GPU: --runtime openvino runs on the CPU only"),
    (["--runtime", "onnxruntime", "--device", "Ascend"], "--device Ascend: --runtime onnxruntime runs on the CPU only"),
    (["--precision", "bf16"], "--precision bf16: only --runtime openvino runs below f32"),
])
def test_cpu_runtimes_refuse_another_device_and_bf16_needs_openvino(tiny, tmp_path, options, message):
    ckpt, image = tiny
    code, output = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / "out", *options)
    assert code == 2 and message in output and not (tmp_path / "out").exists()

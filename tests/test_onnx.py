"""The ONNX path: export --format onnx, and predict/eval --runtime onnxruntime, against the
official Segmenter's golden probabilities and our own MindSpore forward."""
from __future__ import annotations

import sys

import numpy as np
import pytest
from click.testing import CliRunner

import cli
from base.device import setup_context
from base.ownership import WRITTEN
from deploy.onnx_export import segmenter_onnx
from deploy.onnx_runtime import OnnxRunner, max_probability_difference
from model.segmenter import build_segmenter
from settings.schema import DecoderConfig, ModelConfig
from test_model_golden import GOLDEN, IMAGE, TOL, converted, run  # noqa: F401  (converted: a fixture)


def _tiny(decoder: str) -> ModelConfig:
    return ModelConfig(d_model=32, n_heads=2, n_layers=2, patch_size=8, image_size=[32, 32],
                       decoder=DecoderConfig(name=decoder, n_layers=1 if decoder == "mask_transformer" else 0))


@pytest.mark.parametrize("decoder", ["mask_transformer", "linear"])
@pytest.mark.parametrize("size", [(32, 48), (36, 44)])  # (36, 44): padded to 40x48 inside, cropped back
def test_onnx_graph_matches_the_mindspore_forward(decoder, size):
    setup_context("CPU", "graph", 0)
    net = build_segmenter(_tiny(decoder))
    net.set_train(False)
    runner = OnnxRunner(segmenter_onnx(net, *size).SerializeToString())
    assert max_probability_difference(net, runner, *size) < TOL
    batch = np.random.RandomState(5).randn(3, 3, *size).astype(np.float32)  # the batch axis is free
    assert runner(batch).shape == (3, 19, *size)


@pytest.mark.parametrize("name,case,options", [
    ("mask", "sliding", []),
    ("mask", "upscale", ["--window", 64, "--stride", 32]),
    ("linear", "sliding", []),
])
def test_onnxruntime_reproduces_official_probabilities(converted, tmp_path, name, case, options):  # noqa: F811
    out = tmp_path / "pred"
    run("predict", IMAGE, "--checkpoint", converted[name], "--out", out, "--save-probs", "--batch-windows", 3,
        "--runtime", "onnxruntime", *options)
    probs = np.load(out / f"{IMAGE.stem}_probs.npy")
    np.testing.assert_allclose(probs, np.load(GOLDEN / f"probs_{name}.npz")[case], atol=TOL, rtol=0)


def test_export_onnx_writes_a_checked_model(converted, tmp_path):  # noqa: F811
    out = tmp_path / "deploy" / "mask.onnx"
    result = run("export", "--checkpoint", converted["mask"], "--out", out, "--size", "40x56", "--format", "onnx")
    assert "max probability difference" in result.output
    logits = OnnxRunner(out.read_bytes())(np.zeros((2, 3, 40, 56), np.float32))
    assert logits.shape == (2, 19, 40, 56) and np.isfinite(logits).all()
    # No temporary left; the folder's written-files log proves the file is export's to replace.
    assert sorted(p.name for p in out.parent.iterdir()) == [WRITTEN, "mask.onnx"]
    again = run("export", "--checkpoint", converted["mask"], "--out", out, "--size", "40x56")
    assert again.exit_code == 0, again.output


@pytest.mark.parametrize("name", ["mine.onnx", "mine.MINDIR"])
def test_export_never_replaces_a_file_it_did_not_write(converted, tmp_path, name):  # noqa: F811
    mine = tmp_path / name
    mine.write_bytes(b"the user's own model")
    r = CliRunner().invoke(cli.main, ["export", "--checkpoint", str(converted["mask"]), "--out", str(mine),
                                      "--size", "32x32"])
    assert r.exit_code == 2 and f"error: {mine}: exists and was not written by export" in r.output, r.output
    assert mine.read_bytes() == b"the user's own model" and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_export_onnx_refuses_a_mindir_name(converted, tmp_path):  # noqa: F811
    r = CliRunner().invoke(cli.main, ["export", "--checkpoint", str(converted["mask"]), "--out",
                                      str(tmp_path / "m.mindir"), "--size", "32x32", "--format", "onnx"])
    assert r.exit_code == 2 and "must end in .onnx" in r.output


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_missing_extra_is_a_clear_error_before_any_work(converted, tmp_path, monkeypatch, missing):  # noqa: F811
    monkeypatch.setitem(sys.modules, missing, None)  # `import missing` now raises ImportError
    out = tmp_path / "pred"
    r = CliRunner().invoke(cli.main, ["predict", str(IMAGE), "--checkpoint", str(converted["mask"]), "--out",
                                      str(out), "--runtime", "onnxruntime"])
    assert r.exit_code == 2
    assert f"needs the optional {missing} package: pip install -r requirements-onnx.txt" in r.output
    assert not out.exists()
    r = CliRunner().invoke(cli.main, ["export", "--checkpoint", str(converted["mask"]), "--out",
                                      str(tmp_path / "m.onnx"), "--size", "32x32", "--format", "onnx"])
    assert r.exit_code == 2 and f"optional {missing} package" in r.output


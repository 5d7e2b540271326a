"""convert-weights / predict / export on bad input: clear error naming the file or option, exit 2, no output."""
from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import mindspore as ms
from click.testing import CliRunner

import cli
from settings.files import save_config
from settings.schema import Config, ModelConfig
from weights.checkpoint import CheckpointError, load_model
from weights.convert import load_release
from base.device import setup_context
from base.ownership import WRITTEN
from weights.torch_pickle import load_torch_file

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
RELEASE = GOLDEN / "seg_golden_mask"
IMAGE = GOLDEN / "frankfurt_000000_000294_small.png"


def fail(*args, match: str):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 2, result.output
    assert "error:" in result.output and match in result.output, result.output
    return result.output


@pytest.fixture
def release(tmp_path):
    dst = tmp_path / "release"
    shutil.copytree(RELEASE, dst)
    return dst


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("ck") / "m.ckpt"
    result = CliRunner().invoke(cli.main, ["convert-weights", str(RELEASE), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_release_state_dict_is_plain_numpy():
    state = load_torch_file(RELEASE / "checkpoint.pth")
    assert state["epoch"] == 215
    w = state["model"]["encoder.blocks.0.attn.qkv.weight"]
    assert isinstance(w, np.ndarray) and w.shape == (192, 64) and w.dtype == np.float32


def test_truncated_pth(release, tmp_path):
    data = (release / "checkpoint.pth").read_bytes()
    (release / "checkpoint.pth").write_bytes(data[: len(data) // 2])
    out = tmp_path / "o.ckpt"
    fail("convert-weights", release / "checkpoint.pth", "--out", out, match="checkpoint.pth: truncated")
    assert not out.exists() and not out.with_suffix(".yaml").exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_running(release, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"model": _Evil(marker)}, protocol=2)
    with zipfile.ZipFile(release / "checkpoint.pth", "w") as z:
        z.writestr("checkpoint/data.pkl", payload)
    # Sanity: the payload really would run the command if unpickled normally.
    assert b"system" in payload
    out = tmp_path / "o.ckpt"
    fail("convert-weights", release, "--out", out, match="refused to load global posix.system")
    assert not marker.exists()
    assert not out.exists()


def test_missing_variant(release, tmp_path):
    (release / "variant.yml").unlink()
    fail("convert-weights", release / "checkpoint.pth", "--out", tmp_path / "o.ckpt", match="no variant.yml beside it")
    assert not (tmp_path / "o.ckpt").exists()


def test_unexpected_missing_and_misshaped_release_tensors(monkeypatch):
    state = load_torch_file(RELEASE / "checkpoint.pth")
    model = state["model"]
    model["decoder.extra.weight"] = np.zeros(3, np.float32)
    del model["decoder.cls_emb"]
    model["encoder.norm.bias"] = np.zeros(5, np.float32)
    model["encoder.head.weight"] = np.zeros((10, 64), np.float32)  # the ImageNet head is dropped, not an error
    monkeypatch.setattr("weights.convert.load_torch_file", lambda path: state)
    with pytest.raises(CheckpointError) as err:
        load_release(RELEASE)
    msg = str(err.value)
    assert "checkpoint.pth" in msg
    assert "missing 1: decoder.cls_emb" in msg and "unexpected 1: decoder.extra.weight" in msg
    assert "wrong shape 1: encoder.norm.bias (5,) != (64,)" in msg


def _npz_cfg(tmp_path, **kw):
    cfg = Config(model=ModelConfig(d_model=64, n_heads=2, n_layers=2, patch_size=8, image_size=[48, 48], **kw))
    save_config(cfg, tmp_path / "cfg.yaml")
    return tmp_path / "cfg.yaml"


def test_npz_missing_and_misshaped_keys(tmp_path):
    w = dict(np.load(GOLDEN / "vit_golden_augreg.npz"))
    del w["Transformer/encoderblock_1/LayerNorm_2/scale"]
    w["embedding/bias"] = np.zeros(7, np.float32)
    np.savez(tmp_path / "bad.npz", **w)
    out = tmp_path / "o.ckpt"
    msg = fail("convert-weights", tmp_path / "bad.npz", "--out", out, "--config", _npz_cfg(tmp_path), match="bad.npz")
    assert "missing 1: Transformer/encoderblock_1/LayerNorm_2/scale" in msg
    assert "wrong shape 1: embedding/bias (7,) != (64,)" in msg
    assert not out.exists()


def test_npz_does_not_fit_config(tmp_path):
    cfg = tmp_path / "deeper.yaml"
    save_config(Config(model=ModelConfig(d_model=64, n_heads=4, n_layers=3, patch_size=8, image_size=[48, 48])), cfg)
    msg = fail("convert-weights", GOLDEN / "vit_golden_augreg.npz", "--out", tmp_path / "o.ckpt", "--config", cfg,
               match="vit_golden_augreg.npz: does not match model")
    assert "encoderblock_2" in msg and "(64, 2, 32) != (64, 4, 16)" in msg


def test_npz_needs_config(tmp_path):
    fail("convert-weights", GOLDEN / "vit_golden_augreg.npz", "--out", tmp_path / "o.ckpt", match="pass --config")


def test_checkpoint_config_mismatch(ckpt, tmp_path):
    other = Config(model=ModelConfig(d_model=64, n_heads=2, n_layers=3, patch_size=8, image_size=[32, 32]))
    save_config(other, tmp_path / "other.yaml")
    out = tmp_path / "pred"
    msg = fail("predict", IMAGE, "--checkpoint", ckpt, "--config", tmp_path / "other.yaml", "--out", out,
               match=f"{ckpt}: does not match the model of the config")
    assert "model.n_layers is 3 in the config, 2 in the checkpoint" in msg
    assert not out.exists()


def test_not_an_image(ckpt, tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("this is not a PNG")
    out = tmp_path / "pred"
    fail("predict", IMAGE, bad, "--checkpoint", ckpt, "--out", out, match="broken.png: not a readable image")
    assert not out.exists()
    fail("predict", tmp_path / "absent.png", "--checkpoint", ckpt, "--out", out, match="absent.png: image not found")


@pytest.mark.parametrize("stride", [0, 33, -1])
def test_bad_stride(ckpt, tmp_path, stride):
    fail("predict", IMAGE, "--checkpoint", ckpt, "--out", tmp_path / "p", "--stride", stride, match="--stride")
    assert not (tmp_path / "p").exists()


def test_missing_config_beside_checkpoint(ckpt, tmp_path):
    lone = tmp_path / "lone.ckpt"
    shutil.copy(ckpt, lone)
    fail("predict", IMAGE, "--checkpoint", lone, "--out", tmp_path / "p", match="no config beside the checkpoint")


def test_export_mindir_runs_and_matches(ckpt, tmp_path):
    out = tmp_path / "m.mindir"
    result = CliRunner().invoke(cli.main, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--size", "40x56"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [WRITTEN, "m.mindir"]  # and no temporary
    setup_context("CPU", "graph", 0)
    graph = ms.nn.GraphCell(ms.load(str(out)))
    from settings.files import load_config
    net = load_model(ckpt, load_config(ckpt.with_suffix(".yaml")))
    x = ms.Tensor(np.random.RandomState(0).randn(1, 3, 40, 56).astype(np.float32))
    np.testing.assert_allclose(graph(x).asnumpy(), net(x).asnumpy(), atol=1e-5)
    fail("export", "--checkpoint", ckpt, "--out", tmp_path / "x.mindir", "--size", "40by56", match="--size")
    fail("export", "--checkpoint", ckpt, "--out", tmp_path / "x.onnx", "--size", "40x56", "--format", "mindir",
         match="must end in .mindir")

"""--device on every computing command (a device MindSpore cannot use: exit 2 naming it), and the
exact count reduction's arithmetic (the collective itself runs in tests/test_train_dist.py)."""
from __future__ import annotations

import mindspore as ms
import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import cli
from base.device import from_limbs, to_limbs
from settings.datasets import DatasetEval
from test_datasets_model import TABLE, TINY, save_tiny, shapes_data  # noqa: F401  (shapes_data: a fixture)


def test_counts_survive_a_float32_sum_of_limbs_exactly():
    rng = np.random.default_rng(0)
    ranks = [rng.integers(0, 2**40, size=(19, 20), dtype=np.int64) for _ in range(256)]
    ranks[0][0, 0] = 2**47 - 1  # every limb at its maximum
    summed = np.sum([to_limbs(r) for r in ranks], axis=0, dtype=np.float32)  # what AllReduce computes
    assert summed.max() < 2**24  # each limb's sum is exact in float32
    assert np.array_equal(from_limbs(summed), np.sum(ranks, axis=0))
    # A plain float32 sum of the counts would not be exact.
    assert not np.array_equal(np.sum([r.astype(np.float32) for r in ranks], axis=0).astype(np.int64),
                              np.sum(ranks, axis=0))


no_gpu = pytest.mark.skipif(ms.device_context.gpu.is_available(), reason="this machine has a GPU MindSpore can use")


def invoke(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A checkpoint whose config says device_target GPU, and a 32x48 image: (ckpt, image)."""
    work = tmp_path_factory.mktemp("device")
    ckpt = save_tiny(work / "m.ckpt", 3, (TABLE, DatasetEval(0, 0, 32, 32)))
    beside = ckpt.with_suffix(".yaml")
    beside.write_text(beside.read_text().replace("device_target: CPU", "device_target: GPU"))
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(work / "im.png")
    return ckpt, work / "im.png"


@no_gpu
@pytest.mark.parametrize("command", ["predict", "eval", "export", "info", "train"])
def test_device_gpu_without_one_is_exit_2_naming_it_before_anything_is_written(tiny, shapes_data, tmp_path,  # noqa: F811
                                                                              command):
    ckpt, image = tiny
    out = tmp_path / "out"
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**TINY, "model": {**TINY["model"], "n_cls": 3}}))
    args = {"predict": [image, "--checkpoint", ckpt, "--out", out],
            "eval": ["--checkpoint", ckpt, "--data", shapes_data, "--json", out],
            "export": ["--checkpoint", ckpt, "--out", tmp_path / "m.onnx"],
            "info": ["--checkpoint", ckpt, "--measure"],
            "train": ["--config", config, "--data", shapes_data, "--out", out]}[command]
    code, output = invoke(command, *args, "--device", "GPU")
    assert code == 2, output
    assert "error: device GPU: MindSpore" in output and "cannot use it on this machine" in output
    assert "Traceback" not in output
    assert not list(tmp_path.glob("out*/**/*.ckpt")) and not (tmp_path / "m.onnx").exists()


@no_gpu
def test_the_configs_device_is_the_default_and_device_overrides_it_and_is_named(tiny, tmp_path):
    ckpt, image = tiny  # its config says GPU
    code, output = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / "a")
    assert code == 2 and "error: device GPU:" in output
    code, output = invoke("predict", image, "--checkpoint", ckpt, "--out", tmp_path / "b", "--device", "cpu")
    assert code == 0, output
    assert "runtime mindspore on CPU" in output

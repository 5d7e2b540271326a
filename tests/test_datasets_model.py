"""The class table travels with the model: checkpoints carry it, `predict` paints it, `train` takes
the data's classes and refuses a config with others, `convert-weights` brings an official ADE20K
release's 150 classes; checkpoints written before the table read as Cityscapes."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

pytest.importorskip("mindspore")

import cli  # noqa: E402
from base.class_table import CITYSCAPES, ClassTable  # noqa: E402
from settings.datasets import DatasetEval, load_dataset  # noqa: E402
from settings.schema import config_from_dict  # noqa: E402

FIXTURES = Path(__file__).parent / "fixtures"
ADE_RELEASE = FIXTURES / "golden_ade20k" / "release"
# Colours unlike Cityscapes' first three, so a Cityscapes-painted output cannot pass.
TABLE = ClassTable("shapes", ("ground", "disc", "bar"), ((1, 2, 3), (250, 0, 250), (0, 250, 0)))
TINY = {
    "seed": 0,
    "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "patch_size": 8, "image_size": [32, 32],
              "drop_path_rate": 0.0, "decoder": {"name": "linear", "n_layers": 0, "dropout": 0.0},
              "pretrained": "none"},
    "data": {"crop_size": 32, "base_size": [64, 32], "ratio_range": [1.0, 1.0], "num_parallel_workers": 1,
             "photometric": {"enabled": False}},
    "train": {"iterations": 2, "batch_size": 2, "checkpoint_every": 2, "eval_every": 0, "log_every": 1},
    "eval": {"window_size": 32, "window_stride": 32, "infer_size": 0, "batch_windows": 2},
}


def invoke(*args):
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    return result.exit_code, result.output


def tiny_config(path: Path, n_cls) -> Path:
    data = json.loads(json.dumps(TINY))
    data["model"]["n_cls"] = n_cls
    config_from_dict(data)
    path.write_text(yaml.safe_dump(data))
    return path


def save_tiny(path: Path, n_cls: int, dataset=None) -> Path:
    from model.segmenter import build_segmenter
    from weights.checkpoint import save_model

    data = json.loads(json.dumps(TINY))
    data["model"]["n_cls"] = n_cls
    cfg = config_from_dict(data)
    save_model(build_segmenter(cfg.model), path, cfg, dataset=dataset)
    return path


def build_shapes(root: Path, ignore: int = 255) -> Path:
    """A 3-class folder data set (flat discs and bars on ground, the top row unlabelled: `ignore`),
    built by build-mindrecord; its output folder."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("val", 2)):
        for i in range(n):
            label = np.zeros((32, 64), np.uint8)
            yy, xx = np.indices(label.shape)
            label[(yy - 16) ** 2 + (xx - 16 - 4 * i) ** 2 < 64] = 1
            label[4:28, 44 + i:50 + i] = 2
            label[0] = ignore
            rgb = TABLE.colorize(label) // 2 + rng.integers(0, 60, (32, 64, 3), dtype=np.uint8)
            for folder, array in (("images", rgb), ("labels", label)):
                (root / folder / split).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / split / f"s{i}.png")
    dataset = root / "shapes.yaml"
    dataset.write_text(yaml.safe_dump({
        "name": TABLE.dataset, "classes": list(TABLE.names), "palette": [list(c) for c in TABLE.palette],
        "img_dir": "images/{split}", "ann_dir": "labels/{split}", "img_suffix": ".png", "seg_map_suffix": ".png",
        "ignore_index": ignore, "eval": {"infer_size": 0, "window": 32, "stride": 32}}))
    code, output = invoke("build-mindrecord", "--dataset", dataset, "--root", root, "--out", root / "mr",
                          "--workers", "1")
    assert code == 0, output
    return root / "mr"


@pytest.fixture(scope="module")
def shapes_data(tmp_path_factory) -> Path:
    return build_shapes(tmp_path_factory.mktemp("shapes"))


def test_predict_writes_class_indices_and_the_checkpoints_palette(tmp_path):
    from weights.checkpoint import checkpoint_classes

    ckpt = save_tiny(tmp_path / "m.ckpt", 3, (TABLE, DatasetEval(0, 0, 32, 32)))
    assert checkpoint_classes(ckpt) == TABLE
    rgb = np.random.default_rng(1).integers(0, 256, (40, 72, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "photo.png")
    code, output = invoke("predict", tmp_path / "photo.png", "--checkpoint", ckpt, "--out", tmp_path / "out",
                          "--overlay", "0.5")
    assert code == 0, output
    assert "3 classes (shapes)" in output
    ids = np.asarray(Image.open(tmp_path / "out" / "photo.png"))
    colour = np.asarray(Image.open(tmp_path / "out" / "photo_color.png"))
    over = np.asarray(Image.open(tmp_path / "out" / "photo_overlay.png")).astype(int)
    assert ids.shape == (40, 72) and ids.max() < 3
    assert np.array_equal(colour, np.asarray(TABLE.palette, np.uint8)[ids])
    assert np.array_equal(over, (rgb.astype(int) + colour) // 2)


def test_checkpoint_without_a_class_table_reads_as_cityscapes(tmp_path):
    from weights.checkpoint import checkpoint_dataset

    table, protocol = checkpoint_dataset(save_tiny(tmp_path / "old.ckpt", 19))
    assert table == CITYSCAPES and protocol == load_dataset("cityscapes").eval
    # An older checkpoint of another class count cannot be painted as Cityscapes: refused, named.
    old = save_tiny(tmp_path / "old150.ckpt", 150)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "p.png")
    code, output = invoke("predict", tmp_path / "p.png", "--checkpoint", old, "--out", tmp_path / "out")
    assert code == 2 and f"error: {old}: the model predicts 150 classes, its class table (cityscapes) has 19" \
        in output, output
    assert not (tmp_path / "out").exists()


def test_train_refuses_a_config_with_other_classes_naming_both_before_run_exists(shapes_data, tmp_path):
    config = tiny_config(tmp_path / "c19.yaml", 19)
    code, output = invoke("train", "--config", config, "--data", shapes_data, "--out", tmp_path / "run")
    assert code == 2, output
    assert f"model.n_cls is 19 in {config}, the data at {shapes_data}/train has 3 classes (shapes)" in output
    assert not (tmp_path / "run").exists()


def test_train_takes_the_data_classes_and_its_checkpoints_carry_them(shapes_data, tmp_path):
    from weights.checkpoint import checkpoint_dataset

    code, output = invoke("train", "--config", tiny_config(tmp_path / "c.yaml", None), "--data", shapes_data,
                          "--out", tmp_path / "run")
    assert code == 0, output
    ckpt = tmp_path / "run" / "checkpoints" / "step_0000002.ckpt"
    table, protocol = checkpoint_dataset(ckpt)
    assert table == TABLE and protocol == DatasetEval(0, 0, 32, 32)
    assert yaml.safe_load(ckpt.with_suffix(".yaml").read_text())["model"]["n_cls"] == 3


def test_convert_official_ade20k_release_brings_its_150_classes(tmp_path):
    from weights.checkpoint import checkpoint_config, checkpoint_dataset

    out = tmp_path / "ade.ckpt"
    code, output = invoke("convert-weights", ADE_RELEASE, "--out", out)
    assert code == 0 and "150 classes (ade20k)" in output, output
    table, protocol = checkpoint_dataset(out)
    ade = load_dataset("ade20k")
    assert table == ade.class_table() and table.names[:2] == ("wall", "building, edifice")
    assert protocol == ade.eval
    # The release's own windows (its variant.yml) and the long-side limit at ADE20K's ratio (4:1).
    e = checkpoint_config(out).eval
    assert (e.infer_size, e.max_long_side, e.window_size, e.window_stride) == (32, 128, 32, 32)


def test_npz_import_takes_the_classes_of_the_data_set(tmp_path):
    from weights.checkpoint import checkpoint_classes

    npz = FIXTURES / "golden" / "vit_golden_augreg.npz"
    cfg = {"model": {"d_model": 64, "n_heads": 2, "n_layers": 2, "patch_size": 8, "image_size": [48, 48],
                     "n_cls": None}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    code, output = invoke("convert-weights", npz, "--config", tmp_path / "c.yaml", "--out", tmp_path / "n.ckpt")
    assert code == 2 and "pass --dataset" in output, output
    code, output = invoke("convert-weights", npz, "--config", tmp_path / "c.yaml", "--dataset", "pascal_context",
                          "--out", tmp_path / "n.ckpt")
    assert code == 0 and "60 classes (pascal_context)" in output, output
    assert checkpoint_classes(tmp_path / "n.ckpt") == load_dataset("pascal_context").class_table()


def test_inspect_pipeline_checks_the_config_against_the_data_and_draws_its_void_as_the_checkerboard(tmp_path):
    data = build_shapes(tmp_path / "shapes7", ignore=7)
    look = tmp_path / "look"
    # As train: a config with another ignore index or class count is refused, naming both.
    for config, what in ((tiny_config(tmp_path / "c.yaml", None), "data.ignore_index is 255"),
                         (tiny_config(tmp_path / "c19.yaml", 19), "model.n_cls is 19")):
        code, output = invoke("inspect-pipeline", "--config", config, "--data", data, "--out", look, "--n", 1)
        assert code == 2 and what in output and "7" in output, output
        assert not look.exists()
    code, output = invoke("inspect-pipeline", "--config", tmp_path / "c.yaml", "--data", data, "--out", look,
                          "--n", 1, "--set", "data.ignore_index=7")
    assert code == 0, output
    panel = np.asarray(Image.open(look / "sample_000.png")).astype(int)
    image, over = panel[:, :32], panel[:, 32:]
    # The top row (value 7, the data's ignore) is blended with the checkerboard's 8-pixel squares.
    checker = np.where(np.arange(32) // 8 % 2 == 0, 255, 0)[:, None]
    assert np.array_equal(over[0], (image[0] + checker) // 2)

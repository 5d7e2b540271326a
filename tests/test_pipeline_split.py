"""train_dataset and inspect-pipeline over a split built by make-sample + build-mindrecord."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from settings.files import save_config

from settings.schema import Config
from mindrecords.manifest import MindRecordError
from pipelines.inspection import panel
from pipelines.train_pipeline import train_dataset
from base.class_table import CITYSCAPES

CROP = 32


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from prep.build import build
    from prep.sample import make_sample

    work = tmp_path_factory.mktemp("split")
    make_sample(work / "cityscapes", n_train=6, n_val=0, height=64, width=128, seed=0)
    build(work / "cityscapes", work / "mindrecord", ["train"], workers=1, echo=lambda *a, **k: None)
    return work / "mindrecord"


def _cfg(batch=2) -> Config:
    cfg = Config()
    cfg.train.batch_size = batch
    cfg.data.crop_size = CROP
    cfg.data.base_size = [128, 64]
    return cfg


def test_train_dataset_reads_the_built_split(built):
    batches = list(train_dataset(_cfg(), built).create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert len(batches) == 3
    for images, labels, valid in batches:
        assert images.shape == (2, CROP, CROP, 3) and images.dtype == np.uint8
        assert labels.shape == (2, CROP, CROP) and labels.dtype == np.uint8
        assert (valid == CROP).all()  # 64x128 frames scaled by 0.5..2.0 always cover a 32 crop
        assert set(np.unique(labels)) <= set(range(19)) | {255}
    # Each of 2 ranks gets 3 of the 6 samples: one batch of 2.
    assert train_dataset(_cfg(), built, rank=1, group_size=2).get_dataset_size() == 1


def test_split_too_small_for_the_ranks_names_the_split(built):
    with pytest.raises(MindRecordError, match=r"mindrecord/train: 6 samples cannot give each of 2 rank\(s\) one batch"):
        train_dataset(_cfg(batch=4), built, rank=0, group_size=2)


def test_missing_split_names_the_folder(built):
    cfg = _cfg()
    cfg.data.train_split = "extra"
    with pytest.raises(MindRecordError, match="extra"):
        train_dataset(cfg, built)


def test_overlay_blends_classes_and_marks_ignore():
    cfg = Config()
    label = np.zeros((16, 16), np.uint8)
    label[:, 8:] = 255
    label[:4, :8] = 13
    image = np.full((16, 16, 3), 153, np.uint8)
    panel_ = panel(image, label, cfg)
    raw = np.full((16, 16, 3), 153, np.uint8)
    assert panel_.shape == (16, 32, 3)
    assert np.array_equal(panel_[:, :16], raw)
    blend = panel_[:, 16:].astype(int)
    colours = CITYSCAPES.colorize(label[:, :8].astype(np.uint8)).astype(int)
    assert np.array_equal(blend[:, :8], (153 + colours) // 2)
    # Ignore: a checkerboard of (153 + 255) // 2 and 153 // 2, unlike any class colour blend.
    assert set(np.unique(blend[:, 8:])) == {153 // 2, (153 + 255) // 2}


def test_inspect_pipeline_writes_overlay_pngs(built, tmp_path):
    from cli import main

    config = tmp_path / "cfg.yaml"
    save_config(_cfg(), config)
    out = tmp_path / "inspect"
    result = CliRunner().invoke(main, ["inspect-pipeline", "--config", str(config), "--data", str(built),
                                       "--n", "4", "--out", str(out), "--set", "data.flip_prob=1.0"])
    assert result.exit_code == 0, result.output
    assert "saved 4 samples" in result.output
    files = sorted(out.glob("*.png"))
    assert [f.name for f in files] == [f"sample_{k:03d}.png" for k in range(4)]
    for f in files:
        panel = cv2.imread(str(f))
        assert panel.shape == (CROP, 2 * CROP, 3)
        assert not np.array_equal(panel[:, :CROP], panel[:, CROP:])


def test_inspect_pipeline_bad_inputs_exit_2(built, tmp_path):
    from cli import main

    config = tmp_path / "cfg.yaml"
    save_config(_cfg(), config)
    runner = CliRunner()
    missing = runner.invoke(main, ["inspect-pipeline", "--config", str(config), "--data", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "o")])
    assert missing.exit_code == 2 and "none" in missing.output and "error:" in missing.output
    bad_key = runner.invoke(main, ["inspect-pipeline", "--config", str(config), "--data", str(built),
                                   "--out", str(tmp_path / "o"), "--set", "data.crop=5"])
    assert bad_key.exit_code == 2 and "data.crop" in bad_key.output
    blocker = tmp_path / "file"
    blocker.write_text("")
    bad_out = runner.invoke(main, ["inspect-pipeline", "--config", str(config), "--data", str(built),
                                   "--out", str(blocker / "sub")])
    assert bad_out.exit_code == 2 and "file/sub" in bad_out.output


def test_list_ids_prints_each_ranks_share_of_an_epoch(built, tmp_path):
    from cli import main
    from mindrecords.manifest import read_manifest

    config = tmp_path / "cfg.yaml"
    save_config(_cfg(), config)
    everything = set(read_manifest(built, "train", columns=["id"]).column("id").to_pylist())

    def ids(*extra):
        r = CliRunner().invoke(main, ["inspect-pipeline", "--config", str(config), "--data", str(built), "--list-ids",
                                      *map(str, extra)])
        assert r.exit_code == 0, r.output
        return r.output.split()

    whole = ids("--epoch", 1)
    assert sorted(whole) == sorted(everything) and whole == ids("--epoch", 1) and whole != ids("--epoch", 2)
    r0, r1 = ids("--epoch", 1, "--rank", 0, "--ranks", 4), ids("--epoch", 1, "--rank", 1, "--ranks", 4)
    assert len(r0) == len(r1) == 1 and r0 != r1  # floor(6 / 4) each, disjoint
    bad = CliRunner(mix_stderr=False).invoke(main, ["inspect-pipeline", "--config", str(config), "--data", str(built),
                                                    "--list-ids", "--rank", "2", "--ranks", "2"])
    assert bad.exit_code == 2 and "--rank 2: must be below --ranks 2" in bad.stderr

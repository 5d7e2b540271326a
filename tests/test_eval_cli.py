"""`cli.py eval` end to end on the generated sample: official agreement, export, predict parity, bad input."""
from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from settings.files import apply_overrides, save_config
from settings.schema import Config
from evaluate.metrics import ConfusionMatrix, compute_metrics
from base.labels import CLASS_NAMES, label_to_train_lut
from test_eval_metrics import assert_agrees_with_official, official_scores

H, W = 96, 192
N_VAL = 3
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.decoder.n_layers=1",
        "model.image_size=[64,64]", "model.drop_path_rate=0.0", "eval.window_size=64", "eval.window_stride=48",
        "eval.infer_size=0", "eval.batch_windows=3", "mode=pynative", "data.num_parallel_workers=1"]
JSON_KEYS = {"written_by", "mIoU", "per_class", "categories", "pixel_accuracy", "aAcc", "mAcc", "IoU", "Acc",
             "confusion", "images", "seconds"}


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def tiny_checkpoint(folder: Path, extra=()):
    """A randomly initialised tiny model saved the way `train` saves (with optimizer./state. entries)."""
    import mindspore as ms

    from weights.checkpoint import save_model
    from base.device import setup_context
    from model.segmenter import build_segmenter

    cfg = apply_overrides(Config(), TINY + list(extra), "test")
    setup_context("CPU", "pynative", 0)
    ckpt = folder / "tiny.ckpt"
    net = build_segmenter(cfg.model)
    moment = ms.Parameter(ms.Tensor(np.zeros((1, 1, 32), np.float32)), name="optimizer.moments.encoder.cls_token")
    save_model(net, ckpt, cfg, extra={"state.step": ms.Tensor(np.array(3, np.int64)), moment.name: moment})
    return ckpt


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """make-sample -> build-mindrecord (val in 1-image shards, plus an unlabeled test split) + a tiny model."""
    work = tmp_path_factory.mktemp("eval")
    root, out = work / "cityscapes", work / "mindrecord"
    r = run("make-sample", "--out", root, "--train", 0, "--val", N_VAL, "--height", H, "--width", W, "--seed", 1)
    assert r.exit_code == 0, r.output + r.stderr
    # A test split as the benchmark ships it: real images, all-void labelIds.
    for img in sorted((root / "leftImg8bit" / "val").glob("*/*_leftImg8bit.png"))[:2]:
        dst = root / "leftImg8bit" / "test" / img.parent.name / img.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(img, dst)
        gt = root / "gtFine" / "test" / img.parent.name / img.name.replace("leftImg8bit", "gtFine_labelIds")
        gt.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(gt), np.zeros((H, W), np.uint8))
    r = run("build-mindrecord", "--root", root, "--out", out, "--splits", "val,test", "--shard-size", 1,
            "--workers", 1)
    assert r.exit_code == 0, r.output + r.stderr
    return {"root": root, "out": out, "ckpt": tiny_checkpoint(work)}


def gt_files(root: Path, split="val"):
    return sorted((root / "gtFine" / split).glob("*/*_gtFine_labelIds.png"))


def prediction_for(pred_root: Path, gt: Path) -> Path:
    """The official matching rule: exactly one `{city}_{seq}_{frame}*.png` under the prediction root."""
    stem = gt.name.split("_gtFine")[0]
    hits = [Path(d) / f for d, _, files in os.walk(pred_root) for f in fnmatch.filter(files, f"{stem}*.png")]
    assert len(hits) == 1, f"{gt.name}: {len(hits)} predictions"
    return hits[0]


def no_partials(folder: Path):
    return [p.name for p in folder.iterdir() if ".partial-" in p.name or ".old-" in p.name]


def test_eval_agrees_with_official_and_saved_labelids_round_trip(built, tmp_path):
    preds, out_json = tmp_path / "preds", tmp_path / "metrics.json"
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--infer-size", 80, "--flip",
            "--scales", "0.75,1.0", "--save-predictions", preds, "--json", out_json)
    assert r.exit_code == 0, r.output + r.stderr
    assert "mIoU" in r.output and "pixel accuracy" in r.output
    metrics = json.loads(out_json.read_text())
    assert set(metrics) == JSON_KEYS
    assert metrics["images"] == N_VAL and metrics["seconds"] > 0
    assert 0.0 <= metrics["mIoU"] <= 1.0
    assert list(metrics["per_class"]) == list(CLASS_NAMES)
    assert f"{100 * metrics['mIoU']:7.2f}" in r.output

    gts = gt_files(built["root"])
    pred_files = [prediction_for(preds / "labelIds", g) for g in gts]
    assert_agrees_with_official(metrics, official_scores(pred_files, gts))

    # labelIds back to trainIds against the ground truth: the very same confusion matrix.
    lut = label_to_train_lut()
    cm = ConfusionMatrix()
    for g, p in zip(gts, pred_files):
        pred = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert pred.shape == (H, W) and pred.dtype == np.uint8
        cm.update(lut[cv2.imread(str(g), cv2.IMREAD_UNCHANGED)], lut[pred])
        assert p.parent.name == p.name.split("_")[0]  # labelIds/{city}/{id}.png
        color = cv2.imread(str(preds / "color" / p.parent.name / p.name))
        assert color.shape == (H, W, 3)
    expected = compute_metrics(cm.matrix)
    assert {k: metrics[k] for k in expected} == expected
    assert json.loads((preds / "manifest.json").read_text())["images"] == N_VAL
    assert no_partials(tmp_path) == []


def test_eval_and_predict_give_identical_maps(built, tmp_path):
    preds, pred_out = tmp_path / "eval", tmp_path / "predict"
    opts = ["--infer-size", 80, "--flip", "--batch-windows", 2]
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 1,
            "--save-predictions", preds, *opts)
    assert r.exit_code == 0, r.output + r.stderr
    (saved,) = (preds / "labelIds").glob("*/*.png")
    image = next((built["root"] / "leftImg8bit" / "val").glob(f"*/{saved.stem}_leftImg8bit.png"))
    r = run("predict", image, "--checkpoint", built["ckpt"], "--out", pred_out, *opts)
    assert r.exit_code == 0, r.output + r.stderr
    from_predict = cv2.imread(str(pred_out / f"{image.stem}.png"), cv2.IMREAD_UNCHANGED)
    from_eval = label_to_train_lut()[cv2.imread(str(saved), cv2.IMREAD_UNCHANGED)]
    np.testing.assert_array_equal(from_eval, from_predict)


def test_eval_through_onnxruntime_matches_mindspore(built, tmp_path):
    """--runtime onnxruntime: the same windows through ONNX Runtime, the same scores and maps."""
    scores, maps = {}, {}
    for runtime in ("mindspore", "onnxruntime"):
        out_json, preds = tmp_path / f"{runtime}.json", tmp_path / runtime
        r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 2, "--json", out_json,
                "--save-predictions", preds, "--runtime", runtime)
        assert r.exit_code == 0, r.output + r.stderr
        scores[runtime] = json.loads(out_json.read_text())
        maps[runtime] = np.stack([cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
                                  for p in sorted((preds / "labelIds").glob("*/*.png"))])
    assert scores["onnxruntime"]["images"] == 2
    assert scores["onnxruntime"]["mIoU"] == pytest.approx(scores["mindspore"]["mIoU"], abs=1e-3)
    assert (maps["onnxruntime"] == maps["mindspore"]).mean() > 0.999


def test_checkpoint_from_convert_weights(built, tmp_path):
    """An official-layout release (the golden fixture: 19 classes) imported by convert-weights."""
    release = Path(__file__).parent / "fixtures" / "golden" / "seg_golden_mask"
    ckpt = tmp_path / "release.ckpt"
    r = run("convert-weights", release, "--out", ckpt)
    assert r.exit_code == 0, r.output + r.stderr
    out_json = tmp_path / "m.json"
    r = run("eval", "--checkpoint", ckpt, "--data", built["out"], "--max-images", 1, "--infer-size", 0,
            "--window", 64, "--stride", 48, "--json", out_json)
    assert r.exit_code == 0, r.output + r.stderr
    metrics = json.loads(out_json.read_text())
    assert metrics["images"] == 1 and 0.0 <= metrics["mIoU"] <= 1.0


def test_test_split_exports_without_metrics(built, tmp_path):
    preds, out_json = tmp_path / "test_preds", tmp_path / "test.json"
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--split", "test",
            "--save-predictions", preds, "--json", out_json)
    assert r.exit_code == 0, r.output + r.stderr
    assert "no ground truth" in r.output
    metrics = json.loads(out_json.read_text())
    assert set(metrics) == JSON_KEYS and metrics["mIoU"] is None and metrics["images"] == 2
    assert len(list((preds / "labelIds").glob("*/*.png"))) == 2
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--split", "test")
    assert r.exit_code == 2 and "--save-predictions" in r.stderr


def test_split_never_built_is_a_clear_error(built, tmp_path):
    out_json = tmp_path / "m.json"
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--split", "train", "--json", out_json)
    assert r.exit_code == 2
    assert str(built["out"] / "train") in r.stderr and "never built" in r.stderr
    assert not out_json.exists()


def test_checkpoint_class_count_must_match_the_data(built, tmp_path):
    ckpt = tiny_checkpoint(tmp_path, ["model.n_cls=7"])
    r = run("eval", "--checkpoint", ckpt, "--data", built["out"], "--json", tmp_path / "m.json")
    assert r.exit_code == 2 and str(ckpt) in r.stderr and "model.n_cls is 7" in r.stderr and "has 19 classes" in r.stderr
    assert not (tmp_path / "m.json").exists()


def test_checkpoint_not_matching_its_config(built, tmp_path):
    cfg = apply_overrides(Config(), TINY + ["model.d_model=64"], "test")
    other = tmp_path / "other.yaml"
    save_config(cfg, other)
    r = run("eval", "--checkpoint", built["ckpt"], "--config", other, "--data", built["out"])
    assert r.exit_code == 2 and str(built["ckpt"]) in r.stderr


@pytest.mark.parametrize("case", ["file", "parent_is_file", "foreign_dir"])
def test_unwritable_prediction_dir_is_refused_before_work(built, tmp_path, case):
    blocker = tmp_path / "blocker"
    if case == "file":
        blocker.write_text("x")
        target = blocker
    elif case == "parent_is_file":
        blocker.write_text("x")
        target = blocker / "preds"
    else:
        blocker.mkdir()
        (blocker / "notes.txt").write_text("mine")
        target = blocker
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--save-predictions", target,
            "--json", tmp_path / "m.json")
    assert r.exit_code == 2 and str(target) in r.stderr
    assert not (tmp_path / "m.json").exists()
    assert no_partials(tmp_path) == []
    if case == "foreign_dir":
        assert [p.name for p in blocker.iterdir()] == ["notes.txt"]


def test_damaged_shard_mid_way_leaves_nothing_half_written(built, tmp_path):
    out = tmp_path / "mindrecord"
    shutil.copytree(built["out"], out)
    shards = sorted(p for p in (out / "val").glob("val.mindrecord*") if p.suffix != ".db")
    assert len(shards) == N_VAL
    with open(shards[1], "r+b") as fh:  # the .db index stays intact: found only when read
        fh.truncate(fh.seek(0, 2) // 3)
    preds, out_json = tmp_path / "preds", tmp_path / "m.json"
    r = run("eval", "--checkpoint", built["ckpt"], "--data", out, "--save-predictions", preds, "--json", out_json)
    assert r.exit_code == 2, r.output + r.stderr
    assert f"{shards[1]}: damaged shard" in r.stderr
    assert not out_json.exists() and not preds.exists() and no_partials(tmp_path) == []


def test_interrupted_run_keeps_the_previous_complete_set(built, tmp_path):
    from settings.files import resolve_config
    from evaluate.evaluator import evaluate_split
    from evaluate.sliding_window import run_windows
    from weights.checkpoint import load_model

    cfg = resolve_config(built["ckpt"], None)
    net = load_model(built["ckpt"], cfg)
    preds = tmp_path / "preds"
    first = evaluate_split(net, cfg, built["out"], "val", save_predictions=preds, show_progress=False)
    before = {p.relative_to(preds): p.read_bytes() for p in preds.rglob("*") if p.is_file()}
    assert first["images"] == N_VAL and len(before) == 3 * N_VAL + 2  # + manifest.json and the ownership marker

    class Interrupting:
        """The network, interrupted (Ctrl-C) in the middle of the second image."""

        def __init__(self):
            self.calls = 0
            self.training = False

        def set_train(self, mode=True):
            net.set_train(mode)

        def __call__(self, x):
            self.calls += 1
            if self.calls > 4:  # 3 window batches per image
                raise KeyboardInterrupt
            return run_windows(net, x)  # a NumPy runner wrapping the MindSpore network

    with pytest.raises(KeyboardInterrupt):
        evaluate_split(Interrupting(), cfg, built["out"], "val", save_predictions=preds, show_progress=False)
    after = {p.relative_to(preds): p.read_bytes() for p in preds.rglob("*") if p.is_file()}
    assert after == before and no_partials(tmp_path) == []


def test_a_folder_holding_a_manifest_json_is_never_deleted(built, tmp_path):
    """A user's folder that happens to hold a file named manifest.json is not a prediction set."""
    mine = tmp_path / "mine"
    (mine / "sub").mkdir(parents=True)
    (mine / "manifest.json").write_text('{"images": 3}')
    (mine / "notes.txt").write_text("keep me")
    (mine / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()}
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--save-predictions", mine)
    assert r.exit_code == 2 and f"{mine}: not empty and not an earlier prediction set" in r.stderr
    assert {p.relative_to(mine): p.read_bytes() for p in mine.rglob("*") if p.is_file()} == before
    assert no_partials(tmp_path) == []


@pytest.mark.parametrize("change", ["added", "edited"])
def test_an_earlier_set_the_user_changed_is_kept(built, tmp_path, change):
    preds = tmp_path / "preds"
    args = ("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 1, "--save-predictions", preds)
    r = run(*args)
    assert r.exit_code == 0, r.output + r.stderr
    assert preds.stat().st_mode & 0o777 == 0o755  # mkdtemp's 0700 is not what a shared output needs
    r = run(*args)  # an untouched earlier set is replaced
    assert r.exit_code == 0, r.output + r.stderr
    if change == "added":
        (preds / "labelIds" / "my_notes.txt").write_text("mine")
    else:
        (victim,) = (preds / "labelIds").glob("*/*.png")
        victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    before = {p.relative_to(preds): p.read_bytes() for p in preds.rglob("*") if p.is_file()}
    r = run(*args)
    assert r.exit_code == 2 and "not an earlier prediction set" in r.stderr
    assert ("which this project did not write" if change == "added" else "was changed") in r.stderr
    assert {p.relative_to(preds): p.read_bytes() for p in preds.rglob("*") if p.is_file()} == before


def test_unwritable_outputs_are_refused_before_the_model_loads(built, tmp_path, read_only, monkeypatch):
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)

    def must_not_load(*a, **k):
        raise AssertionError("the model was loaded before the output location was checked")

    monkeypatch.setattr("weights.checkpoint.load_model", must_not_load)
    for extra in (["--save-predictions", locked / "preds"], ["--json", locked / "m.json"]):
        r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], *extra)
        assert r.exit_code == 2, r.output + r.stderr
        assert f"error: {locked}" in r.stderr and "Read-only file system" in r.stderr


def test_damaged_record_names_its_shard_and_record(built, tmp_path):
    from test_build_reliability import damage_record_in_place

    out = tmp_path / "mindrecord"
    shutil.copytree(built["out"], out)
    shards = sorted(p for p in (out / "val").glob("val.mindrecord*") if p.suffix != ".db")
    damage_record_in_place(out, "image", shards[1])  # the PNG no longer decodes; the shard reads fine
    r = run("eval", "--checkpoint", built["ckpt"], "--data", out)
    assert r.exit_code == 2, r.output + r.stderr
    assert f"{shards[1]}: damaged shard (record " in r.stderr and "image bytes damaged" in r.stderr, r.stderr


def test_inspect_pipeline_on_a_damaged_shard(built, tmp_path):
    from settings.files import save_config
    from settings.schema import Config

    out = tmp_path / "mindrecord"
    shutil.copytree(built["out"], out)
    for shard in (out / "val").glob("val.mindrecord*"):
        if shard.suffix != ".db":
            with open(shard, "r+b") as fh:
                fh.truncate(fh.seek(0, 2) // 3)
    cfg = tmp_path / "c.yaml"
    save_config(apply_overrides(Config(), ["data.train_split=val", "data.crop_size=64", "data.base_size=[192,96]",
                                           "data.num_parallel_workers=1"], "test"), cfg)
    r = run("inspect-pipeline", "--config", cfg, "--data", out, "--out", tmp_path / "look", "--n", 2)
    first = sorted(p for p in (out / "val").glob("val.mindrecord*") if p.suffix != ".db")[0]
    assert r.exit_code == 2 and f"error: {first}: damaged shard (unreadable" in r.stderr, r.output + r.stderr
    assert "found in inspect-pipeline" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_demo_baselines_score_every_val_image_of_a_build(built):
    """`python -m evaluate.baseline` (make demo's last line) reads the split as eval does."""
    from evaluate.baseline import baselines
    from evaluate.metrics import ConfusionMatrix, compute_metrics
    from pipelines.eval_pipeline import eval_dataset
    from settings.schema import Config, with_eval_protocol
    from mindrecords.manifest import data_eval_protocol

    r = baselines(built["out"], "val")
    assert r["images"] == N_VAL and 0 <= r["constant_class"] < 19
    cfg = with_eval_protocol(Config(), data_eval_protocol(built["out"], "val"), "test")
    cm = ConfusionMatrix(19)
    for row in eval_dataset(cfg, built["out"], "val").create_dict_iterator(num_epochs=1, output_numpy=True):
        cm.update(row["label"], np.full_like(row["label"], r["constant_class"]))
    assert r["constant_mIoU"] == compute_metrics(cm.matrix)["mIoU"] > 0

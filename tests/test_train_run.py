"""The `train` command end to end on a tiny model and a tiny generated data set:
checkpoints, metrics, curves, resume equivalence, and every bad input the issue lists."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("mindspore")

import cli  # noqa: E402
from settings.schema import config_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

TINY = {
    "seed": 0,
    "model": {"d_model": 32, "n_heads": 2, "n_layers": 2, "patch_size": 8, "image_size": [64, 64],
              "drop_path_rate": 0.2, "decoder": {"name": "mask_transformer", "n_layers": 1, "dropout": 0.0},
              "pretrained": "none"},
    "data": {"crop_size": 64, "base_size": [256, 128], "ratio_range": [0.5, 1.0], "num_parallel_workers": 1},
    "train": {"iterations": 6, "batch_size": 2, "checkpoint_every": 3, "eval_every": 3, "log_every": 2,
              "keep_checkpoints": 2, "optimizer": {"lr": 0.05}},
    "eval": {"window_size": 64, "window_stride": 64, "infer_size": 64, "batch_windows": 2},
}


def write_tiny_config(path: Path, **sections) -> Path:
    import yaml

    data = json.loads(json.dumps(TINY))
    for key, value in sections.items():
        data[key].update(value)
    config_from_dict(data)  # the test config itself must be valid
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """8 train + 2 val generated frames of 128x256, built into MindRecords by the real commands."""
    base = tmp_path_factory.mktemp("train_data")
    py = sys.executable
    subprocess.run([py, str(ROOT / "cli.py"), "make-sample", "--out", str(base / "cs"), "--train", "8", "--val", "2",
                    "--height", "128", "--width", "256"], check=True, capture_output=True)
    subprocess.run([py, str(ROOT / "cli.py"), "build-mindrecord", "--root", str(base / "cs"), "--out",
                    str(base / "mr"), "--shard-size", "4", "--workers", "1"], check=True, capture_output=True)
    return base / "mr"


def run_cli(*args):
    result = CliRunner().invoke(cli.main, ["train", *map(str, args)], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.fixture(scope="session")
def full_run(tiny_data, tmp_path_factory):
    """One uninterrupted 6-step run, shared by the tests that inspect its outputs."""
    from settings.files import load_config
    from train.loop import train

    base = tmp_path_factory.mktemp("full")
    cfg_path = write_tiny_config(base / "tiny.yaml")
    result = train(load_config(cfg_path), tiny_data, base / "run", log=lambda *_: None)
    return cfg_path, base / "run", result


def test_run_writes_checkpoints_metrics_and_curves(full_run):
    from weights.checkpoint import load_model
    from settings.files import load_config

    cfg_path, run, result = full_run
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    # keep_checkpoints=2 of steps 3 and 6, plus the best by val mIoU.
    assert ckpts == ["best.ckpt", "step_0000003.ckpt", "step_0000006.ckpt"]
    assert (run / "checkpoints" / "step_0000006.yaml").is_file()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [2, 4, 6]
    assert [r["step"] for r in records if r["type"] == "val"] == [3, 6]
    assert all(0 <= r["mIoU"] <= 1 for r in records if r["type"] == "val")
    import cv2

    curves = cv2.imread(str(run / "curves.png"))
    assert curves is not None and curves.shape[0] > 100
    # MODEL's loader reads a training checkpoint (ignores optimizer./state. entries).
    net = load_model(run / "checkpoints" / "step_0000006.ckpt", load_config(cfg_path))
    trained = {p.name: p.asnumpy() for p in result.net.get_parameters()}
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), trained[p.name])
    assert result.losses[-1][1] < result.losses[0][1]


def test_resume_matches_uninterrupted_run(full_run, tiny_data, tmp_path):
    from train.loop import train

    cfg_path, run, full = full_run
    # A run "killed" after step 3: its folder as it was then (step 6 outputs removed).
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    for name in ("step_0000006.ckpt", "step_0000006.yaml", "best.ckpt", "best.yaml"):
        (cut / "checkpoints" / name).unlink()
    result = train(None, tiny_data, cut, resume=True, given_config=False, log=lambda *_: None)
    assert [s for s, _ in result.losses] == [4, 5, 6]
    full_losses = dict(full.losses)
    for s, loss in result.losses:
        assert loss == pytest.approx(full_losses[s], rel=1e-5, abs=1e-6)
    a = {p.name: p.asnumpy() for p in full.net.get_parameters()}
    for p in result.net.get_parameters():
        np.testing.assert_allclose(p.asnumpy(), a[p.name], rtol=1e-5, atol=1e-6)
    records = [json.loads(line) for line in (cut / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["type"] == "train"] == [2, 4, 6]


def _snapshot(folder: Path) -> dict:
    """Every file's bytes but the lock's (`base.locks`: the holder is recorded in it)."""
    from base.locks import LOCK_NAME

    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*")
            if p.is_file() and p.name != LOCK_NAME} if folder.exists() else {}


def test_resume_without_checkpoint_is_an_error(tiny_data, tmp_path):
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    code, out = run_cli("--config", cfg, "--data", tiny_data, "--out", tmp_path / "run", "--resume")
    assert code == 2 and "no checkpoint to resume from" in out
    assert not (tmp_path / "run").exists()


def test_resume_from_truncated_checkpoint_is_an_error(full_run, tiny_data, tmp_path):
    _, run, _ = full_run
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    last = cut / "checkpoints" / "step_0000006.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    before = _snapshot(cut)
    code, out = run_cli("--data", tiny_data, "--out", cut, "--resume")
    assert code == 2 and "step_0000006.ckpt" in out and "truncated or damaged" in out
    assert _snapshot(cut) == before


def test_new_run_refuses_a_run_folder_with_checkpoints(full_run, tiny_data, tmp_path):
    cfg_path, run, _ = full_run
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    before = _snapshot(cut)
    code, out = run_cli("--config", cfg_path, "--data", tiny_data, "--out", cut)
    assert code == 2 and "already has checkpoints" in out and "--resume" in out
    assert _snapshot(cut) == before


def test_resume_with_a_different_config_is_an_error(full_run, tiny_data, tmp_path):
    cfg_path, run, _ = full_run
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    code, out = run_cli("--config", cfg_path, "--data", tiny_data, "--out", cut, "--resume",
                        "--set", "train.optimizer.lr=0.1")
    assert code == 2 and "train.optimizer.lr" in out


@pytest.mark.parametrize("sets, expected", [
    (["train.bogus=1"], "unknown key 'train.bogus'"),
    (["train.batch_size=two"], "train.batch_size: expected an integer"),
    (["data.crop_size=512"], "data.crop_size (512) is larger than the scaled images allow"),
    (["train.batch_size=9"], "train.batch_size=9"),
])
def test_bad_config_values_are_errors_naming_the_key(tiny_data, tmp_path, sets, expected):
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    args = ["--config", cfg, "--data", tiny_data, "--out", tmp_path / "run"]
    for item in sets:
        args += ["--set", item]
    code, out = run_cli(*args)
    assert code == 2 and expected in out, out
    assert not (tmp_path / "run").exists()


def test_missing_split_and_damaged_shards_are_errors(tiny_data, tmp_path):
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    only_val = tmp_path / "only_val"
    shutil.copytree(tiny_data / "val", only_val / "val")
    code, out = run_cli("--config", cfg, "--data", only_val, "--out", tmp_path / "run1")
    assert code == 2 and "train" in out and str(only_val) in out
    assert not (tmp_path / "run1").exists()

    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_data, damaged)
    shard = sorted((damaged / "train").glob("train.mindrecord*[0-9]"))[0]
    shard.with_name(shard.name + ".db").unlink()
    code, out = run_cli("--config", cfg, "--data", damaged, "--out", tmp_path / "run2")
    assert code == 2 and shard.name in out
    assert not (tmp_path / "run2").exists()


def test_nonfinite_loss_stops_naming_the_step(tiny_data, tmp_path):
    # lr 1e30 blows the weights up after the first update; the loss turns inf/nan.
    cfg = write_tiny_config(tmp_path / "tiny.yaml", train={"optimizer": {"lr": 1e30, "momentum": 0.9},
                                                            "clip_grad_norm": 0.0, "eval_every": 0,
                                                            "nonfinite_patience": 2})
    code, out = run_cli("--config", cfg, "--data", tiny_data, "--out", tmp_path / "run")
    assert code == 2
    assert "error: step " in out and "consecutive steps even after the loss scaler" in out, out


@pytest.mark.parametrize("level,step_graph", [("O1", "per_block"), ("O2", "per_block"), ("O2", "whole")])
def test_mixed_precision_trains_the_segmenter(full_run, tiny_data, tmp_path, level, step_graph):
    from weights.checkpoint import NON_MODEL_PREFIXES
    from settings.files import load_config
    from train.checkpoint import read_checkpoint
    from train.loop import train

    _, _, reference = full_run  # the same config, seed and data in float32
    cfg = write_tiny_config(tmp_path / "tiny.yaml", train={"amp_level": level, "step_graph": step_graph,
                                                            "eval_every": 0, "iterations": 3})
    result = train(load_config(cfg), tiny_data, tmp_path / "run", log=lambda *_: None)
    losses = [loss for _, loss in result.losses]
    assert all(np.isfinite(losses)), losses
    # Same initial weights and first batch: float16 compute moves the first loss only slightly.
    assert losses[0] == pytest.approx(reference.losses[0][1], rel=2e-2)
    assert losses[0] != reference.losses[0][1]  # it did compute in float16
    entries = read_checkpoint(tmp_path / "run" / "checkpoints" / "step_0000003.ckpt").entries
    weights = {name: p for name, p in entries.items() if not name.startswith(NON_MODEL_PREFIXES)}
    assert len(weights) == len(list(result.net.get_parameters()))
    assert {str(p.dtype) for p in weights.values()} == {"Float32"}  # float32 master weights


def test_pretrained_checkpoint_initializes_the_network(full_run, tmp_path):
    from settings.files import apply_overrides, load_config
    from train.checkpoint import TrainError
    from train.initial_weights import initial_net

    cfg_path, run, result = full_run
    ckpt = run / "checkpoints" / "step_0000006.ckpt"
    cfg = apply_overrides(load_config(cfg_path), [f"model.pretrained={ckpt}"])
    net = initial_net(cfg, log=lambda *_: None)
    trained = {p.name: p.asnumpy() for p in result.net.get_parameters()}
    for p in net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), trained[p.name])
    missing = apply_overrides(cfg, [f"model.pretrained={tmp_path / 'nope.npz'}"])
    with pytest.raises(TrainError, match="model.pretrained: .*nope.npz: file not found"):
        initial_net(missing, log=lambda *_: None)
    wrong = apply_overrides(cfg, ["model.d_model=64", "model.n_heads=2"])
    with pytest.raises(TrainError, match="model.pretrained: .*step_0000006.ckpt"):
        initial_net(wrong, log=lambda *_: None)


def test_truncated_shard_is_an_error_naming_the_shard(tiny_data, tmp_path):
    cfg = write_tiny_config(tmp_path / "tiny.yaml", train={"eval_every": 0})
    damaged = tmp_path / "damaged"
    shutil.copytree(tiny_data, damaged)
    shard = sorted((damaged / "train").glob("train.mindrecord*[0-9]"))[-1]
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 3])
    code, out = run_cli("--config", cfg, "--data", damaged, "--out", tmp_path / "run")
    assert code == 2 and f"error: {shard}: damaged shard (unreadable" in out and "found in epoch 0" in out, out
    assert not list((tmp_path / "run").rglob("*.ckpt"))


def test_new_run_refuses_a_non_empty_folder_without_checkpoints(tiny_data, tmp_path):
    """A run killed before its first checkpoint, or any user folder: config.yaml and metrics.jsonl stay."""
    cfg_path = write_tiny_config(tmp_path / "tiny.yaml")
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "config.yaml").write_text("mine: 1\n")
    (folder / "metrics.jsonl").write_text('{"step": 1}\n')
    before = _snapshot(folder)
    code, out = run_cli("--config", cfg_path, "--data", tiny_data, "--out", folder)
    assert code == 2 and f"error: {folder}: not empty (config.yaml, metrics.jsonl)" in out, out
    assert _snapshot(folder) == before


def test_resuming_a_finished_run_names_its_last_checkpoint(full_run, tiny_data, tmp_path):
    _, run, _ = full_run
    done = tmp_path / "run"
    shutil.copytree(run, done)
    before = _snapshot(done / "checkpoints")
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    assert code == 0, out
    assert "already finished" in out and f"last checkpoint {done / 'checkpoints' / 'step_0000006.ckpt'}" in out
    assert "last checkpoint None" not in out and _snapshot(done / "checkpoints") == before


@pytest.mark.parametrize("case", ["no_val_split", "n_cls", "negative_lr", "nan_lr", "negative_iterations"])
def test_bad_settings_are_refused_before_the_first_step(tiny_data, tmp_path, case):
    data, extra = tiny_data, []
    if case == "no_val_split":
        data = tmp_path / "train_only"
        shutil.copytree(tiny_data / "train", data / "train")
    extra = {"n_cls": ["--set", "model.n_cls=7"], "negative_lr": ["--set", "train.optimizer.lr=-0.01"],
             "nan_lr": ["--set", "train.optimizer.lr=.nan"],
             "negative_iterations": ["--set", "train.iterations=-5"]}.get(case, [])
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    code, out = run_cli("--config", cfg, "--data", data, "--out", tmp_path / "run", *extra)
    want = {"no_val_split": f"error: {data / 'val'}: split 'val' was never built",
            "n_cls": f"error: model.n_cls is 7 in {cfg} with --set, the data at {data}/train has 19 classes (cityscapes)",
            "negative_lr": "train.optimizer.lr (-0.01) must be > 0",
            "nan_lr": "train.optimizer.lr: expected a finite number, got nan",
            "negative_iterations": "train.iterations (-5) must be >= 0"}[case]
    assert code == 2 and want in out, out
    assert "Traceback" not in out and not (tmp_path / "run").exists()


def test_a_failing_validation_keeps_the_checkpoint_of_its_step(tiny_data, tmp_path, monkeypatch):
    from settings.files import load_config
    from train.checkpoint import TrainError
    from train.loop import train

    def broken(*args, **kwargs):
        raise TrainError("validation failed")

    monkeypatch.setattr("train.validation.evaluate_split", broken)
    cfg = write_tiny_config(tmp_path / "tiny.yaml")  # checkpoint and validation both every 3 steps
    with pytest.raises(TrainError, match="validation failed"):
        train(load_config(cfg), tiny_data, tmp_path / "run", log=lambda *_: None)
    assert (tmp_path / "run" / "checkpoints" / "step_0000003.ckpt").is_file()


def test_accumulated_run_resumes_exactly_in_the_middle_of_an_epoch(tiny_data, tmp_path):
    """accumulate 2 at batch 1: 8 batches per epoch make 4 updates; the cut after update 3 falls
    mid-epoch, so the resumed run must skip 6 batches, not 3."""
    from settings.files import load_config
    from train.loop import train

    cfg = write_tiny_config(tmp_path / "tiny.yaml", train={"batch_size": 1, "accumulate": 2, "eval_every": 0})
    full = train(load_config(cfg), tiny_data, tmp_path / "full", record_batches=True, log=lambda *_: None)
    assert len(full.batch_digests) == 12  # 6 updates x 2 micro-batches
    assert len(set(full.batch_digests[:8])) == 8  # epoch 0: every sample once
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    for name in ("step_0000006.ckpt", "step_0000006.yaml"):
        (cut / "checkpoints" / name).unlink()
    resumed = train(None, tiny_data, cut, resume=True, given_config=False, record_batches=True, log=lambda *_: None)
    assert resumed.batch_digests == full.batch_digests[6:]
    assert [s for s, _ in resumed.losses] == [4, 5, 6]
    for (_, a), (_, b) in zip(resumed.losses, full.losses[3:]):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    want = {p.name: p.asnumpy() for p in full.net.get_parameters()}
    for p in resumed.net.get_parameters():
        np.testing.assert_allclose(p.asnumpy(), want[p.name], rtol=1e-5, atol=1e-6)

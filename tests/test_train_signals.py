"""A run that talks and stops cleanly: SIGINT/SIGTERM end it after the step in flight with that
step's checkpoint (a resume from it equals the uninterrupted run), --resume --set extends a run,
the starting weights and the global batch are said, and unset or missing weights are refused."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("mindspore")

from test_train_run import ROOT, full_run, run_cli, tiny_data, write_tiny_config  # noqa: E402,F401


def _signal_at_start(*signums):
    """A `log` that sends `signums` to this process when the run prints its first line (the
    "rank r/n" line: from there on, the run's own handlers are installed)."""
    lines = []

    def log(line):
        lines.append(line)
        if line.startswith("rank 0/1:"):
            for signum in signums:
                os.kill(os.getpid(), signum)
    return log, lines


def test_sigterm_stops_after_the_step_with_its_checkpoint_and_the_resume_equals_the_full_run(
        full_run, tiny_data, tmp_path):  # noqa: F811
    from settings.files import load_config
    from train.loop import train

    _, _, full = full_run
    config = write_tiny_config(tmp_path / "tiny.yaml", train={"global_batch": 8})
    run = tmp_path / "run"
    log, lines = _signal_at_start(signal.SIGTERM)
    before = signal.getsignal(signal.SIGTERM)
    stopped = train(load_config(config), tiny_data, run, log=log)
    assert stopped.stopped_by == signal.SIGTERM and stopped.at_step == 1
    assert signal.getsignal(signal.SIGTERM) is before  # the run's handler is gone again
    # The ordinary checkpoint of the step in flight, although checkpoint_every is 3.
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*.ckpt")) == ["step_0000001.ckpt"]
    start = "initialised from scratch (model.pretrained: none; random weights from seed 0)"
    assert lines.index(start) < next(i for i, line in enumerate(lines) if line.startswith("rank 0/1:"))
    assert ("note: global batch 2 (1 rank(s) x batch 2 x accumulate 1) differs from the recipe's "
            "train.global_batch 8: set train.accumulate=4 or run 4 ranks with msrun (docs/training.md)") in lines
    assert any(line.startswith("SIGTERM: finishing the step in flight") for line in lines)

    resumed = train(None, tiny_data, run, resume=True, given_config=False, log=lambda *_: None)
    assert [s for s, _ in resumed.losses] == [2, 3, 4, 5, 6] and resumed.stopped_by is None
    assert resumed.losses == full.losses[1:]  # exactly: the same batches, weights and RNG state
    want = {p.name: p.asnumpy() for p in full.net.get_parameters()}
    for p in resumed.net.get_parameters():
        np.testing.assert_array_equal(p.asnumpy(), want[p.name], err_msg=p.name)


def test_a_second_signal_stops_at_once_without_a_checkpoint(tiny_data, tmp_path):  # noqa: F811
    from settings.files import load_config
    from train.loop import train

    log, lines = _signal_at_start(signal.SIGINT, signal.SIGINT)
    with pytest.raises(SystemExit) as stop:
        train(load_config(write_tiny_config(tmp_path / "tiny.yaml")), tiny_data, tmp_path / "run", log=log)
    assert stop.value.code == 130 and not list((tmp_path / "run" / "checkpoints").glob("*.ckpt"))
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # pytest's own handler is back


def test_ctrl_c_on_the_command_prints_the_resume_command_and_exits_130(tiny_data, tmp_path):  # noqa: F811
    """The CLI in its own process group (a background job of a non-interactive shell ignores
    SIGINT), interrupted after its first step: MindSpore has run graphs by then, and its runtime
    turns a SIGINT into a SIGTERM unless the run's handler is put back."""
    config = write_tiny_config(tmp_path / "tiny.yaml")
    run = tmp_path / "my run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "cli.py"), "train", "--config", str(config), "--data",
                             str(tiny_data), "--out", str(run)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    out, sent = [], False
    for line in proc.stdout:
        out.append(line)
        if " step 1/6 " in line and not sent:
            os.killpg(proc.pid, signal.SIGINT)  # as the terminal's Ctrl-C: the whole group
            sent = True
    text = "".join(out)
    assert proc.wait(timeout=120) == 130, text
    assert f"resume with: python cli.py train --data {tiny_data} --out '{run}' --resume" in text, text
    stopped = re.search(r"stopped by SIGINT at step (\d)/6 in [\d.]+s on 1 rank\(s\); best val mIoU n/a; last "
                        r"checkpoint (.+\.ckpt)", text)
    assert stopped and int(stopped.group(1)) in (2, 3), text  # the step in flight when the signal came
    ckpt = run / "checkpoints" / f"step_000000{stopped.group(1)}.ckpt"
    assert stopped.group(2) == str(ckpt) and ckpt.is_file() and "Traceback" not in text, text


def test_resume_with_set_extends_the_run_and_changes_nothing_else(full_run, tiny_data, tmp_path):  # noqa: F811
    import yaml

    _, run, _ = full_run
    done = tmp_path / "run"
    shutil.copytree(run, done)
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    assert code == 0 and "trained" not in out, out
    assert (f"{done}: the run had already finished at step 6/6; last checkpoint {done / 'checkpoints'}"
            f"/step_0000006.ckpt. To train longer: python cli.py train --data {tiny_data} --out {done} --resume "
            "--set train.iterations=N (N > 6)") in out, out

    for refused, message in ((["train.optimizer.lr=0.1"], "the run was started with train.optimizer.lr=0.05, --set "
                              "has 0.1; a resume may change only the run's length"),
                             (["train.iterations=5"], "train.iterations: the run would end at step 5, but "),
                             (["train.epochs=9"], "train.epochs: the run stays 6 steps long (train.iterations")):
        code, out = run_cli("--data", tiny_data, "--out", done, "--resume", "--set", *refused)
        assert code == 2 and message in out, out
    assert yaml.safe_load((done / "config.yaml").read_text())["train"]["iterations"] == 6

    code, out = run_cli("--data", tiny_data, "--out", done, "--resume", "--set", "train.iterations=8")
    assert code == 0, out
    assert "run length 6 -> 8 steps (train.iterations): the poly schedule is recomputed over 8 steps from step 6" in out
    assert f"{done / 'config.yaml'}: rewritten for the resumed run (train.iterations 6 -> 8)" in out
    assert yaml.safe_load((done / "config.yaml").read_text())["train"]["iterations"] == 8
    assert (done / "checkpoints" / "step_0000008.ckpt").is_file() and "trained 8 steps (steps 7-8 in this session) in " in out


def test_unset_or_missing_starting_weights_are_refused_before_run_exists(tiny_data, tmp_path):  # noqa: F811
    from settings.files import apply_overrides, load_config
    from train.checkpoint import TrainError
    from train.initial_weights import AUGREG, IMAGENET_WEIGHTS
    from train.loop import train

    cfg = load_config(write_tiny_config(tmp_path / "tiny.yaml"))
    url = AUGREG + IMAGENET_WEIGHTS["vit_tiny_patch16_384"]
    target = "pretrained/vit_tiny_patch16_384.npz"
    save = f"download {url} and save it as {target} (mkdir -p pretrained; wget -O {target} URL)"
    for value, message in (("null", "model.pretrained is not set: name the ImageNet weights vit_tiny_patch16_384 "
                                    f"starts from ({save}, then set model.pretrained={target}; or set "
                                    "model.pretrained=none to train from scratch)"),
                           (target, f"model.pretrained: {target}: file not found; {save}")):
        changed = apply_overrides(cfg, [f"model.pretrained={value}", "model.backbone=vit_tiny_patch16_384"])
        with pytest.raises(TrainError, match=re.escape(message)):
            train(changed, tiny_data, tmp_path / "run", log=lambda *_: None)
        assert not (tmp_path / "run").exists()


# The file each backbone's recipes name (docs/weights.md#pretrained-weights says where to get it).
LOCAL = {"vit_tiny_patch16_384": "pretrained/vit_tiny_patch16_384.npz",
         "vit_small_patch16_384": "pretrained/vit_small_patch16_384.npz",
         "vit_base_patch16_384": "pretrained/vit_base_patch16_384.npz",
         "vit_large_patch16_384": "pretrained/vit_large_patch16_384.npz",
         "vit_base_patch8_384": "pretrained/vit_base_patch8_224.npz"}


def test_each_recipe_names_the_imagenet_weights_of_its_backbone_and_the_docs_say_where():
    from settings.files import load_config
    from train.initial_weights import AUGREG, IMAGENET_WEIGHTS

    docs = (ROOT / "docs" / "weights.md").read_text()
    assert set(IMAGENET_WEIGHTS) == set(LOCAL)
    for backbone, name in IMAGENET_WEIGHTS.items():
        assert AUGREG + name in docs and f"`{LOCAL[backbone]}`" in docs, backbone
    recipes = sorted((ROOT / "configs").glob("seg*_*.yaml")) + [ROOT / "configs" / "my_dataset.yaml"]
    assert len(recipes) == 19
    for path in recipes:
        m = load_config(path).model
        assert m.pretrained == ("none" if path.name == "seg_tiny_demo.yaml" else LOCAL[m.backbone]), path.name


def test_mindspore_warnings_are_quiet_unless_verbose(monkeypatch):
    from click.testing import CliRunner

    import cli

    for args, level in (([], "3"), (["--verbose"], "2")):
        monkeypatch.delenv("GLOG_v", raising=False)
        CliRunner().invoke(cli.main, [*args, "make-sample", "--help"])
        assert os.environ["GLOG_v"] == level
    monkeypatch.setenv("GLOG_v", "1")  # the user's own setting stays
    CliRunner().invoke(cli.main, ["make-sample", "--help"])
    assert os.environ["GLOG_v"] == "1"

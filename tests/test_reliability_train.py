"""`train` against concurrent writers, edited or damaged run files and a full disk (issue 19):
every case `error: PATH: what`, exit 2, with RUN left as it was and no temporary file behind."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("mindspore")

from base.locks import LOCK_NAME, folder_lock  # noqa: E402
from test_train_run import _snapshot, full_run, run_cli, tiny_data, write_tiny_config  # noqa: E402,F401
from peak import cli_peak as measured  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 1024  # ru_maxrss is in KiB
# Holds `folder_lock(argv[1], "train")` for argv[2] seconds; prints "held" or "refused: REASON".
HOLD = f"""
import sys, time
sys.path.insert(0, {str(ROOT)!r})
import base.locks
base.locks._SHARE_WAIT_S = 0.5
try:
    with base.locks.folder_lock(sys.argv[1], "train"):
        print("held", flush=True)
        time.sleep(float(sys.argv[2]))
except OSError as err:
    print("refused:", err.filename, err.strerror, flush=True)
"""
LAUNCH = {"MS_WORKER_NUM": "2", "MS_ROLE": "MS_WORKER", "MS_SCHED_HOST": "127.0.0.1", "MS_SCHED_PORT": "8118"}


def _hold(folder: Path, env: dict | None = None, seconds: float = 600) -> tuple[subprocess.Popen, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MS_")}
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder), str(seconds)], stdout=subprocess.PIPE,
                            text=True, env=dict(clean, **(env or {})))
    return proc, proc.stdout.readline().strip()


def _every_byte(folder: Path) -> dict:
    """Every file's bytes, the lock file's (its recorded holder) included."""
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _cli(tmp_path: Path, *args) -> tuple[int, str, int]:
    """`cli.py train ARGS` in a subprocess: (exit code, stdout + stderr, its own peak RSS in KiB)."""
    code, out, err, peak = measured("train", *args)
    return code, out + err, peak


def test_a_second_train_into_a_held_run_is_refused_until_the_holder_dies(full_run, tiny_data, tmp_path):  # noqa: F811
    cfg_path, run, _ = full_run
    new, old = tmp_path / "new", tmp_path / "old"
    new.mkdir()
    shutil.copytree(run, old)
    holders = [_hold(new), _hold(old)]
    try:
        assert [line for _, line in holders] == ["held", "held"]
        for folder, extra in ((new, ["--config", cfg_path]), (old, ["--resume"])):
            before = _every_byte(folder)
            code, out, peak = _cli(tmp_path, *extra, "--data", tiny_data, "--out", folder)
            assert code == 2 and f"error: {folder}: another train is writing here" in out, out
            assert "Traceback" not in out and _every_byte(folder) == before
            assert peak < 1024 * MIB, f"the refusal peaked at {peak / MIB:.0f} MiB"
    finally:
        for proc, _ in holders:
            proc.kill()  # kill -9: the kernel drops the lock with the process
            proc.wait()
    with folder_lock(old, "train"):
        pass
    # The dead holder's lock file is no content: a new run into `new` starts and finishes.
    short = write_tiny_config(tmp_path / "short.yaml", train={"iterations": 1, "checkpoint_every": 1,
                                                               "eval_every": 0})
    code, out = run_cli("--config", short, "--data", tiny_data, "--out", new)
    assert code == 0, out
    assert (new / "checkpoints" / "step_0000001.ckpt").is_file()


def test_the_ranks_of_one_msrun_launch_share_the_lock_and_no_one_else(tmp_path):
    """msrun (2.10) gives every process of a launch MS_WORKER_NUM, MS_ROLE and the scheduler's
    MS_SCHED_HOST/PORT; without --join=True it exits at once, so its ranks' parent is init, the
    same for every launch: the parent pid cannot tell launches apart."""
    holder, line = _hold(tmp_path, LAUNCH)
    try:
        assert line == "held"
        assert _hold(tmp_path, dict(LAUNCH, MS_NODE_ID="1"), 0)[1] == "held"  # another rank
        assert _hold(tmp_path, dict(LAUNCH, MS_ROLE="MS_SCHED"), 0)[1] == "held"  # the launch's scheduler
        refusal = f"refused: {tmp_path} another train is writing here"
        assert _hold(tmp_path, dict(LAUNCH, MS_SCHED_PORT="8119"), 0)[1].startswith(refusal)  # another launch
        assert _hold(tmp_path, None, 0)[1].startswith(refusal)  # a plain process
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_on_a_lock_file_its_holder_removed_meanwhile_is_refused(tmp_path, monkeypatch):
    """A run that created RUN and failed removes RUN, lock file included, while holding the lock;
    a process that opened the file just before cannot count the lock it then gets."""
    import base.locks

    take = base.locks._acquire

    def after_removal(fd, folder, what, me):
        (folder / LOCK_NAME).unlink()
        take(fd, folder, what, me)

    monkeypatch.setattr(base.locks, "_acquire", after_removal)
    with pytest.raises(OSError, match="another train is writing here"):
        with folder_lock(tmp_path, "train"):
            pass


def test_a_failure_before_anything_is_written_removes_the_folders_train_created(tiny_data, tmp_path):  # noqa: F811
    cfg = write_tiny_config(tmp_path / "tiny.yaml")
    val_only = tmp_path / "val_only"
    shutil.copytree(tiny_data / "val", val_only / "val")
    out = tmp_path / "a" / "b" / "run"
    code, text = run_cli("--config", cfg, "--data", val_only, "--out", out)
    assert code == 2 and "split 'train' was never built" in text, text
    assert not (tmp_path / "a").exists()
    mine = tmp_path / "mine"  # a folder the user made stays, as it was
    mine.mkdir()
    code, _ = run_cli("--config", cfg, "--data", val_only, "--out", mine)
    assert code == 2 and mine.is_dir() and set(os.listdir(mine)) <= {LOCK_NAME}


def _edit_config(path: Path, edit) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("edit, shown", [
    (lambda d: d["train"]["optimizer"].update(lr=0.1), "train.optimizer.lr 0.05 -> 0.1"),
    (lambda d: d.update(seed=7), "seed 0 -> 7"),
    (lambda d: d["model"].update(n_heads=4), "model.n_heads 2 -> 4"),
])
def test_resume_refuses_a_run_config_edited_since_the_run_started(full_run, tiny_data, tmp_path, edit,  # noqa: F811
                                                                  shown):
    _, run, _ = full_run
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    _edit_config(cut / "config.yaml", edit)
    before = _snapshot(cut)
    code, out = run_cli("--data", tiny_data, "--out", cut, "--resume")
    assert code == 2 and f"error: {cut / 'config.yaml'}: changed since the run started ({shown})" in out, out
    assert _snapshot(cut) == before
    # Naming the edited file as --config agrees with it, not with the run: still refused.
    code, out = run_cli("--config", cut / "config.yaml", "--data", tiny_data, "--out", cut, "--resume")
    assert code == 2 and "changed since the run started" in out, out
    assert _snapshot(cut) == before


def test_resume_accepts_a_run_config_written_differently_with_the_same_values(full_run, tiny_data,  # noqa: F811
                                                                              tmp_path):
    _, run, _ = full_run
    done = tmp_path / "run"
    shutil.copytree(run, done)
    data = yaml.safe_load((done / "config.yaml").read_text())
    (done / "config.yaml").write_text("# the run's config, reordered\n" + yaml.safe_dump(data, sort_keys=True))
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    assert code == 0 and "already finished" in out, out
    # What a resume may change anyway (logging, checkpoint cadence, evaluation) is no edit to refuse.
    _edit_config(done / "config.yaml", lambda d: d["train"].update(log_every=1))
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    assert code == 0 and "already finished" in out, out


def _rewrite_checkpoint(path: Path, change) -> None:
    """Apply `change(entries)` to a checkpoint's entries and save it again under the same name."""
    import mindspore as ms

    entries = dict(ms.load_checkpoint(str(path)))
    change(entries)
    tensors = [{"name": k, "data": v} for k, v in entries.items() if not isinstance(v, str)]
    strings = {k: v for k, v in entries.items() if isinstance(v, str)}
    ms.save_checkpoint(tensors, str(path), append_dict=strings or None)


def _tensor(value):
    import mindspore as ms

    return ms.Tensor(np.asarray(value))


def _nan_weight(entries: dict) -> None:
    from weights.checkpoint import NON_MODEL_PREFIXES

    name = next(k for k in entries if not k.startswith(NON_MODEL_PREFIXES))
    array = entries[name].asnumpy().copy()
    array.flat[0] = np.nan
    entries[name] = _tensor(array)


@pytest.mark.parametrize("change, message", [
    (lambda e: e.update({"state.step": _tensor(np.float64(6))}), "state.step: expected an integer, got Float64"),
    (lambda e: e.update({"state.step": "6"}), "state.step: expected an integer, got a str"),
    (lambda e: e.update({"state.step": _tensor(np.int64(5))}), "state.step is 5, the file name says step 6"),
    (lambda e: e.update({"state.group_size": _tensor(np.int64(0))}),
     "state.group_size is 0; expected a finite number >= 1"),
    (lambda e: e.update({"state.loss_scale": _tensor(np.float32(np.nan))}), "state.loss_scale is nan"),
    (lambda e: e.update({"state.best_miou": _tensor(np.zeros(3))}),
     "state.best_miou: expected a number, got Float64 of shape (3,)"),
    (lambda e: e.update({"state.best_miou": _tensor(np.float64(7.5))}), "state.best_miou is 7.5"),
    (lambda e: e.update({"state.rng": _tensor(np.zeros(3, np.uint8))}), "state.rng: expected UInt8 of shape (16,)"),
    (lambda e: e.update({"config.yaml": "a: [1"}), "entry config.yaml: line 1: not valid YAML"),
    (lambda e: e.update({"config.yaml": "- 1\n"}), "entry config.yaml: config: expected a mapping, got list"),
    (lambda e: e.update({"config.yaml": "train: {bogus: 1}\n"}), "entry config.yaml: unknown key 'train.bogus'"),
    (lambda e: e.pop("state.best_step"), "not a training checkpoint (no state.best_step)"),
    (lambda e: e.update({next(k for k in e if k.startswith("optimizer.")): "x"}), "is a str, not a tensor"),
    (_nan_weight, "holds NaN/inf"),
])
def test_resume_refuses_a_checkpoint_with_damaged_entries(full_run, tiny_data, tmp_path, change,  # noqa: F811
                                                          message):
    _, run, _ = full_run
    cut = tmp_path / "run"
    shutil.copytree(run, cut)
    last = cut / "checkpoints" / "step_0000006.ckpt"
    _rewrite_checkpoint(last, change)
    before = _snapshot(cut)
    code, out = run_cli("--data", tiny_data, "--out", cut, "--resume")
    assert code == 2 and f"error: {last}: " in out and message in out, out
    assert _snapshot(cut) == before


def test_a_checkpoint_from_before_checkpoints_held_their_config_resumes_unchecked(full_run, tiny_data,  # noqa: F811
                                                                                  tmp_path):
    _, run, _ = full_run
    done = tmp_path / "run"
    shutil.copytree(run, done)
    _rewrite_checkpoint(done / "checkpoints" / "step_0000006.ckpt", lambda e: e.pop("config.yaml"))
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    assert code == 0 and "written before checkpoints held their config" in out, out


def test_a_run_from_before_the_yaml_marker_resumes_and_saves_a_new_best(full_run, tiny_data, tmp_path):  # noqa: F811
    """Its best.yaml and step_*.yaml have no checksum marker: in the run's own folder, held under
    its lock, train replaces them (elsewhere a .yaml without the marker is never replaced)."""
    from settings.files import written_by_us

    _, run, _ = full_run
    old = tmp_path / "run"
    shutil.copytree(run, old)
    checkpoints = old / "checkpoints"
    for companion in checkpoints.glob("*.yaml"):
        companion.write_text(companion.read_text().split("\n", 1)[1])  # the marker line did not exist yet
        assert not written_by_us(companion)
    for name in ("step_0000006.ckpt", "step_0000006.yaml"):
        (checkpoints / name).unlink()  # interrupted after step 3, before any best
    _rewrite_checkpoint(checkpoints / "step_0000003.ckpt", lambda e: e.update(
        {"state.best_miou": _tensor(np.float64(-1)), "state.best_step": _tensor(np.int64(-1))}))
    code, out = run_cli("--data", tiny_data, "--out", old, "--resume")
    assert code == 0, out
    assert written_by_us(checkpoints / "best.yaml") and written_by_us(checkpoints / "step_0000006.yaml")
    import mindspore as ms

    assert int(ms.load_checkpoint(str(checkpoints / "best.ckpt"))["state.best_step"].asnumpy()) == 6


def test_resume_drops_a_last_metrics_line_cut_short_saying_so(full_run, tiny_data, tmp_path):  # noqa: F811
    _, run, _ = full_run
    done = tmp_path / "run"
    shutil.copytree(run, done)
    whole = (done / "metrics.jsonl").read_bytes()
    lines = whole.count(b"\n")
    (done / "metrics.jsonl").write_bytes(whole + b'{"type": "train", "step": 7, "lo')  # kill -9 mid-write
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    assert code == 0, out
    assert f"{done / 'metrics.jsonl'}: line {lines + 1} was cut short by an interrupted write" in out, out
    assert (done / "metrics.jsonl").read_bytes() == whole


@pytest.mark.parametrize("damage, line, what", [
    (lambda lines: lines.insert(1, b"garbage\n"), 2, "Expecting value"),
    (lambda lines: lines.append(b'{"type": "train", "step": 7, "lo\n'), None, "Invalid control character"),
    (lambda lines: lines.insert(0, b'{"type": "train", "step": "3"}\n'), 1, "'step' must be a non-negative integer"),
    (lambda lines: lines.insert(0, b"[1, 2]\n"), 1, "expected a JSON object, got list"),
    (lambda lines: lines.insert(2, b'{"type": "val", "step": 3, "mIoU": "high"}\n'), 3, "'mIoU' must be a number"),
    (lambda lines: lines.insert(1, b'{"type": "train", "step": 1, "x": "\xff\xfe"}\n'), 2, "can't decode"),
])
def test_resume_refuses_a_damaged_metrics_line_naming_it(full_run, tiny_data, tmp_path, damage, line,  # noqa: F811
                                                         what):
    _, run, _ = full_run
    done = tmp_path / "run"
    shutil.copytree(run, done)
    lines = (done / "metrics.jsonl").read_bytes().splitlines(keepends=True)
    damage(lines)
    (done / "metrics.jsonl").write_bytes(b"".join(lines))
    before = _snapshot(done)
    code, out = run_cli("--data", tiny_data, "--out", done, "--resume")
    line = line or len(lines)
    assert code == 2 and f"error: {done / 'metrics.jsonl'}: line {line}: not a metrics record" in out, out
    assert what in out and "Traceback" not in out and _snapshot(done) == before


def test_a_full_disk_stops_the_run_naming_the_checkpoint_and_leaves_no_temporary_file(tiny_data, tmp_path,  # noqa: F811
                                                                                      small_disk):
    from train.run_folder import read_metrics

    cfg = write_tiny_config(tmp_path / "tiny.yaml", train={"iterations": 2, "checkpoint_every": 1,
                                                            "eval_every": 0, "log_every": 1})
    run = small_disk(64) / "run"  # room for config.yaml and metrics.jsonl, not for a checkpoint
    code, out = run_cli("--config", cfg, "--data", tiny_data, "--out", run)
    assert code == 2, out
    assert f"error: {run / 'checkpoints' / 'step_0000001.ckpt'}: No space left on device" in out, out
    left = sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.parent.name != "tensorboard")
    assert left == [LOCK_NAME, "checkpoints", "config.yaml", "metrics.jsonl", "tensorboard"], left
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == [1]


def test_a_metrics_record_the_disk_cannot_hold_is_undone(tmp_path, small_disk):
    from train.run_folder import Run

    disk = small_disk(16)
    run = Run(disk, writer=True)
    run.log({"type": "train", "step": 1, "loss": 1.0})
    before = run.metrics.read_bytes()
    with open(disk / "filler", "wb", buffering=0) as fh:  # fill the rest of the disk
        with pytest.raises(OSError):
            while True:
                fh.write(b"\0" * 1024)
    with pytest.raises(OSError) as caught:
        run.log({"type": "train", "step": 2, "note": "x" * 20000})
    assert caught.value.filename == str(run.metrics) and caught.value.strerror == "No space left on device"
    assert run.metrics.read_bytes() == before


def test_curves_the_disk_cannot_hold_name_the_file_and_leave_nothing(small_disk):
    from train.curves import draw_curves

    disk = small_disk(8)  # less than the PNG of three panels
    with pytest.raises(OSError) as caught:
        draw_curves([{"type": "train", "step": s, "loss": 1.0 / s, "lr": 0.01} for s in range(1, 50)],
                     disk / "curves.png")
    assert caught.value.filename == str(disk / "curves.png") and caught.value.strerror == "No space left on device"
    assert os.listdir(disk) == []

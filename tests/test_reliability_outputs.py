"""eval/predict outputs (issue 19): never replace a file they did not write or an input of the run,
never write outside their folder, one run per folder, a full disk reported as such, no temporary
left behind, and an undecodable image found in a folder skipped."""
from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from base.locks import LOCK_NAME, folder_lock
from base.ownership import WRITTEN
from test_eval_cli import built, tiny_checkpoint  # noqa: F401  (built: a pytest fixture)
from peak import cli_peak as measured

REPO = Path(__file__).resolve().parents[1]
IMAGE = Path(__file__).parent / "fixtures" / "golden" / "frankfurt_000000_000294_small.png"  # 48 x 96
RSS_LIMIT_KIB = 1 << 20


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def files(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def temporaries(folder: Path) -> list:
    return [p.name for p in folder.rglob(".*") if ".tmp" in p.name or ".partial-" in p.name]


def _must_not_load(*a, **k):
    raise AssertionError("the model was loaded before the outputs were checked")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


# -- eval: an output the user names is never what the run reads --------------------------------

@pytest.mark.parametrize("case", ["checkpoint", "symlink", "hard_link", "relative", "config_beside", "config_given",
                                  "inside_data", "inside_predictions"])
def test_eval_json_never_replaces_what_the_run_reads(ckpt, tmp_path, monkeypatch, case):
    work = tmp_path / "work"
    work.mkdir()
    model = work / "m.ckpt"
    model.write_bytes(ckpt.read_bytes())
    (work / "m.yaml").write_bytes(ckpt.with_suffix(".yaml").read_bytes())
    given = work / "given.yaml"
    given.write_bytes(ckpt.with_suffix(".yaml").read_bytes())
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    (data / "val" / "summary.json").write_text("{}")
    args = ["--checkpoint", model, "--data", data]
    monkeypatch.chdir(tmp_path)
    target, role = {"checkpoint": (model, "is the checkpoint"),
                    "symlink": (tmp_path / "link.json", "is the checkpoint"),
                    "hard_link": (tmp_path / "hard.json", "is the checkpoint"),
                    "relative": (Path("work/../work/./m.ckpt"), "is the checkpoint"),
                    "config_beside": (work / "m.yaml", "is the checkpoint's config"),
                    "config_given": (given, "is the config (--config)"),
                    "inside_data": (data / "val" / "summary.json", "is inside the data folder (--data)"),
                    "inside_predictions": (tmp_path / "preds" / "m.json", "is inside the prediction folder")}[case]
    if case == "symlink":
        target.symlink_to(model)
    elif case == "hard_link":
        os.link(model, target)
    elif case == "config_given":
        args += ["--config", given]
    elif case == "inside_predictions":
        (tmp_path / "preds").mkdir()
        args += ["--save-predictions", tmp_path / "preds"]
    before = files(tmp_path)
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("eval", *args, "--json", target)
    assert r.exit_code == 2, r.output + r.stderr
    assert f"error: {target}: {role}" in r.stderr and "--json must name a file of its own" in r.stderr
    assert files(tmp_path) == before


def test_prediction_folder_inside_the_data_is_refused(ckpt, tmp_path, monkeypatch):
    data = tmp_path / "data"
    (data / "val").mkdir(parents=True)
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("eval", "--checkpoint", ckpt, "--data", data, "--save-predictions", data / "val" / "preds")
    assert r.exit_code == 2 and "is inside the data folder (--data) of this run" in r.stderr, r.stderr
    assert sorted(p.name for p in data.rglob("*")) == ["val"]


@pytest.mark.parametrize("content", ["an earlier result", '{"mIoU": 0.5}', "CKPT"])
def test_eval_json_replaces_only_its_own_earlier_file(built, tmp_path, content):  # noqa: F811
    mine = tmp_path / "metrics.json"
    mine.write_bytes(Path(built["ckpt"]).read_bytes() if content == "CKPT" else content.encode())
    before = mine.read_bytes()
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 1, "--json", mine)
    assert r.exit_code == 2 and f"error: {mine}: exists and is not an earlier eval --json file" in r.stderr
    assert mine.read_bytes() == before  # another checkpoint, a user's JSON, any file: untouched
    mine.unlink()
    for _ in range(2):  # its own earlier output is replaced
        r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 1, "--json", mine)
        assert r.exit_code == 0, r.output + r.stderr
    assert '"mIoU"' in mine.read_text()


# -- predict: replaces only its own files, proven by its log --------------------------------------

@pytest.mark.parametrize("kind", ["file", "color_file", "folder", "symlink"])
def test_predict_never_replaces_a_file_it_did_not_write(ckpt, tmp_path, monkeypatch, kind):
    out = tmp_path / "out"
    out.mkdir()
    victim = out / ("scene_color.png" if kind == "color_file" else "scene.png")
    if kind == "folder":
        victim.mkdir()
        (victim / "keep.txt").write_text("mine")
    elif kind == "symlink":
        (tmp_path / "elsewhere.png").write_bytes(b"mine")
        victim.symlink_to(tmp_path / "elsewhere.png")
    else:
        victim.write_bytes(b"a user's picture")
    source = tmp_path / "scene.png"
    source.write_bytes(IMAGE.read_bytes())
    before = files(tmp_path)
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", source, "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 2 and f"error: {victim}: exists and was not written by predict" in r.stderr, r.stderr
    assert files(tmp_path) == before and sorted(p.name for p in out.iterdir()) == [victim.name]  # no lock, no log


def test_predict_replaces_its_own_outputs_but_not_edited_ones(ckpt, tmp_path):
    source = tmp_path / "scene.png"
    source.write_bytes(IMAGE.read_bytes())
    out = tmp_path / "out"
    for _ in range(2):  # the second run replaces the first run's outputs
        r = run("predict", source, "--checkpoint", ckpt, "--out", out, "--save-probs", "--overlay", 0.5)
        assert r.exit_code == 0, r.stderr
    assert sorted(files(out)) == [WRITTEN, "scene.png", "scene_color.png", "scene_overlay.png", "scene_probs.npy"]
    edited = out / "scene_overlay.png"
    edited.write_bytes(edited.read_bytes() + b"my note")
    before = files(out)
    r = run("predict", source, "--checkpoint", ckpt, "--out", out, "--save-probs", "--overlay", 0.5)
    assert r.exit_code == 2 and f"error: {edited}: exists and was not written by predict" in r.stderr
    assert files(out) == before


def test_a_rerun_reads_each_earlier_output_once_and_no_new_one(ckpt, tmp_path, monkeypatch):
    import base.ownership

    src = tmp_path / "in"
    src.mkdir()
    (src / "scene.png").write_bytes(IMAGE.read_bytes())
    runs = {"named": (src / "scene.png", "--out", tmp_path / "out", "--save-probs", "--overlay", 0.5),
            "its own input's subfolder": (src, "--out", src / "pred")}
    for args in runs.values():
        assert run("predict", *args, "--checkpoint", ckpt).exit_code == 0
    crc = base.ownership.file_crc32
    for what, args in runs.items():
        read = []
        monkeypatch.setattr(base.ownership, "file_crc32", lambda path: read.append(Path(path).name) or crc(path))
        r = run("predict", *args, "--checkpoint", ckpt)
        assert r.exit_code == 0, r.stderr
        earlier = ["scene.png", "scene_color.png"] + (["scene_overlay.png", "scene_probs.npy"] if "named" in what
                                                       else [])
        assert sorted(read) == earlier, what  # each proven once under the lock; new ones logged as written
    r = run("predict", *runs["named"], "--checkpoint", ckpt)  # the logged CRCs prove what was written
    assert r.exit_code == 0, r.stderr


def test_an_output_hard_linked_to_an_input_is_that_input(ckpt, tmp_path, monkeypatch):
    source = tmp_path / "scene.png"
    source.write_bytes(IMAGE.read_bytes())
    out = tmp_path / "out"
    out.mkdir()
    os.link(source, out / "scene.png")  # another name, the same file: no resolve() tells them apart
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", source, "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 2 and f"error: {out / 'scene.png'}: is an input" in r.stderr, r.stderr
    assert source.read_bytes() == IMAGE.read_bytes()


def test_streamed_probabilities_are_logged_from_the_bytes_written(tmp_path):
    from base.checksums import file_crc32
    from evaluate.predict import _ProbsFile

    probs = np.random.default_rng(0).random((5, 37, 11), np.float32)
    path = tmp_path / "p.npy"
    with open(path, "wb") as fh:
        streamed = _ProbsFile(fh, 5, 37, 11)
        for r0 in range(0, 37, 8):  # bands of rows, written plane by plane
            streamed.write(r0, min(r0 + 8, 37), probs[:, r0:r0 + 8])
    assert streamed.proof() == (path.stat().st_size, file_crc32(path))
    np.testing.assert_array_equal(np.load(path), probs)


def test_predict_into_a_subfolder_of_its_input_reruns(ckpt, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("a.png", "b.png"):
        (src / name).write_bytes(IMAGE.read_bytes())
    for args in [(src,), (src,), (f"{src}/**/*.png",), (src,)]:  # folder and recursive glob, every rerun
        r = run("predict", *args, "--checkpoint", ckpt, "--out", src / "pred")
        assert r.exit_code == 0, r.stderr
        assert "2 images in" in r.stdout
    assert sorted(files(src)) == ["a.png", "b.png", f"pred/{WRITTEN}", "pred/a.png", "pred/a_color.png",
                                  "pred/b.png", "pred/b_color.png"]
    # A picture the user puts there is not proven predict's: an input like any other.
    (src / "pred" / "mine.png").write_bytes(IMAGE.read_bytes())
    r = run("predict", src, "--checkpoint", ckpt, "--out", tmp_path / "other")
    assert r.exit_code == 0 and "3 images in" in r.stdout, r.stderr


def test_frames_of_a_video_folder_are_checked(ckpt, tmp_path, monkeypatch):
    import cv2

    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 5.0, (96, 48))
    for k in range(2):
        writer.write(np.roll(np.asarray(Image.open(IMAGE).convert("RGB"))[:, :, ::-1], 8 * k, axis=1).copy())
    writer.release()
    out = tmp_path / "out"
    r = run("predict", clip, "--checkpoint", ckpt, "--out", out, "--frames")
    assert r.exit_code == 0, r.stderr
    r = run("predict", clip, "--checkpoint", ckpt, "--out", out, "--frames")  # its own frames: replaced
    assert r.exit_code == 0, r.stderr
    frame = out / "clip_frames" / "frame_000001.png"
    frame.write_bytes(b"mine now")
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", clip, "--checkpoint", ckpt, "--out", out, "--frames")
    assert r.exit_code == 2 and f"error: {frame}: exists and was not written by predict" in r.stderr


# -- eval --save-predictions: the writer itself never leaves its folder ---------------------------

@pytest.mark.parametrize("city, image_id", [("../../../../escape", "x"), ("frankfurt", "../../../escape"),
                                            ("ABSOLUTE", "x"), ("frankfurt", ""), ("", "")])
def test_prediction_writer_refuses_a_path_outside_its_folder(tmp_path, city, image_id):
    from evaluate.prediction_sets import PredictionError, prediction_set

    city = str(tmp_path / "abs") if city == "ABSOLUTE" else city
    preds = tmp_path / "deep" / "er" / "preds"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    ids = np.zeros((4, 6), np.uint8)
    rgb = np.zeros((4, 6, 3), np.uint8)
    with pytest.raises(PredictionError, match="names a file outside the prediction folder"):
        with prediction_set(preds, "val") as writer:
            writer.add("frankfurt", "frankfurt_000000_000019", ids, rgb)  # a good record first
            writer.add(city, image_id, ids, rgb)
            writer.commit(images=2)
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == ["deep", "deep/er"]


def test_prediction_writer_keeps_nested_ids_inside(tmp_path):
    from evaluate.prediction_sets import prediction_set

    with prediction_set(tmp_path / "preds", "val") as writer:
        writer.add("a/b", "c", np.zeros((4, 6), np.uint8), np.zeros((4, 6, 3), np.uint8))
        writer.commit(images=1)
    assert (tmp_path / "preds" / "labelIds" / "a" / "b" / "c.png").is_file()
    assert LOCK_NAME not in {p.name for p in (tmp_path / "preds").iterdir()}


# -- one run per output folder --------------------------------------------------------------------

def test_a_second_predict_into_a_busy_folder_is_refused(ckpt, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with folder_lock(out, "predict"):  # another predict, mid-run
        code, _, stderr, peak = measured("predict", IMAGE, "--checkpoint", ckpt, "--out", out)
    assert code == 2, stderr
    assert f"error: {out}: another predict is writing here" in stderr and "Traceback" not in stderr
    assert sorted(p.name for p in out.iterdir()) == [LOCK_NAME]  # nothing written
    assert peak < RSS_LIMIT_KIB, f"peak {peak} KiB"


def test_a_second_eval_into_a_busy_prediction_folder_is_refused(built, tmp_path):  # noqa: F811
    preds = tmp_path / "preds"
    preds.mkdir()
    with folder_lock(preds, "predict"):
        r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--save-predictions", preds)
    assert r.exit_code == 2 and f"error: {preds}: another predict is writing here" in r.stderr, r.stderr
    assert sorted(p.name for p in preds.iterdir()) == [LOCK_NAME] and temporaries(tmp_path) == []


# -- a full disk: the real reason, and no temporary left ------------------------------------------

def test_png_writer_reports_a_full_disk(small_disk):
    from base.atomic import write_png_atomic

    disk = small_disk(64)
    noise = np.random.default_rng(0).integers(0, 256, (256, 256, 3), np.uint8)  # ~196 KB, incompressible
    with pytest.raises(OSError) as caught:
        write_png_atomic(disk / "big.png", noise)
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(disk / "big.png")
    assert list(disk.iterdir()) == []


def test_predict_on_a_full_disk(ckpt, small_disk):
    disk = small_disk(64)
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", disk / "p", "--save-probs")  # 350 KB of probabilities
    assert r.exit_code == 2 and "No space left on device" in r.stderr, r.stderr
    assert list(disk.iterdir()) == []  # no temporary, and the folder it made is gone


def test_eval_predictions_on_a_full_disk(built, small_disk):  # noqa: F811
    disk = small_disk(16)
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--save-predictions", disk / "preds")
    assert r.exit_code == 2 and f"error: {disk / 'preds'}: cannot write predictions here (No space left on device)" \
        in r.stderr, r.stderr
    assert list(disk.iterdir()) == []


# -- an image found in a folder that does not decode: listed and skipped --------------------------

def test_truncated_jpeg_in_a_folder_is_skipped_after_the_model_loads(ckpt, tmp_path, monkeypatch):
    import evaluate.predict_inputs as predict_inputs

    src = tmp_path / "in"
    src.mkdir()
    (src / "good.png").write_bytes(IMAGE.read_bytes())
    Image.open(IMAGE).convert("RGB").save(tmp_path / "whole.jpg", quality=95)
    data = (tmp_path / "whole.jpg").read_bytes()
    (src / "cut.jpg").write_bytes(data[: len(data) // 2])
    # Whatever the check before the model loads finds, the decode after it must not abort the run.
    monkeypatch.setattr(predict_inputs, "_image_problem", lambda path: None)
    out = tmp_path / "out"
    r = run("predict", src, "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert f"skipped: {src / 'cut.jpg'}: " in r.stderr
    assert "1 images in" in r.stdout and "1 unreadable skipped" in r.stdout
    assert sorted(files(out)) == [WRITTEN, "good.png", "good_color.png"]
    r = run("predict", src / "cut.jpg", "--checkpoint", ckpt, "--out", tmp_path / "named")  # named: still fatal
    assert r.exit_code == 2 and f"error: {src / 'cut.jpg'}: " in r.stderr
    assert not (tmp_path / "named").exists()


def test_sigterm_mid_eval_leaves_no_partial_prediction_set(built, tmp_path):  # noqa: F811
    import time

    preds = tmp_path / "preds"
    proc = subprocess.Popen([sys.executable, str(REPO / "cli.py"), "eval", "--checkpoint", str(built["ckpt"]),
                             "--data", str(built["out"]), "--save-predictions", str(preds), "--flip",
                             "--scales", "0.5,0.75,1,1.25,1.5,1.75,2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".preds.partial-*")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "eval ended before its prediction set was started"
    proc.terminate()
    assert proc.wait(60) == 128 + 15
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no staging, no temporary, no empty folder

"""predict on folders, globs and videos, with overlays: what is found, skipped, written."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from base.class_table import CITYSCAPES
from base.ownership import WRITTEN
from base.overlay import overlay
from test_eval_cli import tiny_checkpoint

GOLDEN = Path(__file__).parent / "fixtures" / "golden"
IMAGE = GOLDEN / "frankfurt_000000_000294_small.png"  # 48 x 96, a real frame


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def _must_not_load(*a, **k):
    raise AssertionError("the model was loaded before the inputs were checked")


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def reference(ckpt, tmp_path_factory):
    """trainIds of the frame predicted as an explicit file (the path every other input must match)."""
    out = tmp_path_factory.mktemp("ref")
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 0, r.stderr
    return np.asarray(Image.open(out / f"{IMAGE.stem}.png"))


def _ids(path):
    return np.asarray(Image.open(path))


def test_folder_is_searched_recursively_and_unreadable_files_are_skipped(ckpt, reference, tmp_path):
    src = tmp_path / "in"
    (src / "b" / "deep").mkdir(parents=True)
    (src / "a.png").write_bytes(IMAGE.read_bytes())
    Image.open(IMAGE).save(src / "b" / "deep" / "a.jpg", quality=100)  # same stem, another folder
    (src / "notes.txt").write_text("not an image")  # not an image extension: not considered
    (src / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"
    r = run("predict", src, "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert f"skipped: {src / 'b' / 'broken.png'}: not a readable image" in r.stderr
    assert "2 images in" in r.stdout and "images/s), 1 unreadable skipped" in r.stdout
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == [WRITTEN, "a.png", "a_color.png", "b/deep/a.png", "b/deep/a_color.png"]  # + predict's log
    np.testing.assert_array_equal(_ids(out / "a.png"), reference)
    assert _ids(out / "b" / "deep" / "a.png").shape == reference.shape
    np.testing.assert_array_equal(np.asarray(Image.open(out / "a_color.png").convert("RGB")),
                                  CITYSCAPES.colorize(reference))


def test_folder_of_unreadable_files_only_is_an_error(ckpt, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    (src / "x.png").write_bytes(b"garbage")
    (src / "y.jpg").write_bytes(b"")
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", src, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert r.exit_code == 2 and f"error: {src}: none of the 2 images found can be read" in r.stderr
    assert not (tmp_path / "out").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.md").write_text("x")
    r = run("predict", empty, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert r.exit_code == 2 and f"error: {empty}: no images in this folder" in r.stderr


def test_an_explicit_unreadable_file_stays_fatal_before_the_model_loads(ckpt, tmp_path, monkeypatch):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"garbage")
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", IMAGE, bad, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert r.exit_code == 2 and f"error: {bad}: not a readable image" in r.stderr
    assert not (tmp_path / "out").exists()


def test_glob_patterns(ckpt, reference, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    for name in ("one.png", "two.png"):
        (src / name).write_bytes(IMAGE.read_bytes())
    (src / "three.jpg").write_bytes(b"not matched by the pattern")
    out = tmp_path / "out"
    r = run("predict", f"{src}/*.png", "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN, "one.png", "one_color.png", "two.png", "two_color.png"]
    np.testing.assert_array_equal(_ids(out / "two.png"), reference)
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", f"{src}/*.tif", "--checkpoint", ckpt, "--out", tmp_path / "o2")
    assert r.exit_code == 2 and "no image matches this pattern" in r.stderr


def test_overlay_blends_the_palette_at_the_given_opacity(ckpt, reference, tmp_path):
    out = tmp_path / "out"
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", out, "--overlay", 0.25)
    assert r.exit_code == 0, r.stderr
    got = np.asarray(Image.open(out / f"{IMAGE.stem}_overlay.png"))
    rgb = np.asarray(Image.open(IMAGE).convert("RGB"))
    want = np.floor(0.75 * rgb + 0.25 * CITYSCAPES.colorize(reference).astype(np.float64) + 1e-9).astype(np.uint8)
    assert np.abs(got.astype(int) - want).max() <= 1  # float32 rounding at exact halves
    np.testing.assert_array_equal(got, overlay(rgb, reference, alpha=0.25))
    r = run("predict", IMAGE, "--checkpoint", ckpt, "--out", out, "--overlay", 1.5)
    assert r.exit_code == 2 and "an opacity in 0..1" in r.stderr


def test_folder_predicted_into_itself_never_overwrites(ckpt, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.png").write_bytes(IMAGE.read_bytes())
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", src, "--checkpoint", ckpt, "--out", src)
    assert r.exit_code == 2 and "is an input; predict never overwrites an input" in r.stderr
    assert sorted(p.name for p in src.iterdir()) == ["a.png"]


def _write_video(path: Path, frames: list, fps: float, codec: str) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (frames[0].shape[1], frames[0].shape[0]))
    for rgb in frames:
        writer.write(np.ascontiguousarray(rgb[:, :, ::-1]))
    writer.release()


def _read_video(path: Path):
    cap = cv2.VideoCapture(str(path))
    fps, frames = cap.get(cv2.CAP_PROP_FPS), []
    while True:
        ok, bgr = cap.read()
        if not ok:
            break
        frames.append(bgr[:, :, ::-1])
    cap.release()
    return fps, frames


@pytest.mark.parametrize("suffix,codec", [(".mp4", "mp4v"), (".avi", "MJPG")])
def test_video_gives_an_overlay_video_and_frame_labels(ckpt, tmp_path, suffix, codec):
    rgb = np.asarray(Image.open(IMAGE).convert("RGB"))
    source = [np.roll(rgb, 8 * k, axis=1) for k in range(4)]  # four different frames
    clip = tmp_path / f"clip{suffix}"
    _write_video(clip, source, 6.0, codec)
    fps_in, decoded = _read_video(clip)  # what the model sees: the codec's decoded frames
    out = tmp_path / "out"
    r = run("predict", clip, "--checkpoint", ckpt, "--out", out, "--frames", "--overlay", 0.5)
    assert r.exit_code == 0, r.stderr
    assert "0 images + 4 video frames (1 videos)" in r.stdout
    fps, frames = _read_video(out / f"clip{suffix}")
    assert fps == pytest.approx(fps_in) and len(frames) == 4 and frames[0].shape == rgb.shape
    labels = sorted((out / "clip_frames").iterdir())
    assert [p.name for p in labels] == [f"frame_{k:06d}.png" for k in range(4)]
    # Each frame's labels equal predicting that decoded frame as an image.
    still = tmp_path / "still"
    still.mkdir()
    Image.fromarray(decoded[2]).save(still / "f2.png")
    r = run("predict", still / "f2.png", "--checkpoint", ckpt, "--out", tmp_path / "still_out")
    assert r.exit_code == 0, r.stderr
    ids = _ids(labels[2])
    np.testing.assert_array_equal(ids, _ids(tmp_path / "still_out" / "f2.png"))
    # The video frame is the overlay of those labels, up to the codec's loss.
    want = overlay(decoded[2], ids, alpha=0.5).astype(np.float32)
    assert np.abs(frames[2].astype(np.float32) - want).mean() < 6
    assert sorted(p.name for p in out.iterdir()) == [WRITTEN, f"clip{suffix}", "clip_frames"]  # no temporary left


def test_unreadable_video_is_fatal_before_the_model_loads(ckpt, tmp_path, monkeypatch):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"not a video at all")
    monkeypatch.setattr("weights.checkpoint.load_model", _must_not_load)
    r = run("predict", bad, "--checkpoint", ckpt, "--out", tmp_path / "out")
    assert r.exit_code == 2 and f"error: {bad}: not a readable video" in r.stderr
    assert not (tmp_path / "out").exists()

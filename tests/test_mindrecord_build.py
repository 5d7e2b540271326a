"""build-mindrecord end to end: MindDataset reads it back exactly; reruns, incremental builds,
interruptions (a real kill -9 and crashes inside the commit), verify."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import mindspore.dataset as ds
import numpy as np
import pytest
from click.testing import CliRunner
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2labelImg import createLabelImage

import cli
import prep.build
from mindrecords.manifest import MindRecordError, read_manifest, split_shard_files
from mindrecords.verify import verify_output
from mindrecords.schema import MANIFEST, pixel_columns
from prep.build import build
from base.labels import CLASS_NAMES, label_to_train_lut
from prep.sample import make_sample

REPO = Path(__file__).resolve().parents[1]
LUT = label_to_train_lut()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    make_sample(root, n_train=7, n_val=3, height=48, width=96, seed=2)
    return root


@pytest.fixture
def root(tmp_path, pristine):
    shutil.copytree(pristine, tmp_path / "cs")
    return tmp_path / "cs"


def quiet(*_):
    pass


def _records(out, split):
    data = ds.MindDataset(split_shard_files(out, split), shuffle=False)
    return list(data.create_dict_iterator(output_numpy=True, num_epochs=1))


def _decode(data, flags=cv2.IMREAD_UNCHANGED):
    return cv2.imdecode(np.frombuffer(data.tobytes(), np.uint8), flags)


def _files(out):
    """Every committed output file's bytes (staging/state bookkeeping excluded)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def test_build_reads_back_exactly(root, tmp_path):
    out = tmp_path / "out"
    results = build(root, out, ["train", "val"], workers=2, shard_size=3, echo=quiet)
    assert [(r.split, r.samples, r.shards) for r in results] == [("train", 7, 3), ("val", 3, 1)]
    assert [Path(f).name for f in split_shard_files(out, "train")] == [
        "train.mindrecord000", "train.mindrecord001", "train.mindrecord002"]
    manifest = read_manifest(out, "train").to_pylist()
    recs = _records(out, "train")
    assert [str(r["id"]) for r in recs] == [m["id"] for m in manifest] == sorted(m["id"] for m in manifest)
    for rec, row in zip(recs, manifest):
        assert row["shard"] == f"train.mindrecord{manifest.index(row) // 3:03d}"
        src = root / row["image_path"]
        assert rec["image"].tobytes() == src.read_bytes()  # stored as found
        ids = cv2.imread(str(root / row["label_path"]), cv2.IMREAD_UNCHANGED)
        label = _decode(rec["label"])
        np.testing.assert_array_equal(label, LUT[ids])
        assert (int(rec["height"]), int(rec["width"])) == ids.shape == (row["height"], row["width"])
        counts = np.bincount(label.ravel(), minlength=256)
        assert [row[c] for c in pixel_columns(CLASS_NAMES)] == [*counts[:19].tolist(), int(counts[255])]
        assert str(rec["city"]) == row["city"] == row["id"].split("_")[0]
    assert all(len(r.problems) == 0 for r in verify_output(out))


def test_jpeg_format_and_polygons_only_labels(root, tmp_path):
    for p in root.glob("gtFine/val/*/*_labelIds.png"):
        p.unlink()
    out = tmp_path / "out"
    build(root, out, ["val"], workers=1, shard_size=8, image_format="jpeg", echo=quiet)
    for rec, row in zip(_records(out, "val"), read_manifest(out, "val").to_pylist()):
        src = cv2.imread(str(root / row["image_path"]))
        ok, q95 = cv2.imencode(".jpg", src, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert rec["image"].tobytes() == q95.tobytes()
        ann = Annotation()
        ann.fromJsonFile(str(root / row["label_path"]))
        official = LUT[np.asarray(createLabelImage(ann, "ids"))]
        np.testing.assert_array_equal(_decode(rec["label"]), official)


def test_real_frame_official_train_ids_and_exact_pixels(real_sample_root, tmp_path):
    out = tmp_path / "out"
    build(real_sample_root, out, ["val"], workers=1, echo=quiet)
    (rec,) = _records(out, "val")
    stem = real_sample_root / "gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_"
    ids = cv2.imread(f"{stem}labelIds.png", cv2.IMREAD_UNCHANGED)
    label = _decode(rec["label"])
    # Official table, written out: road 7->0, sidewalk 8->1, building 11->2, ..., bicycle 33->18.
    official = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
                26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
    expected = np.full_like(ids, 255)
    for label_id, train_id in official.items():
        expected[ids == label_id] = train_id
    np.testing.assert_array_equal(label, expected)
    assert len(np.unique(label)) > 5
    image_path = real_sample_root / "leftImg8bit/val/frankfurt/frankfurt_000000_000294_leftImg8bit.png"
    decoded = ds.vision.Decode()(rec["image"])  # what the pipelines see: RGB
    np.testing.assert_array_equal(decoded, cv2.imread(str(image_path))[..., ::-1])
    assert str(rec["id"]) == "frankfurt_000000_000294"


def test_rerun_verifies_fast_and_changes_rebuild_only_their_shards(root, tmp_path):
    out = tmp_path / "out"
    args = dict(splits=["train"], workers=1, shard_size=3, echo=quiet)
    build(root, out, **args)
    first = _files(out)
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("train/train.mindrecord*")}
    (r,) = build(root, out, **args)
    assert r.written == 0 and _files(out) == first
    assert {p: p.stat().st_mtime_ns for p in out.glob("train/train.mindrecord*")} == mtimes

    # Touched but unchanged: content hash says nothing to do.
    label = next(root.glob("gtFine/train/*/bochum_000000_000019_gtFine_labelIds.png"))
    os.utime(label, ns=(time.time_ns(), time.time_ns()))
    (r,) = build(root, out, **args)
    assert r.written == 0 and _files(out) == first

    # A changed label rebuilds exactly the shard that holds it.
    row = next(m for m in read_manifest(out, "train").to_pylist() if m["id"] == "bochum_000000_000019")
    ids = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
    ids[:4] = 24
    cv2.imwrite(str(label), ids)
    (r,) = build(root, out, **args)
    assert r.written == 1
    now = _files(out)
    changed = {k for k in now if now[k] != first.get(k)}
    assert {f"train/{row['shard']}", "train/manifest.parquet", "train/summary.json"} <= changed
    assert changed <= {f"train/{row['shard']}", f"train/{row['shard']}.db", "train/manifest.parquet",
                       "train/summary.json"}

    # An added frame at the end of the order only touches the last shard.
    src = root / "leftImg8bit/train/bochum/bochum_000002_000019_leftImg8bit.png"
    for p in [src, *root.glob("gtFine/train/bochum/bochum_000002_000019_*")]:
        shutil.copy(p, p.parent / p.name.replace("bochum_000002_000019", "bochum_000009_000019"))
    (r,) = build(root, out, **args)
    assert (r.samples, r.shards, r.written) == (8, 3, 1)
    assert build(root, out, **args)[0].written == 0
    assert build(root, out, **args, force=True)[0].written == 3
    assert all(len(rep.problems) == 0 for rep in verify_output(out))

    # An identical fresh build gives the same bytes as the incremental one.
    fresh = tmp_path / "fresh"
    build(root, fresh, **args)
    assert _files(fresh) == _files(out)


def test_fewer_shards_remove_the_stale_ones(root, tmp_path):
    out = tmp_path / "out"
    build(root, out, ["train"], workers=1, shard_size=2, echo=quiet)
    assert len(split_shard_files(out, "train")) == 4
    build(root, out, ["train"], workers=1, shard_size=4, echo=quiet)
    assert sorted(p.name for p in (out / "train").glob("train.mindrecord*")) == [
        "train.mindrecord000", "train.mindrecord000.db", "train.mindrecord001", "train.mindrecord001.db"]
    assert len(_records(out, "train")) == 7


class Crash(BaseException):
    """Stands for the process dying: no handler in the build may catch it."""


@pytest.mark.parametrize("after", [0, 1, 2])
def test_crash_inside_commit_then_rerun_equals_clean_build(root, tmp_path, monkeypatch, after):
    clean = tmp_path / "clean"
    build(root, clean, ["train"], workers=1, shard_size=2, echo=quiet)
    out = tmp_path / "out"
    build(root, out, ["train"], workers=1, shard_size=3, echo=quiet)  # an older build to overwrite
    calls = []
    real = prep.build.commit_shard

    def dying(*a):
        if len(calls) == after:
            raise Crash
        calls.append(a)
        real(*a)

    monkeypatch.setattr(prep.build, "commit_shard", dying)
    with pytest.raises(Crash):
        build(root, out, ["train"], workers=1, shard_size=2, echo=quiet)
    # Readers refuse the half-committed split instead of serving a mix.
    with pytest.raises(MindRecordError, match=MANIFEST):
        split_shard_files(out, "train")
    monkeypatch.setattr(prep.build, "commit_shard", real)
    converted = []
    convert_all = prep.build._convert_all
    monkeypatch.setattr(prep.build, "_convert_all", lambda *a: converted.extend(a[2]) or convert_all(*a))
    (r,) = build(root, out, ["train"], workers=1, shard_size=2, echo=quiet)
    assert converted == []  # every shard was staged or committed before the crash: none is re-converted
    assert r.written == 4 - after
    assert _files(out) == _files(clean)


def test_kill_9_mid_build_then_rerun_equals_clean_build(tmp_path):
    src = tmp_path / "cs"
    make_sample(src, n_train=16, n_val=0, height=128, width=256, seed=5)
    clean = tmp_path / "clean"
    build(src, clean, ["train"], workers=1, shard_size=1, echo=quiet)
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "cli.py"), "build-mindrecord", "--root", str(src), "--out", str(out),
           "--splits", "train", "--workers", "2", "--shard-size", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        staged = out / "train" / ".staging"
        while time.time() < deadline and len(list(staged.glob("train.mindrecord*"))) < 3:
            time.sleep(0.05)
        assert proc.poll() is None, "the build finished before it could be killed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the build and its joblib workers, mid-write
        proc.wait()
    assert not (out / "train" / MANIFEST).exists()
    (r,) = build(src, out, ["train"], workers=2, shard_size=1, echo=quiet)
    assert r.written == 16 and r.samples == 16
    assert _files(out) == _files(clean)
    assert not list((out / "train" / ".staging").iterdir())


def test_verify_reports_damage_per_file(root, tmp_path):
    out = tmp_path / "out"
    build(root, out, ["train", "val"], workers=1, shard_size=3, echo=quiet)
    runner = CliRunner()
    ok = runner.invoke(cli.main, ["verify", str(out)])
    assert ok.exit_code == 0 and "verify: 10 records, 0 problems" in ok.output
    shard = out / "train" / "train.mindrecord001"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 3])
    (out / "val" / "val.mindrecord000.db").unlink()
    bad = runner.invoke(cli.main, ["verify", str(out)])
    assert bad.exit_code == 2
    assert f"{shard}: " in bad.output
    assert f"{out / 'val' / 'val.mindrecord000.db'}: missing" in bad.output
    assert "train.mindrecord000:" not in bad.output  # intact shards are not blamed
    with pytest.raises(MindRecordError, match=r"val\.mindrecord000\.db: missing"):
        split_shard_files(out, "val")
    with pytest.raises(MindRecordError, match=r"split 'test' was never built"):
        split_shard_files(out, "test")

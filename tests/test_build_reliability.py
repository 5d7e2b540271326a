"""build-mindrecord and verify under faults: damage found by checksums, read-only and full disks,
outputs inside the sources, malformed polygons. Each: `error: PATH: ...`, exit 2, earlier output intact."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from mindrecords.manifest import read_manifest
from mindrecords.verify import verify_output
from prep.sample import make_sample


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    make_sample(root, n_train=4, n_val=0, height=48, width=96, seed=3)
    return root


@pytest.fixture
def root(tmp_path, pristine):
    shutil.copytree(pristine, tmp_path / "cs")
    return tmp_path / "cs"


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def build(root, out, *extra):
    return run("build-mindrecord", "--root", root, "--out", out, "--splits", "train", "--shard-size", 2,
               "--workers", 1, *extra)


def committed(out: Path, bookkeeping: bool = True) -> dict:
    """Every file's bytes; without `bookkeeping`, only what readers see (no .state/.staging)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()
            and (bookkeeping or not any(part.startswith(".") for part in p.relative_to(out).parts))}


def damage_record_in_place(out: Path, key: str, shard: Path | None = None) -> Path:
    """Flip one byte in the middle of the first record's `key` bytes inside its shard (same size)."""
    from mindspore.mindrecord import FileReader

    shard = shard or out / "train" / "train.mindrecord000"
    reader = FileReader(str(shard), num_consumer=1)
    record = next(reader.get_next())
    reader.close()
    data = bytearray(shard.read_bytes())
    blob = bytes(record[key])
    at = data.find(blob)
    assert at > 0 and data.find(blob, at + 1) < 0
    data[at + len(blob) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    return shard


@pytest.mark.parametrize("image_format", ["jpeg", "png"])
def test_verify_finds_altered_image_bytes(root, tmp_path, image_format):
    out = tmp_path / "out"
    assert build(root, out, "--image-format", image_format).exit_code == 0
    shard = damage_record_in_place(out, "image")
    (report,) = verify_output(out)
    assert any(path == str(shard) and "image bytes damaged" in msg for path, msg in report.problems), report.problems
    r = run("verify", out)
    assert r.exit_code == 2 and "image bytes damaged" in r.output


def test_verify_finds_altered_label_bytes(root, tmp_path):
    out = tmp_path / "out"
    assert build(root, out).exit_code == 0
    damage_record_in_place(out, "label")
    (report,) = verify_output(out)
    assert any("label bytes damaged" in msg for _, msg in report.problems), report.problems


def test_rerun_rebuilds_a_shard_damaged_in_place(root, tmp_path):
    out = tmp_path / "out"
    assert build(root, out, "--image-format", "jpeg").exit_code == 0
    good = committed(out / "train")
    shard = damage_record_in_place(out, "image")
    assert shard.stat().st_size == len(good[f"train/{shard.name}".split("/", 1)[1]])
    r = build(root, out, "--image-format", "jpeg")
    assert r.exit_code == 0 and "(1 written)" in r.output, r.output
    assert committed(out / "train") == good
    assert verify_output(out)[0].problems == []


def test_up_to_date_rerun_on_a_read_only_output(root, tmp_path, read_only):
    out = tmp_path / "out"
    assert build(root, out).exit_code == 0
    before = committed(out)
    read_only(out)
    r = build(root, out)
    assert r.exit_code == 0, r.output + r.stderr
    assert "up to date" in r.output and committed(out) == before


def test_read_only_output_with_work_to_do(root, tmp_path, read_only):
    out = tmp_path / "out"
    assert build(root, out).exit_code == 0
    before = committed(out)
    read_only(out)
    r = build(root, out, "--force")
    assert r.exit_code == 2 and f"error: {out}: cannot write shards here (Read-only file system)" in r.stderr
    assert committed(out) == before
    locked = tmp_path / "locked"
    locked.mkdir()
    read_only(locked)
    r = build(root, locked / "new")
    assert r.exit_code == 2 and f"error: {locked / 'new'}: cannot create the output folder" in r.stderr


def test_out_naming_a_file(root, tmp_path):
    target = tmp_path / "file.txt"
    target.write_text("mine")
    r = build(root, target)
    assert r.exit_code == 2 and f"error: {target}: exists and is not a folder" in r.stderr
    assert target.read_text() == "mine"


@pytest.mark.parametrize("inside", ["leftImg8bit", "leftImg8bit/train", "gtFine"])
def test_out_inside_the_sources(root, inside):
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    r = build(root, root / inside / "mr")
    assert r.exit_code == 2 and "inside the source folder" in r.stderr, r.output + r.stderr
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert build(root, root / "mindrecord").exit_code == 0  # beside the sources is fine


def test_full_disk_during_a_build_keeps_the_earlier_output(root, tmp_path, small_disk):
    disk = small_disk(12 * 1024)  # MindSpore's writer refuses to start with under ~10 MB free
    out = disk / "out"
    assert build(root, out).exit_code == 0
    before = committed(out / "train", bookkeeping=False)
    big = tmp_path / "big"
    make_sample(big, n_train=16, n_val=0, height=256, width=512, seed=4)
    r = build(big, out)
    assert r.exit_code == 2, r.output + r.stderr
    assert "error:" in r.stderr and "no space left" in r.stderr.lower() and "Traceback" not in r.stderr
    assert committed(out / "train", bookkeeping=False) == before
    assert [m["id"] for m in read_manifest(out, "train").to_pylist()] == sorted(
        p.name.split("_leftImg8bit")[0] for p in (root / "leftImg8bit" / "train").glob("*/*.png"))


@pytest.mark.parametrize("polygon, message", [
    ([[1, 2]], "polygon has 1 point(s); at least 2 are needed"),
    ([["a", 2], [3, 4], [5, 6]], "polygon point ['a', 2] is not two numbers"),
    ([[1, 2, 3], [3, 4], [5, 6]], "polygon point [1, 2, 3] is not two numbers"),
])
def test_malformed_polygons(root, tmp_path, polygon, message):
    labels = sorted((root / "gtFine" / "train").glob("*/*_gtFine_labelIds.png"))
    poly = labels[0].with_name(labels[0].name.replace("labelIds.png", "polygons.json"))
    labels[0].unlink()  # the polygons become the label source
    doc = json.loads(poly.read_text())
    doc["objects"][1]["polygon"] = polygon
    poly.write_text(json.dumps(doc))
    r = build(root, tmp_path / "out")
    assert r.exit_code == 2 and f"error: {poly}: object 1" in r.stderr and message in r.stderr, r.stderr


def test_verify_of_a_manifest_from_before_format_3(root, tmp_path):
    """No stored-bytes CRC columns: said so, and every other check still runs."""
    import pyarrow.parquet as pq

    out = tmp_path / "out"
    assert build(root, out).exit_code == 0
    manifest = out / "train" / "manifest.parquet"
    pq.write_table(pq.read_table(manifest).drop(["image_crc32", "label_crc32"]), manifest)
    (report,) = verify_output(out)
    assert [m for _, m in report.problems] == [
        "built by an older version without the stored bytes' checksums; rerun build-mindrecord to bring it up to date"]
    shard = out / "train" / "train.mindrecord001"
    with open(shard, "r+b") as fh:
        fh.truncate(fh.seek(0, 2) // 3)
    (report,) = verify_output(out)
    assert any(path == str(shard) for path, _ in report.problems), report.problems

"""Discovery, pairing and every bad-input case of build-mindrecord (errors name the file;
an earlier good output is left untouched)."""
from __future__ import annotations

import hashlib
import re
import shutil

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from prep.discover import discover, discover_split
from prep.errors import PrepError
from prep.sample import make_sample

ID = "aachen_000000_000019"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    root = tmp_path_factory.mktemp("src")
    make_sample(root, n_train=3, n_val=2, height=32, width=64, seed=1)
    return root


@pytest.fixture
def root(tmp_path, pristine):
    shutil.copytree(pristine, tmp_path / "cs")
    return tmp_path / "cs"


def _gt(root, name=ID, split="train", suffix="labelIds.png"):
    return root / "gtFine" / split / name.split("_")[0] / f"{name}_gtFine_{suffix}"


def _img(root, name=ID, split="train"):
    return root / "leftImg8bit" / split / name.split("_")[0] / f"{name}_leftImg8bit.png"


def test_discovers_sorted_pairs(root):
    found = discover(root, ["train", "val"])
    assert [s.id for s in found["train"]] == sorted(s.id for s in found["train"])
    assert len(found["train"]) == 3 and len(found["val"]) == 2
    s = found["train"][0]
    assert s.id == ID and s.city == "aachen"
    assert s.image == f"leftImg8bit/train/aachen/{ID}_leftImg8bit.png"
    assert s.label == f"gtFine/train/aachen/{ID}_gtFine_labelIds.png"


def test_polygons_only_pair_uses_the_json(root):
    _gt(root).unlink()
    s = discover_split(root, "train")[0]
    assert s.label.endswith("_gtFine_polygons.json") and s.label_is_polygons


@pytest.mark.parametrize("case,pattern", [
    ("no_root", r"nowhere: Cityscapes root not found"),
    ("no_split", r"leftImg8bit/test: missing folder \(split 'test'"),
    ("no_labels", r"gtFine/train: missing folder"),
    ("image_without_label", r"1 images have no _gtFine_labelIds\.png or _gtFine_polygons\.json:\n  .*aachen_000000_000019_leftImg8bit\.png"),
    ("label_without_image", r"label files have no image in .*\n  .*aachen_000000_000019_gtFine_color\.png"),
    ("bad_name", r"1 image entries are not Cityscapes names.*\n  .*aachen/holiday\.png"),
    ("wrong_city", r"not Cityscapes names.*\n  .*aachen/bochum_000000_000019_leftImg8bit\.png"),
    ("empty_split", r"leftImg8bit/train: split 'train' is empty"),
])
def test_discovery_errors(root, case, pattern):
    splits = ["train"]
    if case == "no_root":
        root = root / "nowhere"
    elif case == "no_split":
        splits = ["test"]
    elif case == "no_labels":
        shutil.rmtree(root / "gtFine" / "train")
    elif case == "image_without_label":
        for p in _gt(root).parent.glob(f"{ID}_*"):
            p.unlink()
    elif case == "label_without_image":
        _img(root).unlink()
    elif case == "bad_name":
        shutil.copy(_img(root), _img(root).parent / "holiday.png")
    elif case == "wrong_city":
        shutil.copy(_img(root), _img(root).parent / "bochum_000000_000019_leftImg8bit.png")
    elif case == "empty_split":
        shutil.rmtree(root / "leftImg8bit" / "train")
        shutil.rmtree(root / "gtFine" / "train")
        (root / "leftImg8bit" / "train").mkdir()
        (root / "gtFine" / "train").mkdir()
    with pytest.raises(PrepError, match=pattern):
        discover(root, splits)


def _out_digest(out):
    h = hashlib.sha256()
    for p in sorted(out.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(out)).encode() + p.read_bytes())
    return h.hexdigest()


def _damage(root, case):
    label, image = _gt(root), _img(root)
    if case == "truncated_png":
        data = image.read_bytes()
        image.write_bytes(data[: len(data) // 2])
        return image, "truncated or not a PNG"
    if case == "garbage_png":
        label.write_bytes(b"not a png at all" + b"IEND\xaeB`\x82")
        return label, "unreadable PNG"
    if case == "size_mismatch":
        cv2.imwrite(str(label), np.zeros((16, 64), np.uint8))
        return label, r"size 16x64 differs from its image .*\(32x64\)"
    if case == "ids_outside_table":
        ids = cv2.imread(str(label), cv2.IMREAD_UNCHANGED)
        ids[0, :3] = [34, 200, 7]
        cv2.imwrite(str(label), ids)
        return label, r"label ids \[34, 200\] are not in the official Cityscapes table"
    if case == "rgb_label":
        cv2.imwrite(str(label), np.zeros((32, 64, 3), np.uint8))
        return label, "expected a single-channel 8-bit labelIds PNG"
    if case == "gray_image":
        cv2.imwrite(str(image), np.zeros((32, 64), np.uint8))
        return image, "expected an 8-bit RGB PNG"
    if case == "polygons_wrong_size":
        label.unlink()
        js = _gt(root, suffix="polygons.json")
        js.write_text(js.read_text().replace('"imgHeight": 32', '"imgHeight": 40'))
        return js, r"size 40x64 differs"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated_png", "garbage_png", "size_mismatch", "ids_outside_table",
                                  "rgb_label", "gray_image", "polygons_wrong_size"])
def test_bad_sample_fails_naming_the_file_and_keeps_earlier_output(root, tmp_path, case):
    out = tmp_path / "out"
    runner = CliRunner()
    args = ["build-mindrecord", "--root", str(root), "--out", str(out), "--splits", "train", "--workers", "1",
            "--shard-size", "2"]
    assert runner.invoke(cli.main, args).exit_code == 0
    before = _out_digest(out)
    # Force a rebuild too: even then nothing already written may change.
    path, message = _damage(root, case)
    for extra in ([], ["--force"]):
        result = runner.invoke(cli.main, args + extra)
        assert result.exit_code == 2, result.output
        assert f"error: {path}: " in result.output
        assert re.search(message, result.output), result.output
        assert _out_digest(out) == before


def test_coarse_labels_come_from_gtcoarse(root):
    (root / "gtFine").rename(root / "gtCoarse")
    for p in list(root.glob("gtCoarse/*/*/*")):
        p.rename(p.with_name(p.name.replace("_gtFine_", "_gtCoarse_")))
    s = discover(root, ["train"], labels="coarse")["train"][0]
    assert s.label == f"gtCoarse/train/aachen/{ID}_gtCoarse_labelIds.png"
    with pytest.raises(PrepError, match=r"gtFine/train: missing folder"):
        discover(root, ["train"], labels="fine")


def test_one_build_per_output_at_a_time(root, tmp_path):
    from prep.build import _exclusive, build

    out = tmp_path / "out"
    out.mkdir()
    with _exclusive(out):
        with pytest.raises(PrepError, match=r"out: another build-mindrecord is writing here"):
            build(root, out, ["train"], workers=1, echo=lambda *_: None)
    assert not (out / "train").exists()

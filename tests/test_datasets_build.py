"""build-mindrecord for any data set: ADE20K, Pascal Context and a user's dataset file, built from
trees the tests make; records exact, reruns incremental, refusals named; the manifest's dataset block."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import mindspore.dataset as ds
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

import cli
from base.class_table import CITYSCAPES
from base.images import decode_image, read_info
from mindrecords.manifest import (DATASET_KEY, MindRecordError, data_classes, data_eval_protocol, dataset_block,
                                  read_manifest, split_shard_files)
from mindrecords.schema import MANIFEST, SUMMARY
from mindrecords.verify import verify_output
from prep.build import build
from settings.datasets import DatasetEval, load_dataset


def _manifest_with(out, split, metadata):
    (out / split).mkdir(parents=True)
    table = pa.table({"id": pa.array([], pa.string())}).replace_schema_metadata(metadata)
    pq.write_table(table, out / split / MANIFEST)


def test_data_classes_and_protocol_read_the_manifest_block_and_default_to_cityscapes(tmp_path):
    ade = load_dataset("ade20k")
    _manifest_with(tmp_path, "val", {DATASET_KEY: json.dumps(dataset_block(ade))})
    _manifest_with(tmp_path, "train", {b"build_key": b"x"})  # a build made before the block existed
    table = data_classes(tmp_path, "val")
    assert (table.n_cls, table.names[:2], table.palette[0]) == (150, ("wall", "building, edifice"), (120, 120, 120))
    assert table == ade.class_table()
    assert data_eval_protocol(tmp_path, "val") == ade.eval
    assert (data_eval_protocol(tmp_path, "val").infer_size, data_eval_protocol(tmp_path, "val").window) == (512, 512)
    assert data_classes(tmp_path, "train") == CITYSCAPES
    old = data_eval_protocol(tmp_path, "train")
    assert (old.window, old.stride, old.infer_size, old.max_long_side) == (768, 512, 1024, 0)


@pytest.mark.parametrize("block, what", [
    (b"{not json", "unreadable dataset block"),
    (json.dumps({"dataset": "x"}).encode(), "unreadable dataset block"),
    (b" " * (1 << 17), "a 131072-byte dataset block"),
], ids=["not-json", "keys-missing", "oversized"])
def test_a_damaged_dataset_block_is_refused_naming_the_manifest(tmp_path, block, what):
    _manifest_with(tmp_path, "val", {DATASET_KEY: block})
    with pytest.raises(MindRecordError, match=f"{MANIFEST}: damaged manifest: {what}"):
        data_classes(tmp_path, "val")


def test_a_dataset_block_with_a_bad_class_table_is_refused(tmp_path):
    block = dataset_block(load_dataset("ade20k"))
    block["palette"] = block["palette"][:3]
    _manifest_with(tmp_path, "val", {DATASET_KEY: json.dumps(block)})
    with pytest.raises(Exception, match=r"manifest.parquet: segmenter.dataset: .*3 palette colours for 150"):
        data_eval_protocol(tmp_path, "val")


# --- build-mindrecord for ADE20K, Pascal Context and a dataset file --------------------------------

def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def quiet(*_):
    pass


def _jpeg(path: Path, h: int, w: int, rng, grey: bool = False) -> None:
    image = rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes())


def _label(path: Path, values: np.ndarray, palette: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:  # a palette PNG whose colours are not its indices: the indices are the labels
        image = image.convert("P")
        image.putpalette([(i * 37) % 256 for i in range(768)])
        image.putdata(values.ravel().tolist())
    image.save(path)


_ADE_SIZES = {"training": [(24, 32), (40, 30), (33, 47), (28, 28), (50, 20)], "validation": [(31, 45), (26, 38)]}


def _ade_tree(parent: Path) -> Path:
    """ADEChallengeData2016 under `parent`: JPEGs of several sizes, labels 0..150 (every value once at least)."""
    rng = np.random.default_rng(0)
    root = parent / "ADEChallengeData2016"
    every = np.arange(151)
    for folder, sizes in _ADE_SIZES.items():
        kind = "train" if folder == "training" else "val"
        for i, (h, w) in enumerate(sizes, 1):
            stem = f"ADE_{kind}_{i:08d}"
            _jpeg(root / "images" / folder / f"{stem}.jpg", h, w, rng)
            values = rng.integers(0, 151, h * w)
            values[:151] = every
            _label(root / "annotations" / folder / f"{stem}.png", rng.permutation(values).reshape(h, w))
    return root


def _pascal_tree(root: Path) -> Path:
    """VOC2010 in the converted Pascal Context layout; one label a palette PNG, one image not listed."""
    rng = np.random.default_rng(1)
    ids = {"train": ["2008_000002", "2008_000008", "2008_000123"], "val": ["2008_000003", "2009_000001"]}
    for split, names in ids.items():
        for j, name in enumerate(names):
            h, w = 20 + 3 * j, 30 - 2 * j
            _jpeg(root / "JPEGImages" / f"{name}.jpg", h, w, rng)
            _label(root / "SegmentationClassContext" / f"{name}.png", rng.integers(0, 60, (h, w)),
                   palette=name == "2008_000008")
        lists = root / "ImageSets" / "SegmentationContext"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    _jpeg(root / "JPEGImages" / "2007_999999.jpg", 10, 10, rng)  # a VOC image outside Pascal Context
    return root


_USER = {"name": "shapes3", "classes": ["sky", "grass", "rock"], "palette": [[0, 0, 255], [0, 255, 0], [99, 99, 99]],
         "img_dir": "img/{split}", "ann_dir": "ann/{split}", "img_suffix": ".png", "seg_map_suffix": ".png",
         "splits": {"train": "tr", "val": "va"}, "reduce_zero_label": False}


def _user_tree(base: Path, dataset: dict = _USER) -> tuple[Path, Path]:
    """(ROOT, dataset file) of a 3-class folder data set with nested ids; one image a grey PNG."""
    rng = np.random.default_rng(2)
    root = base / "mine"
    for split, ids in (("tr", ["a/b/c", "a/b/d", "top", "x/y"]), ("va", ["v/1"])):
        for k, sid in enumerate(ids):
            h, w = 16 + k, 12 + 2 * k
            path = root / "img" / split / f"{sid}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            grey = sid == "top"
            cv2.imwrite(str(path), rng.integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8))
            values = rng.integers(0, 3, (h, w))
            values[0, :2] = 255
            _label(root / "ann" / split / f"{sid}.png", values)
    file = base / "shapes3.yaml"
    file.write_text(yaml.safe_dump(dataset))
    return root, file


def _records(out: Path, split: str) -> list[dict]:
    data = ds.MindDataset(split_shard_files(out, split), shuffle=False)
    return list(data.create_dict_iterator(output_numpy=True, num_epochs=1))


def _decode_label(data: np.ndarray) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(bytes(data), np.uint8), cv2.IMREAD_UNCHANGED)


def _check_records_exact(out: Path, root: Path, split: str, mapping, ids) -> list[dict]:
    """The split's records hold every source: image bytes as found, label = mapping(source indices)."""
    rows = read_manifest(out, split).to_pylist()
    records = _records(out, split)
    assert [str(r["id"]) for r in records] == [m["id"] for m in rows] == sorted(ids)
    for rec, row in zip(records, rows):
        assert rec["image"].tobytes() == (root / row["image_path"]).read_bytes()
        source = np.asarray(Image.open(root / row["label_path"]))  # PIL: a palette PNG's indices
        label = _decode_label(rec["label"])
        assert label.dtype == np.uint8 and label.ndim == 2
        np.testing.assert_array_equal(label, mapping(source))
        assert (int(rec["height"]), int(rec["width"])) == source.shape == (row["height"], row["width"])
        assert str(rec["city"]) == row["id"].rpartition("/")[0]
    return rows


def _reduce_zero(source: np.ndarray) -> np.ndarray:
    """mmseg's reduce_zero_label, step by step (LoadAnnotations)."""
    gt = source.astype(np.uint8)
    gt[gt == 0] = 255
    gt = gt - 1
    gt[gt == 254] = 255
    return gt


@pytest.mark.parametrize("from_parent", [False, True], ids=["root", "parent"])
def test_ade20k_builds_exactly_from_its_folder_or_the_one_above(tmp_path, from_parent):
    ade = _ade_tree(tmp_path / "data")
    out = tmp_path / "out"
    results = build(ade.parent if from_parent else ade, out, ["train", "val"], workers=2, shard_size=2,
                    echo=quiet, dataset="ade20k")
    assert [(r.split, r.samples, r.shards) for r in results] == [("train", 5, 3), ("val", 2, 1)]
    rows = _check_records_exact(out, ade, "train", _reduce_zero, [f"ADE_train_{i:08d}" for i in range(1, 6)])
    assert rows[0]["image_path"] == "images/training/ADE_train_00000001.jpg"
    _check_records_exact(out, ade, "val", _reduce_zero, ["ADE_val_00000001", "ADE_val_00000002"])
    assert data_classes(out, "val") == load_dataset("ade20k").class_table()
    assert data_eval_protocol(out, "train") == load_dataset("ade20k").eval
    summary = json.loads((out / "train" / SUMMARY).read_text())
    assert sorted(summary["class_pixels"]) == sorted(load_dataset("ade20k").classes)  # written with sorted keys
    assert summary["ignore_pixels"] == sum(int((np.asarray(Image.open(p)) == 0).sum())
                                           for p in (ade / "annotations" / "training").glob("*.png"))
    assert all(not r.problems for r in verify_output(out))


@pytest.mark.parametrize("name, mapping, classes", [("pascal_context", lambda s: s, 60),
                                                    ("pascal_context_59", _reduce_zero, 59)])
def test_pascal_context_reads_its_split_lists_and_palette_labels_as_indices(tmp_path, name, mapping, classes):
    voc = _pascal_tree(tmp_path / "VOC2010")
    out = tmp_path / "out"
    build(voc, out, ["train", "val"], workers=1, shard_size=8, echo=quiet, dataset=name)
    _check_records_exact(out, voc, "train", mapping, ["2008_000002", "2008_000008", "2008_000123"])
    _check_records_exact(out, voc, "val", mapping, ["2008_000003", "2009_000001"])
    assert data_classes(out, "train").n_cls == classes
    assert all(not r.problems for r in verify_output(out))


def test_a_dataset_file_builds_nested_ids_and_stores_a_grey_image_as_rgb_png(tmp_path):
    root, file = _user_tree(tmp_path)
    out = tmp_path / "out"
    r = run("build-mindrecord", "--dataset", file, "--root", root, "--out", out, "--workers", 1, "--shard-size", 3)
    assert r.exit_code == 0, r.output + r.stderr
    ids = ["a/b/c", "a/b/d", "top", "x/y"]
    rows = {row["id"]: row for row in read_manifest(out, "train").to_pylist()}
    assert sorted(rows) == ids and [rows[i]["city"] for i in ids] == ["a/b", "a/b", "", "x"]
    assert rows["a/b/c"]["image_path"] == "img/tr/a/b/c.png" and rows["a/b/c"]["label_path"] == "ann/tr/a/b/c.png"
    records = {str(rec["id"]): rec for rec in _records(out, "train")}
    for sid in ids:
        source = cv2.imread(str(root / rows[sid]["image_path"]), cv2.IMREAD_UNCHANGED)
        stored = records[sid]["image"].tobytes()
        if sid == "top":  # a grey PNG: re-encoded, losslessly, as the 8-bit RGB PNG records hold
            assert read_info(stored).describe() == "8-bit RGB PNG"
            np.testing.assert_array_equal(decode_image(stored), np.dstack([source] * 3))
        else:
            assert stored == (root / rows[sid]["image_path"]).read_bytes()
        np.testing.assert_array_equal(_decode_label(records[sid]["label"]),
                                      np.asarray(Image.open(root / rows[sid]["label_path"])))
    assert data_classes(out, "val").names == ("sky", "grass", "rock")
    assert data_classes(out, "val").palette[2] == (99, 99, 99)
    assert data_eval_protocol(out, "val") == DatasetEval()
    v = run("verify", out)
    assert v.exit_code == 0 and "0 problems" in v.output


def _committed(out: Path) -> dict:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != ".build.lock"}


def test_reruns_write_nothing_and_a_changed_dataset_file_rebuilds(tmp_path):
    root, file = _user_tree(tmp_path)
    out = tmp_path / "out"
    build(root, out, ["train", "val"], workers=1, shard_size=3, echo=quiet, dataset=file)
    before = _committed(out)
    results = build(root, out, ["train", "val"], workers=1, shard_size=3, echo=quiet, dataset=file)
    assert [r.written for r in results] == [0, 0] and _committed(out) == before
    # A new colour and a renamed class change no record: only each split's manifest and summary.
    file.write_text(yaml.safe_dump({**_USER, "classes": ["sky", "grass", "stone"],
                                    "palette": [[0, 0, 255], [0, 255, 0], [1, 2, 3]]}))
    results = build(root, out, ["train", "val"], workers=1, shard_size=3, echo=quiet, dataset=file)
    after = _committed(out)
    assert [r.written for r in results] == [0, 0]
    assert {k for k in after if after[k] != before[k]} == {f"{s}/{f}" for s in ("train", "val")
                                                             for f in (MANIFEST, SUMMARY)}
    assert data_classes(out, "val").palette[2] == (1, 2, 3) and data_classes(out, "train").names[2] == "stone"
    file.write_text(yaml.safe_dump({**_USER, "reduce_zero_label": True, "classes": ["sky", "grass"],
                                    "palette": [[0, 0, 255], [0, 255, 0]]}))
    results = build(root, out, ["train", "val"], workers=1, shard_size=3, echo=quiet, dataset=file)
    assert [r.written for r in results] == [2, 1]
    label = _decode_label(_records(out, "val")[0]["label"])
    source = np.asarray(Image.open(root / "ann" / "va" / "v" / "1.png"))
    np.testing.assert_array_equal(label, _reduce_zero(source))
    assert data_classes(out, "val").names == ("sky", "grass")


def test_verify_checks_labels_against_the_data_sets_own_classes(tmp_path):
    from mindspore.mindrecord import FileReader

    from mindrecords.writer import commit_shard, write_shard

    root, file = _user_tree(tmp_path)
    out = tmp_path / "out"
    build(root, out, ["val"], workers=1, echo=quiet, dataset=file)
    split = out / "val"
    reader = FileReader(str(split / "val.mindrecord000"), num_consumer=1)
    records = list(reader.get_next())
    reader.close()
    label = _decode_label(records[0]["label"])
    label[0, 0] = 3  # a Cityscapes class, not one of shapes3's three
    records[0]["label"] = cv2.imencode(".png", label)[1].tobytes()
    write_shard(tmp_path / "crafted", "val.mindrecord000", records, "shapes3")
    commit_shard(tmp_path / "crafted", split, "val.mindrecord000")
    (report,) = verify_output(out)
    assert any("label values [3] outside shapes3's classes 0..2 and 255" in m for _, m in report.problems)


def _refusal(tmp_path, case):
    """(dataset, root, what the error says) for a build that must be refused."""
    if case in ("label-out-of-classes", "image-without-label", "out-inside-sources"):
        ade = _ade_tree(tmp_path / "data")
        label = ade / "annotations" / "training" / "ADE_train_00000002.png"
        if case == "label-out-of-classes":
            values = np.asarray(Image.open(label)).copy()
            values[3, 4] = 151
            _label(label, values)
            return "ade20k", ade, (rf"{label}: label values \[151\] are outside ade20k's labels 0\.\.150 and 255 "
                                   r"\(ignore\), 0 ignored and k -> class k-1")
        if case == "out-inside-sources":
            return "ade20k", ade, "inside the source folder .*images/training"
        label.unlink()
        return "ade20k", ade, r"1 images have no \.png label in .*ADE_train_00000002\.jpg"
    if case == "missing-split-list":
        voc = _pascal_tree(tmp_path / "VOC2010")
        (voc / "ImageSets" / "SegmentationContext" / "val.txt").unlink()
        return "pascal_context", voc, r"SegmentationContext/val\.txt: missing split list of split 'val'"
    bad = {"palette-length": ({**_USER, "palette": [[0, 0, 0]] * 2}, "2 palette colours for 3 classes"),
           "unknown-key": ({**_USER, "img_sufix": ".jpg"}, "img_sufix"),
           # With reduce_zero_label the source value 3 is class 2: it cannot also mean ignore.
           "ignore-is-a-class": ({**_USER, "reduce_zero_label": True, "ignore_index": 3},
                                 "ignore_index: 3 is a class with reduce_zero_label .*must be above 3"),
           # The official labelId table gives Cityscapes' 19 classes, whatever the file names.
           "cityscapes-layout-other-classes": ({**_USER, "layout": "cityscapes"},
                                               "layout: cityscapes .* must be Cityscapes'")}[case]
    root, file = _user_tree(tmp_path, bad[0])
    return file, root, rf"shapes3\.yaml: .*{bad[1]}"


@pytest.mark.parametrize("case", ["label-out-of-classes", "palette-length", "unknown-key", "missing-split-list",
                                  "image-without-label", "out-inside-sources", "ignore-is-a-class",
                                  "cityscapes-layout-other-classes"])
def test_a_bad_data_set_is_refused_naming_the_file_and_writes_nothing(tmp_path, case):
    dataset, root, what = _refusal(tmp_path, case)
    out = root / "images" / "training" / "out" if case == "out-inside-sources" else tmp_path / "out"
    r = run("build-mindrecord", "--dataset", dataset, "--root", root, "--out", out, "--workers", 1)
    assert r.exit_code == 2 and re.search(rf"^error: .*{what}", r.stderr, re.M | re.S), r.stderr
    assert "Traceback" not in r.stderr
    assert not list(out.glob("*/manifest.parquet"))


def test_a_refused_parallel_build_leaves_no_partial_shard(tmp_path):
    dataset, root, what = _refusal(tmp_path, "label-out-of-classes")
    out = tmp_path / "out"
    r = run("build-mindrecord", "--dataset", dataset, "--root", root, "--out", out, "--workers", 2,
            "--shard-size", 1)
    assert r.exit_code == 2 and re.search(rf"^error: .*{what}", r.stderr, re.M | re.S), r.stderr
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.partial-*")) == []  # ended with the build

"""make-sample output and the polygon drawing, checked against the official toolkit."""
from __future__ import annotations

import hashlib
import json
import re

import cv2
import numpy as np
import pytest
from cityscapesscripts.helpers.annotation import Annotation
from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
from cityscapesscripts.preparation.json2labelImg import createLabelImage

from prep.errors import PrepError
from base.labels import label_to_train_lut
from prep.polygons import draw, parse_polygons
from prep.sample import CITIES, frames, make_sample


def _tree_digest(root):
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    make_sample(root, n_train=6, n_val=3, height=96, width=192, seed=3)
    return root


def _official(json_path, instances=False):
    ann = Annotation()
    ann.fromJsonFile(str(json_path))
    img = createInstanceImage(ann, "ids") if instances else createLabelImage(ann, "ids")
    return np.asarray(img)


def test_layout_names_and_cities(sample):
    images = sorted(sample.glob("leftImg8bit/*/*/*.png"))
    assert len(images) == 9
    for img in images:
        split, city = img.parts[-3], img.parts[-2]
        assert city in CITIES[split]
        m = re.fullmatch(r"([a-z]+)_(\d{6})_(\d{6})_leftImg8bit\.png", img.name)
        assert m and m[1] == city
        stem = img.name[: -len("_leftImg8bit.png")]
        gt = sample / "gtFine" / split / city
        for suffix in ("polygons.json", "labelIds.png", "instanceIds.png", "color.png"):
            assert (gt / f"{stem}_gtFine_{suffix}").is_file()
        rgb = cv2.imread(str(img), cv2.IMREAD_UNCHANGED)
        assert rgb.shape == (96, 192, 3) and rgb.dtype == np.uint8
    # The demo defaults spread over several real cities per split.
    assert {city for city, _ in frames("val", 8)} == set(CITIES["val"])
    assert len({city for city, _ in frames("train", 24)}) == 4


def test_deterministic_per_seed(tmp_path, sample):
    make_sample(tmp_path / "a", 6, 3, 96, 192, seed=3)
    make_sample(tmp_path / "b", 6, 3, 96, 192, seed=4)
    assert _tree_digest(tmp_path / "a") == _tree_digest(sample)
    assert _tree_digest(tmp_path / "b") != _tree_digest(sample)


def test_labels_pixel_identical_to_official_toolkit(sample):
    jsons = sorted(sample.glob("gtFine/*/*/*_polygons.json"))
    assert len(jsons) == 9
    for js in jsons:
        stem = str(js)[: -len("_polygons.json")]
        ours = cv2.imread(stem + "_labelIds.png", cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(ours, _official(js))
        inst = cv2.imread(stem + "_instanceIds.png", cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(inst.astype(np.int64), _official(js, instances=True))


def test_scenes_cover_most_classes_and_void(tmp_path):
    make_sample(tmp_path, n_train=24, n_val=0, height=64, width=128, seed=0)
    counts = np.zeros(256, np.int64)
    names = set()
    for p in tmp_path.glob("gtFine/train/*/*_labelIds.png"):
        counts += np.bincount(cv2.imread(str(p), cv2.IMREAD_UNCHANGED).ravel(), minlength=256)
    for p in tmp_path.glob("gtFine/train/*/*_polygons.json"):
        names |= {o["label"] for o in json.loads(p.read_text())["objects"]}
    train_hist = np.bincount(label_to_train_lut()[np.repeat(np.arange(256), np.minimum(counts, 1))], minlength=256)
    assert (train_hist[:19] > 0).sum() >= 17
    assert counts[1] > 0  # ego vehicle (void)
    assert {"license plate", "cargroup", "ego vehicle"} <= names


def test_image_colours_follow_the_classes(sample):
    # Per-class mean colours must differ clearly: the learnability the demo relies on.
    sums, ns = np.zeros((34, 3)), np.zeros(34)
    for img in sample.glob("leftImg8bit/*/*/*.png"):
        stem = str(img).replace("leftImg8bit", "gtFine", 1)[: -len("leftImg8bit.png")]
        ids = cv2.imread(stem + "gtFine_labelIds.png", cv2.IMREAD_UNCHANGED)
        rgb = cv2.imread(str(img))[..., ::-1].astype(np.float64)
        for i in np.unique(ids):
            sums[i] += rgb[ids == i].sum(0)
            ns[i] += (ids == i).sum()
    means = {i: sums[i] / ns[i] for i in (7, 11, 21, 23)}  # road, building, vegetation, sky
    for a in means:
        for b in means:
            if a < b:
                assert np.abs(means[a] - means[b]).max() > 20, (a, b)


def test_official_semantics_on_crafted_polygons(tmp_path):
    objects = [
        {"label": "road", "polygon": [[0, 0], [39, 0], [39, 29], [0, 29]]},
        {"label": "car", "polygon": [[5, 5], [30, 5], [30, 25], [5, 25]]},
        {"label": "license plate", "polygon": [[10, 10], [20, 10], [20, 15], [10, 15]]},
        {"label": "persongroup", "polygon": [[25, 2], [35, 2], [35, 20]]},
        {"label": "person", "polygon": [[0, 20], [8, 20], [8, 29], [0, 29]]},
        {"label": "person", "polygon": [[31, 21], [38, 21], [38, 28], [31, 28]]},
        {"label": "sky", "polygon": [[0, 0], [39, 0], [39, 29], [0, 29]], "deleted": 1},
        {"label": "polegroup", "polygon": [[1, 1], [3, 1], [3, 12], [1, 12]]},
    ]
    path = tmp_path / "x_000000_000001_gtFine_polygons.json"
    path.write_text(json.dumps({"imgHeight": 30, "imgWidth": 40, "objects": objects}))
    h, w, objs = parse_polygons(path.read_bytes(), path)
    ours = draw(h, w, objs, path)
    np.testing.assert_array_equal(ours, _official(path))
    np.testing.assert_array_equal(draw(h, w, objs, path, instances=True), _official(path, instances=True))
    assert ours[12, 15] == 26          # license plate never drawn: stays car
    assert ours[5, 33] == 24           # persongroup drawn as person
    assert ours[5, 2] == 18            # polegroup is its own label id
    assert not (ours == 23).any()      # the deleted sky is skipped


def test_unknown_label_and_bad_json_are_errors(tmp_path):
    path = tmp_path / "p.json"
    with pytest.raises(PrepError, match=r"p\.json: label 'spaceship'"):
        draw(4, 4, [("spaceship", [(0, 0), (3, 0), (3, 3)], 0)], path)
    with pytest.raises(PrepError, match=r"p\.json: not a Cityscapes polygons file"):
        parse_polygons(b'{"imgWidth": 4}', path)


@pytest.mark.parametrize("shape", [(1, 1), (3, 517), (64, 128)])
def test_label_png_round_trips_in_every_decoder(shape):
    import io

    from PIL import Image

    from prep.convert import encode_label_png

    rng = np.random.default_rng(0)
    labels = np.repeat(rng.integers(0, 256, (shape[0], 1 + shape[1] // 7), dtype=np.uint8), 7, axis=1)[:, :shape[1]]
    data = encode_label_png(np.ascontiguousarray(labels))
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED), labels)
    pil = Image.open(io.BytesIO(data))
    assert pil.mode == "L"
    np.testing.assert_array_equal(np.asarray(pil), labels)


def _tree(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_rerun_replaces_an_earlier_tree_whole_and_refuses_other_folders(tmp_path):
    from click.testing import CliRunner

    import cli

    out = tmp_path / "cs"
    args = ["make-sample", "--out", str(out), "--height", "32", "--width", "64", "--val", "0"]
    assert CliRunner().invoke(cli.main, args + ["--train", "4"]).exit_code == 0
    assert out.stat().st_mode & 0o777 == 0o755
    assert CliRunner().invoke(cli.main, args + ["--train", "2"]).exit_code == 0
    images = sorted(p.name for p in (out / "leftImg8bit" / "train").rglob("*.png"))
    assert len(images) == 2  # no stale frames of the 4-frame tree mixed in
    (out / "notes.txt").write_text("mine")  # now the user's folder too
    before = {name: (out / name).read_bytes() for name in _tree(out)}
    r = CliRunner(mix_stderr=False).invoke(cli.main, args + ["--train", "3"])
    assert r.exit_code == 2 and f"error: {out}: not empty and not an earlier make-sample tree" in r.stderr
    assert {name: (out / name).read_bytes() for name in _tree(out)} == before
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"\xff\xd8")
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["make-sample", "--out", str(foreign)])
    assert r.exit_code == 2 and "not an earlier make-sample tree" in r.stderr
    assert _tree(foreign) == ["holiday.jpg"] and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]

"""What a segmentation user reaches for after training: mmseg's metric set (against a NumPy
transcription of mmseg 0.x `eval_metrics`), the confusion matrix (JSON counts and picture), one
meaning of "color", a release given as a checkpoint, and export's format/size/metadata defaults."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from base.class_table import CITYSCAPES, ClassTable
from base.labels import label_to_train_lut
from base.overlay import overlay
from evaluate.metrics import ConfusionMatrix, compute_metrics, format_table
from test_eval_cli import built, run, tiny_checkpoint  # noqa: F401  (built: a fixture)


def mmseg_eval_metrics(results, gt_seg_maps, num_classes, ignore_index):
    """mmseg 0.x `eval_metrics(metrics=['mIoU'])` in NumPy, line by line: `intersect_and_union`
    per image (torch.histc over [0, num_classes - 1]: values outside are not counted), totals,
    `total_area_to_metrics`; then the summary of `CustomDataset.evaluate` (nanmean), unrounded."""
    total_i, total_u, total_p, total_l = (np.zeros(num_classes) for _ in range(4))

    def histc(values):
        values = values[(values >= 0) & (values <= num_classes - 1)]
        return np.bincount(values, minlength=num_classes).astype(np.float64)

    for pred_label, label in zip(results, gt_seg_maps):
        mask = label != ignore_index
        pred_label, label = pred_label[mask].astype(np.int64), label[mask].astype(np.int64)
        intersect = pred_label[pred_label == label]
        area_intersect, area_pred_label, area_label = histc(intersect), histc(pred_label), histc(label)
        total_i += area_intersect
        total_u += area_pred_label + area_label - area_intersect
        total_p += area_pred_label
        total_l += area_label
    with np.errstate(invalid="ignore", divide="ignore"):
        ret = {"aAcc": total_i.sum() / total_l.sum(), "IoU": total_i / total_u, "Acc": total_i / total_l}
    return {**ret, "mIoU": np.nanmean(ret["IoU"]), "mAcc": np.nanmean(ret["Acc"])}


def _as_array(per_class: dict) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in per_class.values()])


@pytest.mark.parametrize("n_cls", [19, 7])  # Cityscapes' table (official IoU), another data set's (mmseg's)
def test_metric_set_equals_mmseg_eval_metrics_on_random_maps(n_cls):
    rng = np.random.default_rng(n_cls)
    table = CITYSCAPES if n_cls == 19 else ClassTable("toy", tuple(f"c{i}" for i in range(n_cls)),
                                                      tuple((i, 2 * i, 3 * i) for i in range(n_cls)))
    present = rng.choice(n_cls, size=n_cls - 2, replace=False)  # two classes never in the ground truth
    gts, preds = [], []
    for _ in range(5):
        gt = rng.choice(present, size=(11, 17)).astype(np.uint8)
        gt[rng.random(gt.shape) < 0.15] = 255  # ignore pixels
        pred = np.where(rng.random(gt.shape) < 0.6, gt, rng.integers(0, n_cls, gt.shape)).astype(np.uint8)
        pred[rng.random(gt.shape) < 0.05] = 255  # a prediction outside the classes: nobody's false positive
        pred[gt == present[0]] = present[1]  # a present class never predicted right: IoU and Acc 0
        gts.append(gt)
        preds.append(pred)
    cm = ConfusionMatrix(n_cls, 255)
    for g, p in zip(gts, preds):
        cm.update(g, p)
    ours, theirs = compute_metrics(cm.matrix, table), mmseg_eval_metrics(preds, gts, n_cls, 255)
    for key in ("aAcc", "mIoU", "mAcc"):
        assert ours[key] == pytest.approx(theirs[key], abs=1e-12), key
    for key in ("IoU", "Acc"):
        assert list(ours[key]) == list(table.names)
        np.testing.assert_allclose(_as_array(ours[key]), theirs[key], atol=1e-12, equal_nan=True)
    assert ours["IoU"] == ours["per_class"] and ours["aAcc"] == ours["pixel_accuracy"]
    assert np.isnan(theirs["Acc"]).sum() == 2 and ours["Acc"][table.names[present[0]]] == 0.0

    text = format_table(ours)
    assert f"{'mIoU':<16}{100 * ours['mIoU']:7.2f}" in text.splitlines()  # the line scripts read, unchanged
    assert f"{'mAcc':<16}{100 * ours['mAcc']:7.2f}" in text and f"{'aAcc':<16}{100 * ours['aAcc']:7.2f}" in text
    name = table.names[present[2]]
    row = next(line for line in text.splitlines() if line.startswith(f"{name} "))
    assert row.split()[-2:] == [f"{100 * ours['IoU'][name]:.2f}", f"{100 * ours['Acc'][name]:.2f}"]


def test_eval_json_confusion_and_color_overlay_folders(built, tmp_path):  # noqa: F811
    preds, out_json, picture = tmp_path / "preds", tmp_path / "m.json", tmp_path / "confusion.png"
    r = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 2,
            "--save-predictions", preds, "--json", out_json, "--confusion", picture)
    assert r.exit_code == 0, r.output + r.stderr
    metrics = json.loads(out_json.read_text())
    counts = np.array(metrics["confusion"])
    assert counts.shape == (19, 19) and counts.sum() > 0
    # The counts are the whole story: every score follows from them.
    expected = compute_metrics(np.pad(counts, ((0, 0), (0, 1))))
    assert {k: metrics[k] for k in expected} == expected
    for key in ("mAcc", "aAcc"):
        assert f"{key:<16}{100 * metrics[key]:7.2f}" in r.output
    assert cv2.imread(str(picture)).shape[0] > 500  # drawn, with room for the class names

    gt_lut = label_to_train_lut()
    labels = sorted((preds / "labelIds").glob("*/*.png"))
    assert len(labels) == 2
    for path in labels:  # labelIds on disk (the benchmark's encoding); color/ the pure palette of the same map
        train_ids = gt_lut[cv2.imread(str(path), cv2.IMREAD_UNCHANGED)]
        rel = path.relative_to(preds / "labelIds")
        color = cv2.cvtColor(cv2.imread(str(preds / "color" / rel)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(color, CITYSCAPES.colorize(train_ids))
        image = next((built["root"] / "leftImg8bit" / "val").glob(f"*/{path.stem}_leftImg8bit.png"))
        rgb = cv2.cvtColor(cv2.imread(str(image)), cv2.COLOR_BGR2RGB)
        blend = cv2.cvtColor(cv2.imread(str(preds / "overlay" / rel)), cv2.COLOR_BGR2RGB)
        np.testing.assert_array_equal(blend, overlay(rgb, train_ids))

    # Its own earlier picture is replaced; a user's file of that name is not, before any work.
    again = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--max-images", 1,
                "--confusion", picture)
    assert again.exit_code == 0, again.output + again.stderr
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"user's picture")
    refused = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--confusion", mine)
    assert refused.exit_code == 2 and "was not written by eval --confusion" in refused.stderr
    assert mine.read_bytes() == b"user's picture"
    same = run("eval", "--checkpoint", built["ckpt"], "--data", built["out"], "--json", out_json,
               "--confusion", out_json)
    assert same.exit_code == 2 and "is the metrics file (--json)" in same.stderr


def _release(folder):
    """An official release's shape: checkpoint.pth (torch.save writes a zip) and variant.yml."""
    folder.mkdir()
    (folder / "checkpoint.pth").write_bytes(b"PK\x03\x04" + bytes(60))
    (folder / "variant.yml").write_text("net_kwargs: {}\n")
    return folder


def test_a_release_where_a_checkpoint_is_expected_says_convert_it_first(built, tmp_path):  # noqa: F811
    release = _release(tmp_path / "seg_tiny_mask")
    image = next((built["root"] / "leftImg8bit" / "val").glob("*/*.png"))
    for given in (release, release / "checkpoint.pth"):
        commands = [("predict", image, "--checkpoint", given, "--out", tmp_path / "p"),
                    ("eval", "--checkpoint", given, "--data", built["out"]),
                    ("export", "--checkpoint", given, "--out", tmp_path / "m.onnx"),
                    ("info", "--checkpoint", given)]
        for args in commands:
            r = run(*args)
            assert r.exit_code == 2, (args, r.output)
            assert f"convert it first: python cli.py convert-weights {given} --out {given.with_suffix('.ckpt')}" \
                in r.stderr, (args, r.stderr)
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.onnx").exists()


def test_export_takes_format_from_suffix_and_size_from_config_with_metadata(tmp_path):
    onnx = pytest.importorskip("onnx")
    ckpt = tiny_checkpoint(tmp_path)  # eval.window_size 64
    out = tmp_path / "tiny.onnx"
    r = run("export", "--checkpoint", ckpt, "--out", out)
    assert r.exit_code == 0, r.output + r.stderr
    model = onnx.load(str(out))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta == {"mean": [127.5] * 3, "std": [127.5] * 3, "input_size": [64, 64], "patch_size": 16,
                    "dataset": "cityscapes", "class_names": list(CITYSCAPES.names),
                    "palette": [list(c) for c in CITYSCAPES.palette]}
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:]]
    assert dims == [3, 64, 64]
    for args, message in ((("--format", "mindir"), "must end in .mindir for --format mindir"),
                          (("--out", tmp_path / "tiny.bin"), "must end in .mindir or .onnx")):
        bad = run("export", "--checkpoint", ckpt, "--out", out, *args)
        assert bad.exit_code == 2 and message in bad.stderr

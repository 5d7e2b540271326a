"""Metric units against hand-computed matrices, and agreement with cityscapesscripts."""
from __future__ import annotations

import copy
import math

import cv2
import numpy as np
import pytest

from evaluate.metrics import ConfusionMatrix, compute_metrics, format_table
from base.labels import CATEGORIES, CLASS_NAMES, label_to_train_lut


def official_scores(pred_files, gt_files) -> dict:
    """The official evaluator's result dict for labelId prediction/ground-truth PNG lists."""
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as official

    args = copy.copy(official.args)
    args.evalInstLevelScore = False
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    return official.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], args)


def assert_agrees_with_official(ours: dict, theirs: dict) -> None:
    """Every class IoU, category IoU and the mIoU equal to 1e-9 (NaN/None matched too)."""
    def same(mine, ref, what):
        if mine is None:
            assert math.isnan(ref), f"{what}: ours is NaN, official {ref}"
        else:
            assert abs(mine - ref) < 1e-9, f"{what}: ours {mine}, official {ref}"

    for name in CLASS_NAMES:
        same(ours["per_class"][name], theirs["classScores"][name], name)
    for name in CATEGORIES:
        same(ours["categories"][name], theirs["categoryScores"][name], name)
    same(ours["mIoU"], theirs["averageScoreClasses"], "mIoU")


def _hand_example():
    gt = np.array([[0, 0, 0, 1, 1, 255, 2, 2, 13]], dtype=np.uint8)
    pred = np.array([[0, 1, 3, 1, 1, 0, 2, 255, 14]], dtype=np.uint8)
    return gt, pred


def test_hand_computed_matrix_and_scores():
    gt, pred = _hand_example()
    cm = ConfusionMatrix()
    cm.update(gt, pred)
    expected = np.zeros((19, 20), dtype=np.int64)
    expected[0, 0] = expected[0, 1] = expected[0, 3] = 1
    expected[1, 1] = 2
    expected[2, 2] = 1
    expected[2, 19] = 1  # predicted void: a miss for building, nobody's false positive
    expected[13, 14] = 1
    np.testing.assert_array_equal(cm.matrix, expected)  # the gt-ignore pixel is dropped

    m = compute_metrics(cm.matrix)
    iou = m["per_class"]
    assert iou["road"] == pytest.approx(1 / 3)
    assert iou["sidewalk"] == pytest.approx(2 / 3)
    assert iou["building"] == pytest.approx(1 / 2)
    assert iou["wall"] == 0.0  # absent from gt but predicted: 0, counted in the mean
    assert iou["car"] == 0.0 and iou["truck"] == 0.0
    absent = [n for n in CLASS_NAMES if n not in ("road", "sidewalk", "building", "wall", "car", "truck")]
    assert all(iou[n] is None for n in absent)  # absent and never predicted: NaN, left out
    assert m["mIoU"] == pytest.approx((1 / 3 + 2 / 3 + 1 / 2) / 6)

    cats = m["categories"]
    assert cats["flat"] == pytest.approx(4 / 5)  # road<->sidewalk confusions are category hits
    assert cats["construction"] == pytest.approx(1 / 3)
    assert cats["vehicle"] == 1.0  # car predicted as truck: 0 class IoU, perfect category IoU
    assert cats["object"] is None and cats["human"] is None
    assert m["pixel_accuracy"] == pytest.approx(4 / 8)


def test_accumulation_is_order_free_and_matches_single_pass():
    rng = np.random.default_rng(0)
    gts = [rng.choice([0, 1, 5, 11, 13, 255], size=(7, 9)).astype(np.uint8) for _ in range(4)]
    preds = [rng.integers(0, 21, size=(7, 9)).astype(np.uint8) for _ in range(4)]
    a, b = ConfusionMatrix(), ConfusionMatrix()
    for g, p in zip(gts, preds):
        a.update(g, p)
    b.update(np.concatenate(gts[::-1]), np.concatenate(preds[::-1]))
    np.testing.assert_array_equal(a.matrix, b.matrix)
    valid = sum(int((g != 255).sum()) for g in gts)
    assert a.matrix.sum() == valid
    # Brute force: every (gt, pred) pair with gt evaluated, invalid predictions in the void column.
    brute = np.zeros((19, 20), dtype=np.int64)
    for g, p in zip(gts, preds):
        for gv, pv in zip(g.ravel(), p.ravel()):
            if gv != 255:
                brute[gv, min(pv, 19)] += 1
    np.testing.assert_array_equal(a.matrix, brute)


def test_bad_inputs_are_rejected():
    cm = ConfusionMatrix()
    with pytest.raises(ValueError, match="shape"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 3), np.uint8))
    with pytest.raises(ValueError, match="trainId 19"):
        cm.update(np.full((2, 2), 19, np.uint8), np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.int64))
    assert cm.matrix.sum() == 0


def test_empty_matrix_gives_no_scores_and_table_shows_na():
    m = compute_metrics(np.zeros((19, 20), np.int64))
    assert m["mIoU"] is None and m["pixel_accuracy"] is None
    assert all(v is None for v in m["per_class"].values())
    gt, pred = _hand_example()
    cm = ConfusionMatrix()
    cm.update(gt, pred)
    table = format_table(compute_metrics(cm.matrix))
    assert "road" in table and "n/a" in table and "25.00" in table  # mIoU 0.25


def test_agrees_with_official_evaluator_on_label_images(tmp_path):
    """Random labelId images with void gt, void predictions, absent and absent-but-predicted classes."""
    rng = np.random.default_rng(3)
    lut = label_to_train_lut()
    gt_ids = [0, 1, 4, 7, 8, 9, 11, 13, 17, 20, 21, 23, 24, 26, 27, 33]  # includes void ids 0, 1, 4, 9
    pred_ids = gt_ids + [12, 19, 28, 3, 10, 30]  # wall, light, bus never in gt; more void ids
    cm = ConfusionMatrix()
    preds, gts = [], []
    for i in range(3):
        h, w = 48, 80
        # Blocky ground truth so classes form regions; predictions = gt with noise.
        gt = np.kron(rng.choice(gt_ids, size=(6, 10)), np.ones((8, 8), dtype=np.int64)).astype(np.uint8)
        pred = gt.copy()
        noise = rng.random((h, w)) < 0.3
        pred[noise] = rng.choice(pred_ids, size=int(noise.sum()))
        g = tmp_path / "gt" / "aachen" / f"aachen_000000_{i:06d}_gtFine_labelIds.png"
        p = tmp_path / "pred" / "aachen" / f"aachen_000000_{i:06d}.png"
        for path, img in ((g, gt), (p, pred)):
            path.parent.mkdir(parents=True, exist_ok=True)
            assert cv2.imwrite(str(path), img)
        gts.append(g)
        preds.append(p)
        cm.update(lut[gt], lut[pred])
    ours = compute_metrics(cm.matrix)
    theirs = official_scores(preds, gts)
    assert_agrees_with_official(ours, theirs)
    assert ours["per_class"]["wall"] == 0.0  # predicted, never in gt
    assert ours["per_class"]["terrain"] is None  # neither

"""Confusion matrix and Cityscapes scores with the official toolkit's semantics.

The matrix has one row per ground-truth trainId (0..18) and one column per predicted trainId
plus a last "void" column: cityscapesscripts' `evalPixelLevelSemanticLabeling` counts a pixel
predicted as an ignored id as a miss (false negative) for its ground-truth class but as nobody's
false positive, and that needs its own column. Ground-truth ignore pixels are dropped.

Scores (as in the official script):
- class IoU = tp / (tp + fp + fn); NaN when the class is absent from the ground truth and never
  predicted (left out of the mean); 0 when absent but predicted.
- category IoU is computed from the category-merged matrix, not as a mean of class IoUs:
  tp = every pixel whose gt and prediction are both in the category, fn = the category's rows
  minus tp, fp = the category's columns in rows of evaluated classes of other categories.
- mIoU (and the category mean) average the non-NaN scores in table order.
"""
from __future__ import annotations

import math

import numpy as np

from base.labels import CATEGORIES, CLASS_NAMES, IGNORE, NUM_CLASSES, category_of_class


class ConfusionMatrix:
    """Integer counts, accumulated image by image; memory does not grow with the image count."""

    def __init__(self, n_cls: int = NUM_CLASSES):
        self.n_cls = n_cls
        self.void = n_cls  # column of predictions outside 0..n_cls-1
        self.matrix = np.zeros((n_cls, n_cls + 1), dtype=np.int64)
        # One lookup per pixel value turns (gt, pred) into a flat bin index without boolean
        # masking: gt ignore goes to a trash bin past the matrix, invalid predictions to `void`.
        trash = n_cls * (n_cls + 1)
        self._gt_lut = np.full(256, trash, dtype=np.int32)
        self._gt_lut[:n_cls] = np.arange(n_cls, dtype=np.int32) * (n_cls + 1)
        self._pred_lut = np.full(256, self.void, dtype=np.int32)
        self._pred_lut[:n_cls] = np.arange(n_cls, dtype=np.int32)

    def update(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Add one image: `gt` trainIds (255 ignore), `pred` trainIds; both uint8, same shape."""
        if gt.shape != pred.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from the label shape {gt.shape}")
        if gt.dtype != np.uint8 or pred.dtype != np.uint8:
            raise ValueError(f"labels and predictions must be uint8 trainIds, got {gt.dtype} and {pred.dtype}")
        bad = np.flatnonzero(np.bincount(gt.ravel(), minlength=256)[self.n_cls:IGNORE])
        if bad.size:
            raise ValueError(f"ground truth holds trainId {int(bad[0]) + self.n_cls}, outside 0..{self.n_cls - 1} "
                             f"and {IGNORE} (ignore): the data has more classes than the model")
        index = self._gt_lut[gt.ravel()] + self._pred_lut[pred.ravel()]
        counts = np.bincount(index, minlength=self.n_cls * (self.n_cls + 1) + self.n_cls + 1)
        self.matrix += counts[: self.n_cls * (self.n_cls + 1)].reshape(self.n_cls, self.n_cls + 1)


def _ratio(num: int, den: int) -> float:
    return float(num) / den if den else math.nan


def _mean(scores) -> float:
    # The official average: plain sum of the non-NaN scores in table order.
    valid = [s for s in scores if not math.isnan(s)]
    return sum(valid) / len(valid) if valid else math.nan


def class_iou(matrix: np.ndarray) -> np.ndarray:
    n = matrix.shape[0]
    tp = np.diag(matrix[:, :n])
    fn = matrix.sum(axis=1) - tp
    fp = matrix[:, :n].sum(axis=0) - tp
    return np.array([_ratio(int(t), int(t + p + f)) for t, p, f in zip(tp, fp, fn)], dtype=np.float64)


def category_iou(matrix: np.ndarray, category_index: np.ndarray | None = None) -> np.ndarray:
    cat = category_of_class() if category_index is None else category_index
    scores = []
    for c in range(int(cat.max()) + 1):
        inside = cat == c
        members = np.flatnonzero(inside)
        tp = int(matrix[np.ix_(members, members)].sum())
        fn = int(matrix[members, :].sum()) - tp
        fp = int(matrix[np.ix_(np.flatnonzero(~inside), members)].sum())
        scores.append(_ratio(tp, tp + fp + fn))
    return np.array(scores, dtype=np.float64)


def _none_if_nan(x: float):
    return None if math.isnan(x) else float(x)


def compute_metrics(matrix: np.ndarray) -> dict:
    """The metrics dict (JSON-ready: NaN becomes None) from a (19, 20) confusion matrix."""
    if matrix.shape != (NUM_CLASSES, NUM_CLASSES + 1):
        raise ValueError(f"expected a ({NUM_CLASSES}, {NUM_CLASSES + 1}) confusion matrix, got {matrix.shape}")
    ious = class_iou(matrix)
    cats = category_iou(matrix)
    total = int(matrix.sum())
    return {
        "mIoU": _none_if_nan(_mean(ious)),
        "per_class": {name: _none_if_nan(v) for name, v in zip(CLASS_NAMES, ious)},
        "categories": {name: _none_if_nan(v) for name, v in zip(CATEGORIES, cats)},
        "pixel_accuracy": _none_if_nan(_ratio(int(np.trace(matrix[:, :NUM_CLASSES])), total)),
    }


def format_table(metrics: dict) -> str:
    """A readable table of per-class and per-category IoU (percent) and the summary lines."""
    def pct(v):
        return "    n/a" if v is None else f"{100 * v:7.2f}"

    lines = [f"{'class':<16}{'IoU %':>7}", "-" * 23]
    lines += [f"{name:<16}{pct(v)}" for name, v in metrics["per_class"].items()]
    lines += ["-" * 23, f"{'mIoU':<16}{pct(metrics['mIoU'])}", "",
              f"{'category':<16}{'IoU %':>7}", "-" * 23]
    lines += [f"{name:<16}{pct(v)}" for name, v in metrics["categories"].items()]
    cat_mean = _mean([math.nan if v is None else v for v in metrics["categories"].values()])
    lines += ["-" * 23, f"{'mean':<16}{pct(_none_if_nan(cat_mean))}", "",
              f"{'pixel accuracy':<16}{pct(metrics['pixel_accuracy'])}"]
    return "\n".join(lines)

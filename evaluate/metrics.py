"""Confusion matrix and scores: Cityscapes' with the official toolkit's semantics, every other
data set's as mmseg's `mean_iou` (what the official Segmenter reports for ADE20K and Pascal Context).

The matrix has one row per ground-truth class and one column per predicted class plus a last
"void" column: cityscapesscripts' `evalPixelLevelSemanticLabeling` counts a pixel predicted as an
ignored id as a miss (false negative) for its ground-truth class but as nobody's false positive,
and that needs its own column. Ground-truth ignore pixels are dropped.

mmseg's scores (`mmseg.core.evaluation.eval_metrics`, metric mIoU): per class, intersection,
union and ground-truth area summed over the data set's images; IoU = intersection / union, Acc =
intersection / ground-truth area, NaN for a class with no union (no area); mIoU and mAcc the
NaN-means (`np.nanmean`); aAcc (`pixel_accuracy`) = correct pixels / labelled pixels. Every data
set gets mmseg's Acc, mAcc and aAcc; Cityscapes' IoU keeps the toolkit's semantics below.

Cityscapes' scores (as in the official script):
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

from base.class_table import CITYSCAPES, ClassTable, short_name
from base.labels import CATEGORIES, IGNORE, NUM_CLASSES, category_of_class


class ConfusionMatrix:
    """Integer counts, accumulated image by image; memory does not grow with the image count."""

    def __init__(self, n_cls: int = NUM_CLASSES, ignore: int = IGNORE):
        self.n_cls, self.ignore = n_cls, ignore
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
        """Add one image: `gt` class indices (`ignore` ignored), `pred` class indices; both uint8, same shape."""
        if gt.shape != pred.shape:
            raise ValueError(f"prediction shape {pred.shape} differs from the label shape {gt.shape}")
        if gt.dtype != np.uint8 or pred.dtype != np.uint8:
            raise ValueError(f"labels and predictions must be uint8 trainIds, got {gt.dtype} and {pred.dtype}")
        seen = np.bincount(gt.ravel(), minlength=256)
        seen[self.ignore] = 0
        bad = np.flatnonzero(seen[self.n_cls:])
        if bad.size:
            raise ValueError(f"ground truth holds trainId {int(bad[0]) + self.n_cls}, outside 0..{self.n_cls - 1} "
                             f"and {self.ignore} (ignore): the data has more classes than the model")
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


def _nanmean(scores: np.ndarray) -> float:
    return float(np.nanmean(scores)) if not np.isnan(scores).all() else math.nan


def mmseg_scores(matrix: np.ndarray) -> dict:
    """mmseg's `eval_metrics` from the summed (n, n + 1) matrix: per-class IoU and Acc (arrays, NaN
    where undefined), mIoU, mAcc, aAcc (floats, NaN where undefined)."""
    n = matrix.shape[0]
    intersect = np.diag(matrix[:, :n]).astype(np.float64)
    area_label = matrix.sum(axis=1).astype(np.float64)
    union = matrix[:, :n].sum(axis=0) + area_label - intersect
    with np.errstate(invalid="ignore", divide="ignore"):
        iou, acc = intersect / union, intersect / area_label
        all_acc = intersect.sum() / area_label.sum()
    return {"IoU": iou, "Acc": acc, "mIoU": _nanmean(iou), "mAcc": _nanmean(acc), "aAcc": float(all_acc)}


def _per_class(names, scores) -> dict:
    return {name: _none_if_nan(v) for name, v in zip(names, scores)}


def compute_metrics(matrix: np.ndarray, table: ClassTable = CITYSCAPES) -> dict:
    """The metrics dict (JSON-ready: NaN becomes None) from an (n, n + 1) confusion matrix of the
    classes of `table`: Cityscapes' official scores for Cityscapes' table, mmseg's otherwise
    (`categories` then empty). Both get mmseg's accuracies: aAcc (= pixel_accuracy), mAcc and per-class
    Acc; `IoU` repeats `per_class` under mmseg's name."""
    n = table.n_cls
    if matrix.shape != (n, n + 1):
        raise ValueError(f"expected a ({n}, {n + 1}) confusion matrix, got {matrix.shape}")
    mm = mmseg_scores(matrix)
    if table == CITYSCAPES:
        ious = class_iou(matrix)
        miou, categories = _mean(ious), _per_class(CATEGORIES, category_iou(matrix))
    else:
        ious, miou, categories = mm["IoU"], mm["mIoU"], {}
    return {"mIoU": _none_if_nan(miou), "per_class": _per_class(table.names, ious), "categories": categories,
            "pixel_accuracy": _none_if_nan(mm["aAcc"]), "aAcc": _none_if_nan(mm["aAcc"]),
            "mAcc": _none_if_nan(mm["mAcc"]), "IoU": _per_class(table.names, ious),
            "Acc": _per_class(table.names, mm["Acc"])}


NAME_WIDTH = 20  # a class's first name, cut to this: ADE20K's synonym lists run past 100 characters
TABLE_COLUMNS = 3  # classes side by side in a table of more than LONG_TABLE classes
LONG_TABLE = 30


def _pct(v) -> str:
    return "    n/a" if v is None else f"{100 * v:7.2f}"


def _class_rows(metrics: dict) -> list:
    """One `name  IoU  Acc` cell per class; a long table is laid out in columns, read top to bottom."""
    per_class = metrics["per_class"]
    names = [short_name(name, NAME_WIDTH) for name in per_class]
    width = max(16, max(len(n) for n in names) + 1)
    cells = [f"{name:<{width}}{_pct(iou)}{_pct(metrics['Acc'][key])}"
             for name, (key, iou) in zip(names, per_class.items())]
    head = f"{'class':<{width}}{'IoU %':>7}{'Acc %':>7}"
    if len(cells) <= LONG_TABLE:
        return [head, "-" * len(head)] + cells
    rows = -(-len(cells) // TABLE_COLUMNS)
    columns = [cells[i:i + rows] for i in range(0, len(cells), rows)]
    header = "   ".join(head for _ in columns)
    lines = ["   ".join(col[r] for col in columns if r < len(col)) for r in range(rows)]
    return [header, "-" * len(header)] + lines


def format_table(metrics: dict) -> str:
    """A readable table of per-class IoU and accuracy (percent), for Cityscapes per-category IoU, and
    the summary lines (mIoU, mmseg's mAcc and aAcc, pixel accuracy)."""
    lines = _class_rows(metrics)
    lines += ["-" * 23, f"{'mIoU':<16}{_pct(metrics['mIoU'])}", f"{'mAcc':<16}{_pct(metrics['mAcc'])}",
              f"{'aAcc':<16}{_pct(metrics['aAcc'])}", ""]
    if metrics["categories"]:
        lines += [f"{'category':<16}{'IoU %':>7}", "-" * 23]
        lines += [f"{name:<16}{_pct(v)}" for name, v in metrics["categories"].items()]
        cat_mean = _mean([math.nan if v is None else v for v in metrics["categories"].values()])
        lines += ["-" * 23, f"{'mean':<16}{_pct(_none_if_nan(cat_mean))}", ""]
    lines += [f"{'pixel accuracy':<16}{_pct(metrics['pixel_accuracy'])}"]
    return "\n".join(lines)

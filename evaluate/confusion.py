"""`eval --confusion FILE.png`: the row-normalised confusion matrix drawn with matplotlib.

Row r is the ground-truth class r, column c the predicted class c; each row is divided by its
pixel count, so a cell is the share of the row's pixels predicted as the column's class (a row
without pixels stays blank). The figure grows with the class count so that the class names stay
readable at 150 classes (ADE20K); cell values are written in the cells only while they fit.
The file replaces only one that eval wrote there (base/ownership.py's WrittenFiles).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from base.class_table import short_name
from base.figures import figure, figure_png
from base.ownership import WrittenFiles, output_folder

KIND = "eval --confusion"
CELL_INCHES = (0.12, 0.5)  # a cell's side, smallest and largest: the floor keeps 150 names legible
FIGURE_INCHES = 12.0  # the matrix's side while the cells stay above that floor
VALUES_UP_TO = 30  # classes: up to this many, each cell shows its percentage
DPI = 150
NAME_WIDTH = 20  # a class's first name, cut to this (ADE20K's names are synonym lists)


def row_normalised(counts: np.ndarray) -> np.ndarray:
    """(n, n) float64: each row of pixel `counts` divided by its sum; NaN rows for classes absent
    from the ground truth."""
    counts = np.asarray(counts, dtype=np.float64)
    totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(totals > 0, counts / totals, np.nan)


def confusion_png(counts, names, title: str) -> bytes:
    """PNG bytes of the row-normalised matrix of (n, n) pixel `counts` with the class `names`."""
    n = len(names)
    share = row_normalised(counts)
    cell = min(CELL_INCHES[1], max(CELL_INCHES[0], FIGURE_INCHES / n))
    font = min(10.0, max(5.0, cell * 72 * 0.6))  # points: a tick label as tall as ~60 % of its cell
    labels = [short_name(name, NAME_WIDTH) for name in names]
    side = n * cell
    margin = 0.6 * font * max(len(s) for s in labels) / 72 + 0.5  # inches: the longest name and the axis title
    width, height = margin + side + 1.3, margin + side + 0.5
    fig = figure(figsize=(width, height))
    ax = fig.add_axes([margin / width, margin / height, side / width, side / height])
    image = ax.imshow(np.ma.masked_invalid(100 * share), cmap="Blues", vmin=0.0, vmax=100.0, interpolation="nearest")
    ticks = np.arange(n)
    ax.set_xticks(ticks, labels, rotation=90, fontsize=font)
    ax.set_yticks(ticks, labels, fontsize=font)
    ax.set_xlabel("predicted class", fontsize=max(font, 8))
    ax.set_ylabel("ground-truth class", fontsize=max(font, 8))
    ax.set_title(title, fontsize=max(font, 9))
    if n <= VALUES_UP_TO:
        for r, c in zip(*np.nonzero(share >= 0.005)):
            ax.text(c, r, f"{100 * share[r, c]:.0f}", ha="center", va="center", fontsize=font * 0.8,
                    color="white" if share[r, c] > 0.5 else "black")
    bar = fig.colorbar(image, cax=fig.add_axes([(margin + side + 0.15) / width, margin / height, 0.2 / width,
                                                 side / height]))
    bar.ax.tick_params(labelsize=max(font, 7))
    bar.set_label("% of the row's pixels", fontsize=max(font, 8))
    return figure_png(fig, DPI)


def why_not_confusion_file(path) -> str | None:
    """Why `eval --confusion` may not write `path`: it exists and eval did not write it there."""
    return WrittenFiles(Path(path).parent, KIND).why_not_ours(path)


def write_confusion(path, counts, names, title: str) -> None:
    """Draw and write the figure to `path` atomically, under its folder's lock; FileExistsError if
    `path` holds a file eval did not write."""
    data = confusion_png(counts, names, title)
    folder = Path(path).parent
    with output_folder(folder, KIND):
        WrittenFiles(folder, KIND).write_bytes(path, data)

"""RUN/curves.png: loss, learning rate and validation mIoU against the step, drawn with matplotlib.

matplotlib's object API with the Agg canvas: no pyplot state, no display needed.
"""
from __future__ import annotations

from base.atomic import write_bytes_atomic
from base.figures import figure, figure_png

FIGURE_INCHES = (15.6, 4.0)  # three panels side by side
DPI = 100
MARKERS_UP_TO = 40  # points: up to this many per curve, each gets a marker


def _panel(ax, title: str, points: list, x_max: int) -> None:
    """One curve of (step, value) `points` (None values left out) on `ax`."""
    points = [(x, y) for x, y in points if y is not None]
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.set_xlim(0, max(x_max, 1))
    ax.grid(True, color="0.88")
    if not points:
        ax.text(0.5, 0.5, "no data yet", ha="center", va="center", transform=ax.transAxes)
        return
    xs, ys = zip(*points)
    ax.plot(xs, ys, color="tab:blue", linewidth=1.5, marker="o" if len(xs) <= MARKERS_UP_TO else None,
            markersize=3)


def curves_png(records: list[dict]) -> bytes:
    """PNG bytes of the three panels from metrics.jsonl `records`."""
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    x_max = max([r["step"] for r in records] or [1])
    fig = figure(figsize=FIGURE_INCHES, layout="constrained")
    loss, lr, miou = fig.subplots(1, 3)
    _panel(loss, "train loss", [(r["step"], r.get("loss")) for r in train], x_max)
    _panel(lr, "learning rate", [(r["step"], r.get("lr")) for r in train], x_max)
    _panel(miou, "val mIoU (%)", [(r["step"], None if r.get("mIoU") is None else 100 * r["mIoU"]) for r in val],
           x_max)
    return figure_png(fig, DPI)


def draw_curves(records: list[dict], path) -> None:
    """Three panels side by side from metrics.jsonl records; written atomically."""
    write_bytes_atomic(path, curves_png(records))

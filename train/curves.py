"""RUN/curves.png: loss, learning rate and validation mIoU against the step, drawn with cv2.

cv2 is already a runtime dependency (decoding, resizing); a plotting library is not.
"""
from __future__ import annotations

import cv2
import numpy as np

from base.atomic import write_png_atomic

PANEL_W, PANEL_H, MARGIN_L, MARGIN_B, MARGIN_T = 520, 300, 70, 30, 28
FONT = cv2.FONT_HERSHEY_SIMPLEX
INK, GRID, LINE = (40, 40, 40), (220, 220, 220), (20, 90, 180)  # RGB


def _panel(title: str, xs: list, ys: list, x_max: float, fmt: str) -> np.ndarray:
    img = np.full((PANEL_H, PANEL_W, 3), 255, np.uint8)
    cv2.putText(img, title, (MARGIN_L, 18), FONT, 0.5, INK, 1, cv2.LINE_AA)
    left, right, top, bottom = MARGIN_L, PANEL_W - 15, MARGIN_T, PANEL_H - MARGIN_B
    cv2.rectangle(img, (left, top), (right, bottom), INK, 1)
    points = [(x, y) for x, y in zip(xs, ys) if y is not None and np.isfinite(y)]
    if not points:
        cv2.putText(img, "no data yet", (left + 10, (top + bottom) // 2), FONT, 0.5, INK, 1, cv2.LINE_AA)
        return img
    lo, hi = min(y for _, y in points), max(y for _, y in points)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * abs(lo or 1), hi + 0.5 * abs(hi or 1)
    x_max = max(x_max, 1)

    def to_px(x, y):
        return (int(left + (right - left) * x / x_max), int(bottom - (bottom - top) * (y - lo) / (hi - lo)))

    for i in range(5):
        y = lo + (hi - lo) * i / 4
        py = to_px(0, y)[1]
        cv2.line(img, (left + 1, py), (right - 1, py), GRID, 1)
        cv2.putText(img, format(y, fmt), (4, py + 4), FONT, 0.38, INK, 1, cv2.LINE_AA)
    for i in range(5):
        x = x_max * i / 4
        cv2.putText(img, f"{x:g}", (to_px(x, lo)[0] - 10, bottom + 16), FONT, 0.38, INK, 1, cv2.LINE_AA)
    pixels = np.array([to_px(x, y) for x, y in points], np.int32)
    if len(pixels) > 1:
        cv2.polylines(img, [pixels.reshape(-1, 1, 2)], False, LINE, 2, cv2.LINE_AA)
    for px in pixels if len(pixels) <= 40 else pixels[-1:]:
        cv2.circle(img, tuple(int(v) for v in px), 3, LINE, -1, cv2.LINE_AA)
    return img


def draw_curves(records: list[dict], path) -> None:
    """Three panels side by side from metrics.jsonl records; written atomically."""
    train = [r for r in records if r.get("type") == "train"]
    val = [r for r in records if r.get("type") == "val"]
    x_max = max([r["step"] for r in records] or [1])
    panels = [
        _panel("train loss", [r["step"] for r in train], [r.get("loss") for r in train], x_max, ".3f"),
        _panel("learning rate", [r["step"] for r in train], [r.get("lr") for r in train], x_max, ".1e"),
        _panel("val mIoU (%)", [r["step"] for r in val],
               [None if r.get("mIoU") is None else 100 * r["mIoU"] for r in val], x_max, ".1f"),
    ]
    write_png_atomic(path, np.concatenate(panels, axis=1))

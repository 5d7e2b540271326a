"""Prediction export in the benchmark's submission format, all or nothing.

Layout of DIR:
    labelIds/{city}/{id}.png   labelIds (uint8, one file per image: the submission format)
    color/{city}/{id}.png      Cityscapes palette blended 50 % over the image
    manifest.json              split, checkpoint, image count; written last

Files are written into a hidden sibling `.DIR.partial-XXXX` that is renamed to DIR only after
every image and the manifest are on disk, so an interrupted or failed run never leaves a
prediction set that looks complete. An existing DIR is replaced only if it is empty or provably
an earlier prediction set of this project (base/ownership.py: every file listed in the marker
with its size and CRC-32, nothing added); anything else is refused before any work.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from base.atomic import check_can_create_dir
from base.labels import train_to_label_lut
from base.overlay import overlay
from base.ownership import make_staging, swap_in, why_not_replaceable

MANIFEST = "manifest.json"
KIND = "prediction set"


class PredictionError(OSError):
    """The prediction folder cannot be written; the message names it."""


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise PredictionError(f"{path}: could not write the PNG")


def check_prediction_dir(out_dir) -> None:
    """Fail before any work (creating nothing) if `out_dir` may not be replaced or its parent
    cannot be written."""
    out = Path(out_dir)
    reason = why_not_replaceable(out, KIND)
    if reason is not None:
        raise PredictionError(f"{out}: {reason}; choose another directory")
    try:
        check_can_create_dir(out.parent)
    except OSError as err:
        raise PredictionError(f"{out}: cannot write predictions here ({err.strerror or err})") from None


class PredictionWriter:
    def __init__(self, out_dir, split: str, checkpoint: str | None = None):
        self.out = Path(out_dir)
        self.split = split
        self.checkpoint = checkpoint
        check_prediction_dir(self.out)
        try:
            self.staging = make_staging(self.out)
        except OSError as err:
            raise PredictionError(f"{self.out}: cannot write predictions here ({err.strerror or err})") from None
        self.lut = train_to_label_lut()
        # PNG encoding (cv2 releases the GIL) overlaps with inference on the next image.
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []
        self.count = 0

    def add(self, city: str, image_id: str, train_ids: np.ndarray, rgb: np.ndarray) -> None:
        self._drain(keep=1)  # at most two images in flight bounds memory
        self.pending.append(self.pool.submit(self._write, city, image_id, train_ids, rgb))
        self.count += 1

    def _write(self, city: str, image_id: str, train_ids: np.ndarray, rgb: np.ndarray) -> None:
        _write_png(self.staging / "labelIds" / city / f"{image_id}.png", self.lut[train_ids])
        _write_png(self.staging / "color" / city / f"{image_id}.png",
                   cv2.cvtColor(overlay(rgb, train_ids), cv2.COLOR_RGB2BGR))

    def _drain(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            self.pending.pop(0).result()  # re-raises a failed write here

    def commit(self, images: int) -> None:
        self._drain()
        self.pool.shutdown()
        manifest = {"split": self.split, "checkpoint": self.checkpoint, "images": images,
                    "layout": {"labelIds": "labelIds/{city}/{id}.png", "color": "color/{city}/{id}.png"}}
        try:
            (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            swap_in(self.staging, self.out, KIND)
        except OSError as err:
            raise PredictionError(f"{self.out}: cannot write predictions here ({err.strerror or err})") from None

    def abort(self) -> None:
        for fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.staging, ignore_errors=True)

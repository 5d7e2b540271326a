"""Prediction export in the benchmark's submission format, all or nothing.

Layout of DIR:
    labelIds/{city}/{id}.png   labelIds (uint8, one file per image: the submission format)
    color/{city}/{id}.png      Cityscapes palette blended 50 % over the image
    manifest.json              split, checkpoint, image count; written last

Files are written into a hidden sibling `.DIR.partial-XXXX` that is renamed to DIR only after
every image and the manifest are on disk, so an interrupted or failed run never leaves a
prediction set that looks complete. An existing DIR is replaced only if it is empty or is an
earlier prediction set (has manifest.json); anything else is refused.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np

from prep.labels import colorize, train_to_label_lut

MANIFEST = "manifest.json"


class PredictionError(OSError):
    """The prediction folder cannot be written; the message names it."""


def _write_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), image):
        raise PredictionError(f"{path}: could not write the PNG")


def overlay(rgb: np.ndarray, train_ids: np.ndarray) -> np.ndarray:
    """The palette colours of `train_ids` blended 50 % over `rgb` (uint8 RGB, same HxW)."""
    return cv2.addWeighted(rgb, 0.5, colorize(train_ids), 0.5, 0.0)


class PredictionWriter:
    def __init__(self, out_dir, split: str, checkpoint: str | None = None):
        self.out = Path(out_dir)
        self.split = split
        self.checkpoint = checkpoint
        if self.out.exists():
            if not self.out.is_dir():
                raise PredictionError(f"{self.out}: exists and is not a directory")
            if any(self.out.iterdir()) and not (self.out / MANIFEST).is_file():
                raise PredictionError(f"{self.out}: not empty and not an earlier prediction set "
                                      f"(no {MANIFEST}); choose another directory")
        try:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.partial-", dir=self.out.parent))
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
        (self.staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        old = None
        if self.out.exists():
            # Move the earlier set aside first: rename cannot replace a non-empty directory.
            old = Path(tempfile.mkdtemp(prefix=f".{self.out.name}.old-", dir=self.out.parent))
            os.replace(self.out, old / "set")
        os.replace(self.staging, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)

    def abort(self) -> None:
        for fut in self.pending:
            fut.cancel()
        self.pool.shutdown(wait=True)
        shutil.rmtree(self.staging, ignore_errors=True)

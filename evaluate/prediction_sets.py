"""Prediction export in the benchmark's submission format, all or nothing.

Layout of DIR for Cityscapes:
    labelIds/{city}/{id}.png   labelIds (uint8, one file per image: the submission format)
    color/{city}/{id}.png      the prediction in the Cityscapes palette (as predict's {stem}_color.png)
    overlay/{city}/{id}.png    that palette blended 50 % over the image
    manifest.json              split, checkpoint, image count; written last
for every other data set (a record's id is its image's path under the image folder), the labels
in the source's encoding (`label_offset`: 1 where the build moved them down by one, so ADE20K's
files hold class index + 1, the challenge's format):
    {id}.png                   class index + label_offset (uint8)
    color/{id}.png             the prediction in the data set's palette
    overlay/{id}.png           that palette blended 50 % over the image
    manifest.json

Files are written into a hidden sibling `.DIR.partial-XXXX` that is renamed to DIR only after
every image and the manifest are on disk, so an interrupted or failed run never leaves a
prediction set that looks complete. An existing DIR is replaced only if it is empty or provably
an earlier prediction set of this project (base/ownership.py: every file listed in the marker
with its size and CRC-32, nothing added); anything else is refused before any work. One run at
a time: the writer holds DIR's lock (created empty for it if missing) until the set is in place.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from base.errors import UserError
from base.atomic import png_bytes
from base.class_table import CITYSCAPES, ClassTable
from base.labels import train_to_label_lut
from base.overlay import overlay
from base.ownership import check_replaceable_dir, make_staging, output_folder, swap_in
from mindrecords.schema import check_path_field

MANIFEST = "manifest.json"
PICTURES = ("color", "overlay")  # beside the labels: the palette alone, and blended over the image
KIND = "prediction set"


class PredictionError(UserError, OSError):
    """The prediction folder cannot be written; the message names it."""


def check_prediction_dir(out_dir) -> None:
    """Fail before any work (creating nothing) if `out_dir` may not be replaced or its parent
    cannot be written."""
    check_replaceable_dir(out_dir, KIND, "write predictions")


@contextmanager
def prediction_set(out_dir, split: str, checkpoint: str | None = None, table: ClassTable = CITYSCAPES,
                   label_offset: int = 0):
    """A PredictionWriter for `out_dir` (None if no folder is given) holding the folder's lock for
    the block; the caller commits, a failing block aborts: nothing of the set is left."""
    if out_dir is None:
        yield None
        return
    check_prediction_dir(out_dir)  # before the lock: a user's folder does not even get a lock file
    with output_folder(out_dir, "predict"):
        writer = PredictionWriter(out_dir, split, checkpoint, table, label_offset)
        try:
            yield writer
        except BaseException:
            writer.abort()
            raise


class PredictionWriter:
    """Writes one prediction set; `prediction_set` is how it is used (lock, checks, abort)."""

    def __init__(self, out_dir, split: str, checkpoint: str | None = None, table: ClassTable = CITYSCAPES,
                 label_offset: int = 0):
        self.out = Path(out_dir)
        self.split = split
        self.checkpoint = checkpoint
        self.table = table
        try:
            self.staging = make_staging(self.out)
        except OSError as err:
            raise PredictionError(f"{self.out}: cannot write predictions here ({err.strerror or err})") from None
        if table == CITYSCAPES:
            self.lut, self.labels = train_to_label_lut(), "labelIds"
            self.layout = {"labelIds": "labelIds/{city}/{id}.png", "color": "color/{city}/{id}.png",
                           "overlay": "overlay/{city}/{id}.png"}
        else:
            self.lut, self.labels = np.zeros(256, np.uint8), ""
            self.lut[:table.n_cls] = np.arange(table.n_cls) + label_offset
            self.layout = {"labels": "{id}.png", "label_offset": label_offset, "color": "color/{id}.png",
                           "overlay": "overlay/{id}.png"}
        # PNG encoding (cv2 releases the GIL) overlaps with inference on the next image.
        self.pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Future] = []
        self.count = 0

    def add(self, city: str, image_id: str, train_ids: np.ndarray, rgb: np.ndarray) -> None:
        paths = [self._member(sub, city, image_id) for sub in (self.labels, *PICTURES)]
        self._drain(keep=1)  # at most two images in flight bounds memory
        self.pending.append(self.pool.submit(self._write, paths, train_ids, rgb))
        self.count += 1

    def _member(self, sub: str, city: str, image_id: str) -> Path:
        """staging/sub/{city}/{id}.png on Cityscapes, else staging/sub/{id}.png (the id holds the
        image's subfolders); a record's city or id that would name a file outside the set
        ("../../x", "/tmp/x") is refused by the readers' own rule, whatever the reader let through."""
        folders = (city,) if self.table == CITYSCAPES else ()
        try:
            for name, value in [("city", f) for f in folders] + [("id", image_id)]:
                check_path_field(name, value, f"{self.out}: a record's")
        except ValueError as err:
            raise PredictionError(f"{err}: it names a file outside the prediction folder; nothing written") from None
        path = Path(sub, *folders, f"{image_id}.png")
        if not sub and path.parts[0] in PICTURES:
            raise PredictionError(f"{self.out}: record city {city!r}, id {image_id!r}: its prediction would lie in "
                                  f"{path.parts[0]}/, a folder of the colour images; nothing written")
        return self.staging / path

    def _write(self, paths: list, train_ids: np.ndarray, rgb: np.ndarray) -> None:
        # Straight into the private staging folder: the set is swapped in whole (`commit`).
        images = (self.lut[train_ids], self.table.colorize(train_ids), overlay(rgb, train_ids, table=self.table))
        for path, image in zip(paths, images):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(png_bytes(image))

    def _drain(self, keep: int = 0) -> None:
        while len(self.pending) > keep:
            try:
                self.pending.pop(0).result()  # re-raises a failed write here
            except OSError as err:  # a full disk: its own reason, the set named
                raise PredictionError(f"{self.out}: cannot write predictions here "
                                      f"({err.strerror or err})") from None

    def commit(self, images: int) -> None:
        self._drain()
        self.pool.shutdown()
        manifest = {"split": self.split, "checkpoint": self.checkpoint, "images": images, "layout": self.layout}
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

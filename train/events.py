"""RUN/tensorboard/: the run's TensorBoard events (tensorboardX), beside metrics.jsonl, which stays the record.

Written by rank 0 only, when `train.tensorboard` is on (the default). Tags:
    train/loss, train/lr, train/loss_scale, train/step_time, train/samples_per_s
        each logged step (`train.log_every`): the values of metrics.jsonl's train record
    val/mIoU, val/mAcc, val/aAcc, val/IoU/<class>, val/Acc/<class>
        each validation, in %
    val/images/<image id>
        each validation: image | prediction | ground truth in the data's palette, PANEL_HEIGHT
        pixels high, for a fixed handful of val images (`train.validation.panel_rows`)
A resumed run starts a new event file whose first events tell TensorBoard to hide what an
interrupted session wrote after the resumed step (tensorboardX's `purge_step`), as metrics.jsonl
drops those records: every curve holds each step once.
"""
from __future__ import annotations

import re

import cv2
import numpy as np

from base.class_table import ClassTable, short_name
from settings.schema import Config
from train.run_folder import Run

FOLDER = "tensorboard"
PANEL_HEIGHT = 256  # pixels: Cityscapes' 1024x2048 frames give 256 x 1544 panels
PANEL_GAP = 4  # white pixels between the panel's three pictures
# metrics.jsonl's train record key -> tag
TRAIN_TAGS = {"loss": "train/loss", "lr": "train/lr", "loss_scale": "train/loss_scale",
              "step_time": "train/step_time", "samples_per_s": "train/samples_per_s"}
VAL_SCORES = ("mIoU", "mAcc", "aAcc")
VAL_CLASS_SCORES = ("IoU", "Acc")


def class_tag(name: str) -> str:
    """A class's tag part: its first name (ADE20K's names are synonym lists) in the characters a
    tag may hold (tensorboardX would replace the others the same way)."""
    return re.sub(r"[^-/\w.]", "_", short_name(name))


class TrainEvents:
    """The run's event file; every call is a no-op on ranks other than 0 or with `train.tensorboard` off."""

    def __init__(self, run: Run, cfg: Config, start_step: int):
        """`start_step`: the step this session starts from (0, or the resumed checkpoint's)."""
        self.writer = None
        if run.writer and cfg.train.tensorboard:
            from tensorboardX import SummaryWriter

            # Events at steps after start_step came from an interrupted session: TensorBoard hides them.
            # The suffix orders two sessions started within the same second.
            self.writer = SummaryWriter(str(run.root / FOLDER), purge_step=start_step + 1 if start_step else None,
                                        filename_suffix=f".from_step_{start_step:07d}")

    @property
    def on(self) -> bool:
        return self.writer is not None

    def train(self, record: dict) -> None:
        """One train record of metrics.jsonl (`step` and the TRAIN_TAGS keys, each a number or None)."""
        if self.writer is None:
            return
        for key, tag in TRAIN_TAGS.items():
            if record.get(key) is not None:
                self.writer.add_scalar(tag, record[key], record["step"])
        self.writer.flush()  # a run stopped or killed between logged steps keeps what it logged

    def validation(self, step: int, metrics: dict, panels: dict) -> None:
        """`metrics`: evaluate_split's dict; `panels`: image id -> (H, W, 3) uint8 panel (`panel`)."""
        if self.writer is None:
            return
        for key in VAL_SCORES:
            if metrics.get(key) is not None:
                self.writer.add_scalar(f"val/{key}", 100 * metrics[key], step)
        for key in VAL_CLASS_SCORES:
            for name, value in (metrics.get(key) or {}).items():
                if value is not None:
                    self.writer.add_scalar(f"val/{key}/{class_tag(name)}", 100 * value, step)
        for name, image in panels.items():
            self.writer.add_image(f"val/images/{name}", image, step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def panel(rgb: np.ndarray, pred: np.ndarray, label: np.ndarray, table: ClassTable) -> np.ndarray:
    """(PANEL_HEIGHT, 3 w + 2 PANEL_GAP, 3) uint8: the (H, W, 3) image, the (H, W) prediction and
    ground truth in `table`'s palette (ignored pixels black), side by side, scaled to PANEL_HEIGHT."""
    h, w = label.shape
    size = (max(1, round(w * PANEL_HEIGHT / h)), PANEL_HEIGHT)  # cv2's (width, height)
    photo = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if h > PANEL_HEIGHT else cv2.INTER_LINEAR)
    maps = [cv2.resize(table.colorize(ids), size, interpolation=cv2.INTER_NEAREST) for ids in (pred, label)]
    gap = np.full((PANEL_HEIGHT, PANEL_GAP, 3), 255, np.uint8)
    return np.concatenate([photo, gap, maps[0], gap, maps[1]], axis=1)

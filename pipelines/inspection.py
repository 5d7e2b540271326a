"""`inspect-pipeline`: augmented training samples as [image | label overlay] PNGs.

The PNGs are written into a hidden sibling of OUT and swapped in whole (base/ownership.py): an
existing OUT is replaced only if it is empty or provably an earlier inspection, so a user's
`sample_000.png` is never overwritten.
"""
from __future__ import annotations

import copy
import shutil
from pathlib import Path

import numpy as np

from base.atomic import write_png_atomic
from base.class_table import CITYSCAPES, ClassTable
from base.overlay import overlay
from base.ownership import check_replaceable_dir, make_staging, swap_in
from mindrecords.manifest import data_classes
from mindrecords.reader import read_batches
from pipelines.train_pipeline import train_dataset
from settings.schema import Config


def panel(image: np.ndarray, label: np.ndarray, cfg: Config, table: ClassTable = CITYSCAPES) -> np.ndarray:
    """One augmented sample as an RGB panel: [image | 50% blend with the label colours in the
    data's palette]; void and padding (`data.ignore_index`) show as a checkerboard, the image
    padding is black."""
    return np.concatenate([image, overlay(image, label, cfg.data.ignore_index, table=table)], axis=1)


KIND = "inspection"


def save_inspection(cfg: Config, data_root, n: int, out_dir, progress=None) -> list:
    """Write `n` augmented training samples as `sample_NNN.png`; `out_dir` appears complete or not at all.

    Samples come one at a time (batch size 1) from the real pipeline. `cfg` is checked against the
    data as train checks it (`train.loop.with_data`), so `data.ignore_index` is the data's.
    """
    check_replaceable_dir(out_dir, KIND)  # before any work, creating nothing
    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = 1
    data = train_dataset(cfg, data_root)
    table = data_classes(data_root, cfg.data.train_split)
    out = Path(out_dir)
    staging = make_staging(out)
    try:
        names = []
        for image, label, _ in read_batches(data, data_root, cfg.data.train_split, "inspect-pipeline",
                                            output_numpy=True):
            names.append(f"sample_{len(names):03d}.png")
            write_png_atomic(staging / names[-1], panel(image[0], label[0], cfg, table))
            if progress is not None:
                progress.update(1)
            if len(names) == n:
                break
        swap_in(staging, out, KIND)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out / name for name in names]

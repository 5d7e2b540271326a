"""`inspect-pipeline`: augmented training samples as [image | label overlay] PNGs."""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np

from base.atomic import write_png_atomic
from base.overlay import overlay
from mindrecords.reader import read_batches
from mindrecords.train_pipeline import train_dataset
from settings.schema import Config


def panel(image: np.ndarray, label: np.ndarray, cfg: Config) -> np.ndarray:
    """One augmented sample as an RGB panel: [image | 50% blend with the label colours]; void and
    padding (`data.ignore_index`) show as a checkerboard, the image padding is black."""
    return np.concatenate([image, overlay(image, label, cfg.data.ignore_index)], axis=1)


def save_inspection(cfg: Config, data_root, n: int, out_dir, progress=None) -> list:
    """Write `n` augmented training samples as `sample_NNN.png` into `out_dir` (each atomically).

    Samples come one at a time (batch size 1) from the real pipeline.
    """
    cfg = copy.deepcopy(cfg)
    cfg.train.batch_size = 1
    data = train_dataset(cfg, data_root)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for image, label, _ in read_batches(data, data_root, cfg.data.train_split, "inspect-pipeline", output_numpy=True):
        path = out / f"sample_{len(written):03d}.png"
        write_png_atomic(path, panel(image[0], label[0], cfg))
        written.append(path)
        if progress is not None:
            progress.update(1)
        if len(written) == n:
            break
    return written

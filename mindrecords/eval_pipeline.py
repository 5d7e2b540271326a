"""Evaluation input: a split's shards streamed in order, decoded and normalized by C ops.

Per image the dataset yields `id`, `city`, `image` (float32 CHW, normalized, resized so that its
short side is `cfg.eval.infer_size`; 0 keeps the stored size) and `label` (uint8 trainIds at the
stored size, 255 ignore). With `with_raw=True` it also yields `raw`, the decoded uint8 RGB image
at the stored size (for prediction overlays).
"""
from __future__ import annotations

import cv2
import mindspore.dataset as ds
import mindspore.dataset.transforms as transforms
import mindspore.dataset.vision as vision
import numpy as np

from configs.schema import Config
from mindrecords.reader import split_shard_files

COLUMNS = ["id", "city", "image", "label"]


def _decode_label(data: np.ndarray) -> np.ndarray:
    # vision.Decode always returns 3 channels; a trainId PNG must stay single-channel uint8.
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError("label is not a single-channel 8-bit PNG")
    return label


def eval_dataset(cfg: Config, data_root, split: str, with_raw: bool = False) -> ds.Dataset:
    """The split's images in shard order (deterministic, no shuffling, one pass)."""
    files = split_shard_files(data_root, split)
    workers = max(1, cfg.data.num_parallel_workers)
    data = ds.MindDataset(files, columns_list=COLUMNS, shuffle=False, num_parallel_workers=workers)
    data = data.map([vision.Decode()], input_columns=["image"], num_parallel_workers=workers)
    if with_raw:
        data = data.map([transforms.Duplicate()], input_columns=["image"], output_columns=["image", "raw"])
    ops = [vision.Resize(cfg.eval.infer_size, vision.Inter.BILINEAR)] if cfg.eval.infer_size > 0 else []
    # Resizing uint8 before normalizing matches the reference pipeline (resize, then normalize).
    ops += [vision.Normalize(cfg.model.mean, cfg.model.std), vision.HWC2CHW()]
    data = data.map(ops, input_columns=["image"], num_parallel_workers=workers)
    data = data.map([_decode_label], input_columns=["label"], num_parallel_workers=workers)
    return data

"""Evaluation input: a split's shards streamed in order, decoded and normalized by C ops.

Per image the dataset yields `id`, `city`, `image` (float32 CHW, normalized, resized so that its
short side is `cfg.eval.infer_size`; 0 keeps the stored size) and `label` (uint8 trainIds at the
stored size, 255 ignore). With `with_raw=True` it also yields `raw`, the decoded uint8 RGB image
at the stored size (for prediction overlays).

The resize to the inference size is the one `predict` applies (bilinear on the normalized image,
align_corners=False, `inference_size` below), so `eval` and `predict` see identical
inputs; it runs in the dataset's worker threads.
"""
from __future__ import annotations

import cv2
import mindspore.dataset as ds
import mindspore.dataset.transforms as transforms
import mindspore.dataset.vision as vision
import numpy as np

from settings.schema import Config
from mindrecords.reader import split_shard_files
from base.resize import resize_bilinear

COLUMNS = ["id", "city", "image", "label"]


def _decode_label(data: np.ndarray) -> np.ndarray:
    # vision.Decode always returns 3 channels; a trainId PNG must stay single-channel uint8.
    label = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if label is None or label.ndim != 2 or label.dtype != np.uint8:
        raise ValueError("label is not a single-channel 8-bit PNG")
    return label


def inference_size(h: int, w: int, infer_size: int):
    """Size with the short side at `infer_size` (0 = keep), as the evaluation's resize."""
    if infer_size <= 0 or min(h, w) == infer_size:
        return h, w
    r = infer_size / min(h, w)
    return int(h * r + 0.5), int(w * r + 0.5)


class _InferenceResize:
    def __init__(self, infer_size: int):
        self.infer_size = infer_size

    def __call__(self, image: np.ndarray) -> np.ndarray:
        size = inference_size(image.shape[1], image.shape[2], self.infer_size)
        return np.ascontiguousarray(resize_bilinear(image, size), dtype=np.float32)


def eval_dataset(cfg: Config, data_root, split: str, with_raw: bool = False) -> ds.Dataset:
    """The split's images in shard order (deterministic, no shuffling, one pass)."""
    files = split_shard_files(data_root, split)
    workers = max(1, cfg.data.num_parallel_workers)
    data = ds.MindDataset(files, columns_list=COLUMNS, shuffle=False, num_parallel_workers=workers)
    data = data.map([vision.Decode()], input_columns=["image"], num_parallel_workers=workers)
    if with_raw:
        data = data.map([transforms.Duplicate()], input_columns=["image"], output_columns=["image", "raw"])
    data = data.map([vision.Normalize(cfg.model.mean, cfg.model.std), vision.HWC2CHW()],
                    input_columns=["image"], num_parallel_workers=workers)
    if cfg.eval.infer_size > 0:
        data = data.map([_InferenceResize(cfg.eval.infer_size)], input_columns=["image"],
                        num_parallel_workers=workers)
    data = data.map([_decode_label], input_columns=["label"], num_parallel_workers=workers)
    return data

"""Evaluation input: a split's shards streamed in order, decoded and made into network input.

Per image the dataset yields `id`, `city`, `image` (float32 CHW, `base.network_input`: normalized
and resized to `cfg.eval.infer_size` (and `max_long_side`); infer size 0 keeps the stored size) and
`label` (uint8 train indices at the stored size, unlabelled pixels the data set's ignore index). With
`with_raw=True` it also yields `raw`, the decoded uint8 RGB image at the stored size (for prediction
overlays).

`predict` makes its input with the same function, so `eval` and `predict` see identical inputs;
here it runs in the dataset's worker threads.
"""
from __future__ import annotations

import mindspore.dataset as ds
import mindspore.dataset.transforms as transforms
import mindspore.dataset.vision as vision

from base.network_input import network_input
from mindrecords.manifest import manifest_rows, split_shard_files
from mindrecords.schema import decode_label
from settings.schema import Config

COLUMNS = ["id", "city", "image", "label"]


class _NetworkInput:
    def __init__(self, cfg: Config):
        self.mean, self.std, self.e = cfg.model.mean, cfg.model.std, cfg.eval

    def __call__(self, rgb):
        return network_input(rgb, self.mean, self.std, self.e.infer_size, self.e.max_long_side)


def eval_indices(n_images: int, max_images: int = 0, rank: int = 0, group_size: int = 1) -> list[int]:
    """The manifest rows rank `rank` evaluates: every `group_size`-th of the first `max_images`
    (0 = all), so the ranks' shares are disjoint and together cover them once."""
    n = min(n_images, max_images) if max_images > 0 else n_images
    return list(range(rank, n, group_size))


def eval_dataset(cfg: Config, data_root, split: str, with_raw: bool = False, max_images: int = 0,
                 rank: int = 0, group_size: int = 1) -> ds.Dataset:
    """The split's images in shard order (deterministic, no shuffling, one pass); rank `rank` of
    `group_size` reads its share (`eval_indices`)."""
    files = split_shard_files(data_root, split)
    n_images = manifest_rows(data_root, split)
    workers = max(1, cfg.data.num_parallel_workers)
    data = ds.MindDataset(files, columns_list=COLUMNS, num_parallel_workers=workers,
                          sampler=ds.SubsetSampler(eval_indices(n_images, max_images, rank, group_size)))
    data = data.map([vision.Decode()], input_columns=["image"], num_parallel_workers=workers)
    if with_raw:
        data = data.map([transforms.Duplicate()], input_columns=["image"], output_columns=["image", "raw"])
    data = data.map([_NetworkInput(cfg)], input_columns=["image"], num_parallel_workers=workers)
    data = data.map([decode_label], input_columns=["label"], num_parallel_workers=workers)
    return data

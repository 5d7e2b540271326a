"""Training input: a split's shards streamed through the seed recipe's augmentation.

Per sample, in this order (docs/training_recipe.md; mmseg's Cityscapes train pipeline):

1. decode the image (C op `vision.Decode`) and, inside step 2, the label (single channel, see
   `schema.decode_label`);
2. one native op (`augment.ScaleCropPhotometric`, per-sample seed): a random ratio in
   `data.ratio_range` of `data.base_size` (image bilinear, label nearest) and a random crop of
   at most `data.crop_size` with `data.cat_max_ratio` (up to `data.cat_max_tries` redraws),
   computed as "crop the window, then resample only the window"; then mmseg's photometric
   distortion on the image (it is per-pixel, so doing it before the flip changes nothing);
3. horizontal flip with `data.flip_prob` (C pair op over image and label: one draw for both);
4. one native op (`augment.PadToCrop`): pad right/bottom to the crop (label
   `data.ignore_index`, never a class) and record the real area's size in `valid`;
5. batches of `train.batch_size` (an incomplete last batch is dropped).

Normalization with `model.mean`/`model.std`, zeroing the image padding (0 in normalized space,
as mmseg pads after Normalize), HWC -> CHW and the int32 label are done by the train step's
graph (`train.normalize.NormalizeBatch`): the pipeline ships uint8.

Epochs: each epoch is a permutation of the split's records drawn from (seed, epoch) on the host
(`epoch_indices`): rank r of R reads its own slice of floor(N / R) of it, so every sample comes at
most once per epoch, the ranks' shares are disjoint and all ranks take the same number of steps.
MindSpore's own `shuffle=True, num_samples=N` draws with replacement (docs/mindspore_notes.md), so
the order is given to MindDataset as a `SubsetSampler` over the records' global indices (manifest
order).

Determinism: the same config, epoch_seed and rank give the same batches from a freshly built
dataset. The flip comes from MindSpore's dataset seed, which `build_train_dataset` sets
(`mindspore.dataset.config.set_seed`, which also seeds `random` and `numpy.random`; it is read when
the iterator is created, so build right before iterating). Scale, crop and photometric draws come
from per-sample seeds drawn in data order by a single-worker op, so they do not depend on which
thread augments which sample. One dataset is one epoch: the loop builds the next one.
"""
from __future__ import annotations

import os

import cv2
import mindspore.dataset as ds
import mindspore.dataset.vision as vision
import numpy as np

from settings.schema import Config
from pipelines.augment import PadToCrop, Photometric, ScaleCropPhotometric
from mindrecords.manifest import MindRecordError, manifest_rows, read_manifest, split_shard_files


class _SampleSeeds:
    """Adds a per-sample seed column; runs in one worker so the seeds follow the data order."""

    def __init__(self, seed_sequence: np.random.SeedSequence):
        self.rng = np.random.default_rng(seed_sequence)

    def __call__(self, label):
        return label, np.array(self.rng.integers(0, 2**63 - 1), dtype=np.int64)


def pipeline_seed(cfg: Config, epoch_seed: int | None) -> int:
    """The dataset seed: cfg.seed, or a mix of cfg.seed and epoch_seed (fits MindSpore's uint32)."""
    if epoch_seed is None:
        return cfg.seed
    return int(np.random.SeedSequence([cfg.seed, epoch_seed]).generate_state(1)[0])


def scale_crop_op(cfg: Config) -> ScaleCropPhotometric:
    d = cfg.data
    p = d.photometric
    photometric = Photometric(p.prob, p.brightness_delta, tuple(p.contrast_range), tuple(p.saturation_range),
                              p.hue_delta) if p.enabled else None
    return ScaleCropPhotometric(d.crop_size, d.base_size, d.ratio_range, d.cat_max_ratio, d.cat_max_tries,
                                d.ignore_index, photometric)


def epoch_indices(n_samples: int, seed: int, rank: int = 0, group_size: int = 1) -> list[int]:
    """Rank `rank`'s records of the epoch whose pipeline seed is `seed`, in reading order: its
    slice of floor(n / group_size) of one permutation of 0..n-1 (manifest row order)."""
    per_rank = n_samples // group_size
    order = np.random.default_rng(seed).permutation(n_samples)
    return [int(i) for i in order[rank * per_rank:(rank + 1) * per_rank]]


def epoch_ids(cfg: Config, data_root, epoch: int, rank: int = 0, group_size: int = 1) -> list[str]:
    """The sample ids rank `rank` of `group_size` trains on in epoch `epoch`, in reading order."""
    if not 0 <= rank < group_size:
        raise ValueError(f"rank {rank} is outside 0..{group_size - 1}")
    ids = read_manifest(data_root, cfg.data.train_split, columns=["id"]).column("id").to_pylist()
    return [ids[i] for i in epoch_indices(len(ids), pipeline_seed(cfg, epoch), rank, group_size)]


def build_train_dataset(cfg: Config, files: list, n_samples: int, rank: int = 0, group_size: int = 1,
                        epoch_seed: int | None = None) -> ds.Dataset:
    """The batched pipeline over `files` holding `n_samples` records (see the module docstring).

    Raises `MindRecordError` (naming the shards' folder) if the records cannot give each of
    `group_size` ranks one batch (the data settings were checked when the config was loaded).
    """
    if not 0 <= rank < group_size:
        raise ValueError(f"rank {rank} is outside 0..{group_size - 1}")
    per_rank = n_samples // group_size
    batch = cfg.train.batch_size
    if per_rank < batch:
        raise MindRecordError(
            f"{os.path.dirname(files[0])}: {n_samples} samples cannot give each of {group_size} rank(s) one batch "
            f"of train.batch_size={batch} ({per_rank} per rank)")
    seed = pipeline_seed(cfg, epoch_seed)
    ds.config.set_seed(seed)
    # The dataset already runs one sample per worker thread; OpenCV's own thread pool on top
    # only adds synchronisation (measured; docs/mindspore_notes.md).
    cv2.setNumThreads(1)
    # MindSpore rejects more workers than cores.
    workers = max(1, min(cfg.data.num_parallel_workers, os.cpu_count() or 1))
    crop = cfg.data.crop_size
    order = epoch_indices(n_samples, seed, rank, group_size)
    data = ds.MindDataset(files, columns_list=["image", "label"], sampler=ds.SubsetSampler(order),
                          num_parallel_workers=workers)
    data = data.map(_SampleSeeds(np.random.SeedSequence([seed, rank])), input_columns=["label"],
                    output_columns=["label", "aug_seed"], num_parallel_workers=1)
    data = data.map(vision.Decode(), input_columns=["image"], num_parallel_workers=workers)
    data = data.map(scale_crop_op(cfg), input_columns=["image", "label", "aug_seed"],
                    output_columns=["image", "label"], num_parallel_workers=workers)
    data = data.map(vision.RandomHorizontalFlip(cfg.data.flip_prob), input_columns=["image", "label"],
                    num_parallel_workers=workers)
    data = data.map(PadToCrop(crop, cfg.data.ignore_index), input_columns=["image", "label"],
                    output_columns=["image", "label", "valid"], num_parallel_workers=workers)
    data = data.project(["image", "label", "valid"])
    return data.batch(batch, drop_remainder=True)


def train_dataset(cfg: Config, data_root, rank: int = 0, group_size: int = 1,
                  epoch_seed: int | None = None) -> ds.Dataset:
    """Batches of `image` uint8 (B,crop,crop,3) RGB, `label` uint8 (B,crop,crop) trainIds and
    `valid` int32 (B,2): the (height, width) of each sample's real pixels, the rest is padding
    (image 0, label `data.ignore_index`). `train.normalize.NormalizeBatch` makes the network input.

    Reads `data_root/{cfg.data.train_split}`; rank `rank` of `group_size` gets its own
    disjoint share. Raises `MindRecordError` (naming the split dir) if the split is missing or
    damaged or too small for one batch per rank.
    """
    split = cfg.data.train_split
    files = split_shard_files(data_root, split)
    n_samples = manifest_rows(data_root, split)
    return build_train_dataset(cfg, files, n_samples, rank, group_size, epoch_seed)

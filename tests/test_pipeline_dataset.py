"""The whole training pipeline over tiny shards: alignment, flip, padding, determinism, sharding, errors."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from settings.schema import Config, ConfigError
from mindrecords.manifest import MindRecordError
from pipelines.train_pipeline import build_train_dataset
from mindrecords.writer import write_shard
from test_pipeline_augment import _coded_pair, _decode_colours, _interior, _palette

H, W, CROP = 64, 128, 48


def _write_shards(path, pairs):
    """One shard in the project's schema (PREP's writer) holding `pairs` of RGB image and label."""
    records = ({"id": f"s{k}", "city": "c", "height": image.shape[0], "width": image.shape[1],
                "image": cv2.imencode(".png", image[:, :, ::-1])[1].tobytes(),
                "label": cv2.imencode(".png", label)[1].tobytes()} for k, (image, label) in enumerate(pairs))
    write_shard(path.parent, path.name, records)
    return [str(path)]


def _cfg(**data) -> Config:
    cfg = Config()
    cfg.train.batch_size = 2
    cfg.data.crop_size = CROP
    cfg.data.base_size = [W, H]
    for key, value in data.items():
        setattr(cfg.data, key, value)
    return cfg


def _batches(cfg, files, n, **kw):
    data = build_train_dataset(cfg, files, n, **kw)
    return list(data.create_tuple_iterator(output_numpy=True, num_epochs=1))


def _samples(batches):
    return [sample for batch in batches for sample in zip(*batch)]


def _network_input(image, valid, cfg):
    """What the train step's graph makes of one pipeline sample (train.normalize.NormalizeBatch)."""
    import mindspore as ms

    from train.normalize import NormalizeBatch

    out = NormalizeBatch(cfg.model.mean, cfg.model.std)(ms.Tensor(image[None]), ms.Tensor(valid[None]))
    return out.asnumpy()[0]


@pytest.fixture(scope="module")
def coded_files(tmp_path_factory):
    pairs = [_coded_pair(H, W, seed=k) for k in range(8)]
    return _write_shards(tmp_path_factory.mktemp("coded") / "train.mindrecord", pairs)


def test_batches_have_the_documented_shapes_and_types(coded_files):
    batches = _batches(_cfg(), coded_files, 8)
    assert len(batches) == 4
    images, labels, valid = batches[0]
    assert images.shape == (2, CROP, CROP, 3) and images.dtype == np.uint8
    assert labels.shape == (2, CROP, CROP) and labels.dtype == np.uint8
    assert valid.shape == (2, 2) and valid.dtype == np.int32


def test_label_matches_image_after_every_random_op(coded_files):
    cfg = _cfg(ratio_range=[0.5, 2.0])
    cfg.data.photometric.enabled = False  # colours must stay decodable; photometric is tested on its own
    checked = 0
    for image, label, (h, w) in _samples(_batches(cfg, coded_files, 8)):
        inner = _interior(label)
        inner[h:], inner[:, w:] = False, False
        decoded = _decode_colours(image)
        assert (decoded[inner] == label[inner]).mean() > 0.99
        checked += inner.sum()
    assert checked > 2000


def test_flip_moves_image_and_label_together(tmp_path):
    # Class = vertical band index, increasing left to right: a flipped sample decreases.
    label = np.repeat((np.arange(W) // 16).astype(np.uint8)[None], H, axis=0)
    files = _write_shards(tmp_path / "bands.mindrecord", [(_palette()[label], label)] * 16)
    cfg = _cfg(ratio_range=[1.0, 1.0], cat_max_ratio=1.0)
    cfg.data.photometric.enabled = False
    orientations = []
    for image, label_out, _ in _samples(_batches(cfg, files, 16)):
        steps = np.sign(np.diff(label_out[0].astype(int)))
        assert len(set(steps[steps != 0])) == 1  # monotonic across the crop
        orientations.append(steps[steps != 0][0])
        inner = _interior(label_out)
        assert (_decode_colours(image)[inner] == label_out[inner]).all()
    assert set(orientations) == {-1, 1}


def test_padding_is_zero_in_normalized_image_and_ignore_in_label(tmp_path):
    # No void pixels in the data: 255 in the output can only be padding.
    pairs = [(_palette()[lab], lab) for lab in (np.minimum(_coded_pair(H, W, k)[1], 18) for k in range(8))]
    files = _write_shards(tmp_path / "nopad.mindrecord", pairs)
    cfg = _cfg(ratio_range=[0.5, 1.0])
    padded = 0
    for image, label, valid in _samples(_batches(cfg, files, 8)):
        rows = np.flatnonzero((label != 255).any(1))
        cols = np.flatnonzero((label != 255).any(0))
        h, w = rows.max() + 1, cols.max() + 1
        # The valid area is the top-left rectangle of the scaled size (ratio 0.5..1.0 of 64 rows).
        assert 32 <= h <= CROP and w == CROP
        assert list(valid) == [h, w]
        assert (label[:h, :w] != 255).all() and (label[h:] == 255).all()
        net_in = _network_input(image, valid, cfg)
        assert net_in.shape == (3, CROP, CROP) and net_in.dtype == np.float32
        assert (net_in[:, h:] == 0.0).all()
        # Normalized image values from uint8 with mean 127.5 are never exactly 0.
        assert (net_in[:, :h] != 0.0).all()
        assert np.allclose(net_in[:, :h].transpose(1, 2, 0), (image[:h].astype(np.float64) - 127.5) / 127.5, atol=1e-6)
        padded += h < CROP
    assert padded > 0


def test_same_seed_same_batches_other_seed_other_batches(coded_files):
    def run(seed=0, **kw):
        cfg = _cfg()
        cfg.seed = seed
        return np.concatenate([b[0].ravel() for b in _batches(cfg, coded_files, 8, **kw)])

    first = run()
    assert np.array_equal(first, run())
    assert not np.array_equal(first, run(seed=1))
    assert np.array_equal(run(epoch_seed=3), run(epoch_seed=3))
    assert not np.array_equal(run(epoch_seed=3), run(epoch_seed=4))


def test_ranks_see_disjoint_equal_shares(tmp_path):
    # Sample k has label k everywhere, so the label identifies the sample after augmentation.
    pairs = [(np.full((H, W, 3), 20 * k, np.uint8), np.full((H, W), k, np.uint8)) for k in range(9)]
    files = _write_shards(tmp_path / "ids.mindrecord", pairs)
    cfg = _cfg()
    cfg.train.batch_size = 1
    seen = []
    for rank in range(2):
        ids = [int(label[0, 0]) for _, label, _ in _samples(_batches(cfg, files, 9, rank=rank, group_size=2))]
        assert len(ids) == len(set(ids)) == 4  # floor(9 / 2): equal step counts on every rank
        seen.append(set(ids))
    assert not seen[0] & seen[1]


def test_too_few_samples_per_rank_is_an_error(coded_files):
    cfg = _cfg()
    cfg.train.batch_size = 3
    with pytest.raises(MindRecordError, match=r"coded\d*: 8 samples cannot give each of 4 rank"):
        build_train_dataset(cfg, coded_files, 8, rank=0, group_size=4)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        build_train_dataset(cfg, coded_files, 8, rank=2, group_size=2)


def _data_config(**data):
    """A config with these data settings, validated as a config file's would be."""
    from dataclasses import asdict

    from settings.schema import config_from_dict

    d = asdict(_cfg())
    for key, value in data.items():
        section, _, name = key.rpartition(".")
        (d["data"][section] if section else d["data"])[name] = value
    return config_from_dict(d, "test.yaml")


@pytest.mark.parametrize("settings, key", [
    ({"ratio_range": [0.25, 0.5]}, "data.crop_size"),  # crop larger than any scaled image
    ({"ignore_index": 3}, "data.ignore_index"),  # padding would be a class
    ({"ratio_range": [2.0, 0.5]}, "data.ratio_range"),
    ({"base_size": [128]}, "data.base_size"),
    ({"cat_max_ratio": 0.0}, "data.cat_max_ratio"),
    ({"flip_prob": 1.5}, "data.flip_prob"),
    ({"num_parallel_workers": 0}, "data.num_parallel_workers"),
    ({"photometric.hue_delta": 200}, "data.photometric.hue_delta"),
    ({"photometric.contrast_range": [1.5, 0.5]}, "data.photometric.contrast_range"),
    ({"photometric.prob": -0.1}, "data.photometric.prob"),
])
def test_unusable_data_settings_are_config_errors(settings, key):
    assert _data_config().data.crop_size == CROP  # the unchanged settings are usable
    with pytest.raises(ConfigError, match=r"test\.yaml: .*" + key.replace(".", r"\.")):
        _data_config(**settings)


def test_a_colour_label_png_fails_with_a_clear_message(tmp_path):
    image, label = _coded_pair(H, W)
    files = _write_shards(tmp_path / "bad.mindrecord", [(image, np.dstack([label] * 3))] * 4)
    with pytest.raises(RuntimeError, match="single-channel 8-bit"):
        _batches(_cfg(), files, 4)


def _ids_of_epoch(files, n, epoch, rank=0, group_size=1, batch=1):
    cfg = _cfg()
    cfg.train.batch_size = batch
    return [int(label[label != 255][0]) for _, label, _ in
            _samples(_batches(cfg, files, n, rank=rank, group_size=group_size, epoch_seed=epoch))]


@pytest.fixture(scope="module")
def id_files(tmp_path_factory):
    """Sample k has label k everywhere, so the label identifies the sample after augmentation."""
    pairs = [(np.full((H, W, 3), 20 * k, np.uint8), np.full((H, W), k, np.uint8)) for k in range(11)]
    return _write_shards(tmp_path_factory.mktemp("ids") / "ids.mindrecord", pairs)


def test_an_epoch_is_a_permutation_of_the_split(id_files):
    """MindDataset's own shuffle with num_samples draws with replacement (24 records gave 16 ids)."""
    orders = [_ids_of_epoch(id_files, 11, epoch) for epoch in range(4)]
    for order in orders:
        assert sorted(order) == list(range(11))  # every sample exactly once
    assert len({tuple(o) for o in orders}) == 4  # each epoch its own order
    assert _ids_of_epoch(id_files, 11, 2) == orders[2]  # deterministic from (seed, epoch)


def test_epoch_ids_are_the_order_the_pipeline_reads(id_files):
    from pipelines.train_pipeline import epoch_indices, pipeline_seed

    cfg = _cfg()
    for rank, ranks in ((0, 1), (0, 3), (2, 3)):
        want = epoch_indices(11, pipeline_seed(cfg, 5), rank, ranks)
        assert _ids_of_epoch(id_files, 11, 5, rank, ranks) == want
    shares = [set(epoch_indices(11, pipeline_seed(cfg, 5), r, 3)) for r in range(3)]
    assert [len(s) for s in shares] == [3, 3, 3] and len(set.union(*shares)) == 9  # disjoint floor(11/3)

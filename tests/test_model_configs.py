"""Every YAML in configs/ loads; the variants describe the published models; model keys are validated."""
from __future__ import annotations

from pathlib import Path

import pytest

from settings.files import load_config

from settings.schema import ConfigError, config_from_dict

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
VARIANTS = {"tiny": (192, 3, 12, 16), "small": (384, 6, 12, 16), "base": (768, 12, 12, 16),
            "large": (1024, 16, 24, 16), "base8": (768, 12, 12, 8)}


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_config(path)
    # Each recipe's classes are its data set's; my_dataset.yaml leaves them to the data (null).
    expected = None if path.name == "my_dataset.yaml" else 60 if "pascal_context" in path.name \
        else 150 if "ade20k" in path.name else 19
    assert cfg.model.n_cls == expected


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("decoder", ["mask", "linear"])
def test_variant_files(name, decoder):
    m = load_config(CONFIGS / f"seg_{name}_{decoder}.yaml").model
    assert (m.d_model, m.n_heads, m.n_layers, m.patch_size) == VARIANTS[name]
    assert m.decoder.name == {"mask": "mask_transformer", "linear": "linear"}[decoder]
    assert m.mean == m.std == [127.5] * 3


def test_seed_config():
    cfg = load_config(CONFIGS / "segmenter_large_cityscapes.yaml")
    m, t, e = cfg.model, cfg.train, cfg.eval
    assert (m.d_model, m.n_layers, m.n_heads, m.patch_size, m.n_cls) == (1024, 24, 16, 16, 19)
    assert (m.decoder.name, m.decoder.dropout, m.drop_path_rate) == ("mask_transformer", 0.1, 0.1)
    assert cfg.data.crop_size == 768 and m.image_size == [768, 768]
    assert (e.window_size, e.window_stride, e.infer_size) == (768, 512, 1024)
    assert (t.optimizer.name, t.optimizer.momentum, t.optimizer.lr) == ("sgd", 0.9, 0.01)
    assert (t.schedule.name, t.schedule.warmup_iters, t.schedule.min_lr) == ("poly", 0, 1e-5)
    assert (t.epochs, t.batch_size, t.clip_grad_norm, t.amp_level, t.loss_scale.dynamic) == (216, 1, 5.0, "O1", True)


@pytest.mark.parametrize("model,key", [
    ({"image_size": [768, 770]}, "model.image_size"),
    ({"image_size": [768]}, "model.image_size"),
    ({"image_size": "768"}, "model.image_size"),
    ({"d_model": 200, "n_heads": 4}, "mask decoder's heads"),
    ({"patch_size": 16.0}, "model.patch_size"),
    ({"decoder": {"n_layerz": 1}}, "model.decoder.n_layerz"),
    ({"decoder": {"dropout": 1.5}}, "dropout"),
    ({"n_layers": 0}, "model.n_layers"),
    ({"std": [1, 0, 1]}, "model.std"),
])
def test_model_key_validation(model, key):
    with pytest.raises(ConfigError, match=key.replace("(", r"\(")):
        config_from_dict({"model": model}, "x.yaml")


def _leaves(d: dict, prefix: str = ""):
    for key, value in d.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


@pytest.mark.parametrize("path", sorted(p for p in CONFIGS.glob("*.yaml") if p.name != "cityscapes.yaml"),
                         ids=lambda p: p.name)
def test_each_config_holds_only_what_differs_from_its_base(path):
    import yaml
    from dataclasses import asdict

    raw = yaml.safe_load(path.read_text())
    assert "base" in raw, f"{path.name} repeats the shared recipe instead of naming a base"
    base = asdict(load_config(path.parent / raw.pop("base")))
    for key, value in _leaves(raw):
        node = base
        for part in key.split("."):
            node = node[part]
        assert node != value, f"{path.name}: {key} = {value!r} is already its base's value"

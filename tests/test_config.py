"""Config validation: unknown keys and wrong types are errors naming the key."""
import pytest
import yaml

from settings.files import apply_overrides, load_config, save_config

from settings.schema import ConfigError, config_from_dict


def test_defaults_validate():
    cfg = config_from_dict({})
    assert cfg.model.decoder.name == "mask_transformer"


@pytest.mark.parametrize("data,key", [
    ({"model": {"d_modle": 3}}, "model.d_modle"),
    ({"train": {"optimizer": {"lr": "fast"}}}, "train.optimizer.lr"),
    ({"train": {"batch_size": 1.5}}, "train.batch_size"),
    ({"eval": {"flip": "yes"}}, "eval.flip"),
    ({"model": {"decoder": {"name": "fpn"}}}, "model.decoder.name"),
    ({"data": {"base_size": 5}}, "data.base_size"),
])
def test_bad_keys_and_types_name_the_key(data, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.").replace("[", r"\[")):
        config_from_dict(data, "x.yaml")


def test_stride_rule():
    with pytest.raises(ConfigError, match="window_stride"):
        config_from_dict({"eval": {"window_size": 64, "window_stride": 0}})
    with pytest.raises(ConfigError, match="window_stride"):
        config_from_dict({"eval": {"window_size": 64, "window_stride": 65}})


def test_roundtrip_and_overrides(tmp_path):
    cfg = config_from_dict({"seed": 3, "model": {"n_cls": 7}})
    path = tmp_path / "c.yaml"
    save_config(cfg, path)
    assert load_config(path) == cfg
    cfg2 = apply_overrides(cfg, ["train.optimizer.lr=0.5", "eval.scales=[0.5, 1.0]"])
    assert cfg2.train.optimizer.lr == 0.5 and cfg2.eval.scales == [0.5, 1.0]
    with pytest.raises(ConfigError, match="train.nope"):
        apply_overrides(cfg, ["train.nope=1"])


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"model": {"n_heads": "three"}}))
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.n_heads"):
        load_config(bad)

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


def _yaml(path, data):
    path.write_text(yaml.safe_dump(data))
    return path


def test_a_file_holds_only_what_differs_from_its_base(tmp_path):
    _yaml(tmp_path / "recipe.yaml", {"seed": 7, "model": {"d_model": 128, "n_heads": 2, "decoder": {"n_layers": 1}},
                                     "eval": {"scales": [0.5, 1.0, 1.5]}})
    (tmp_path / "sub").mkdir()
    _yaml(tmp_path / "sub" / "v.yaml",
          {"base": "../recipe.yaml", "model": {"n_heads": 4, "decoder": {"name": "linear"}}, "eval": {"scales": [1.0]}})
    cfg = load_config(tmp_path / "sub" / "v.yaml")
    assert cfg.seed == 7 and cfg.model.d_model == 128  # from the base
    assert cfg.model.n_heads == 4 and cfg.model.decoder.name == "linear"  # the variant's own
    assert cfg.model.decoder.n_layers == 1  # sections merge key by key
    assert cfg.eval.scales == [1.0]  # a list replaces, it is not merged
    assert cfg.train.optimizer.lr == 0.01  # neither file: the schema default
    saved = tmp_path / "resolved.yaml"
    save_config(cfg, saved)
    assert "base" not in yaml.safe_load(saved.read_text()) and load_config(saved) == cfg


def test_each_file_of_a_chain_is_validated_and_named(tmp_path):
    _yaml(tmp_path / "a.yaml", {"model": {"d_modle": 3}})
    _yaml(tmp_path / "b.yaml", {"base": "a.yaml", "seed": 1})
    with pytest.raises(ConfigError, match=r"a\.yaml: unknown key 'model\.d_modle'"):
        load_config(tmp_path / "b.yaml")
    _yaml(tmp_path / "c.yaml", {"base": "missing.yaml"})
    with pytest.raises(ConfigError, match=r"c\.yaml: base: .*missing\.yaml: config file not found"):
        load_config(tmp_path / "c.yaml")
    _yaml(tmp_path / "d.yaml", {"base": "e.yaml"})
    _yaml(tmp_path / "e.yaml", {"base": "d.yaml"})
    with pytest.raises(ConfigError, match="loops back"):
        load_config(tmp_path / "d.yaml")
    _yaml(tmp_path / "f.yaml", {"base": 3})
    with pytest.raises(ConfigError, match=r"f\.yaml: base: expected the file name"):
        load_config(tmp_path / "f.yaml")
    # Cross-field rules hold on the composed config: the base's heads no longer divide the variant's width.
    _yaml(tmp_path / "g.yaml", {"model": {"n_heads": 3}})
    _yaml(tmp_path / "h.yaml", {"base": "g.yaml", "model": {"d_model": 128}})
    with pytest.raises(ConfigError, match=r"h\.yaml: model\.d_model \(128\) must be divisible by model\.n_heads \(3\)"):
        load_config(tmp_path / "h.yaml")


def test_a_retired_key_is_accepted_and_ignored(tmp_path):
    old = _yaml(tmp_path / "old_run.yaml", {"data": {"shuffle_buffer": 64, "crop_size": 512}})
    cfg = load_config(old)
    assert cfg.data.crop_size == 512 and not hasattr(cfg.data, "shuffle_buffer")
    with pytest.raises(ConfigError, match="shuffle_bufer"):  # a misspelling is still an error
        config_from_dict({"data": {"shuffle_bufer": 64}})

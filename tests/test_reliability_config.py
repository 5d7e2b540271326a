"""Issue 19, configs and weights: one strict YAML loader (duplicate keys, alias bombs, short
messages), whole-config validation at load, finite weights, a checkpoint's config checked against
its weights, bounded .pth containers, convert-weights never replacing an input or a user's .yaml,
no temporary file left by a failed save."""
from __future__ import annotations

import errno
import os
import shutil
import struct
import zipfile
from pathlib import Path

import mindspore as ms
import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import cli
from base.device import setup_context
from weights.checkpoint import CheckpointError, load_model, save_model
from weights.convert import config_from_variant
from model.segmenter import build_segmenter
from weights.torch_pickle import TorchFileError, load_torch_file
from settings.files import apply_overrides, config_beside, load_config, parse_yaml, save_config
from settings.schema import Config, ConfigError, DecoderConfig, ModelConfig, config_from_dict
from peak import cli_peak as measured

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden"
RELEASE = GOLDEN / "seg_golden_mask"
PEAK_LIMIT_KIB = 1 << 20  # 1 GiB
MESSAGE_LIMIT = 1000


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


def refused(*args, match: str) -> str:
    result = run(*args)
    assert result.exit_code == 2, (result.output, result.stderr, result.exception)
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and match in last, result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def cli_peak(tmp_path: Path, *args) -> tuple[int, str, int]:
    """(exit code, stderr, peak RSS in KiB) of the CLI run as its own process."""
    code, _, err, peak = measured(*args)
    return code, err, peak


def tiny_cfg(**model) -> Config:
    kw = dict(d_model=64, n_heads=2, n_layers=2, image_size=[32, 32], patch_size=16, n_cls=5,
              decoder=DecoderConfig(n_layers=1))
    kw.update(model)
    return Config(model=ModelConfig(**kw))


# --- 1. duplicate keys ---------------------------------------------------------------------------

def test_a_duplicate_key_at_any_depth_is_refused_with_its_line(tmp_path):
    top = tmp_path / "top.yaml"
    top.write_text("data:\n  crop_size: 512\nseed: 1\ndata:\n  base_size: [1024, 512]\n")
    with pytest.raises(ConfigError, match=r"top\.yaml: line 4: duplicate key 'data'"):
        load_config(top)
    deep = tmp_path / "deep.yaml"
    deep.write_text("model:\n  decoder:\n    n_layers: 1\n    dropout: 0.0\n    n_layers: 2\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: line 5: duplicate key 'n_layers'"):
        load_config(deep)
    # in a base file of the chain, named with that file
    (tmp_path / "leaf.yaml").write_text("base: deep.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match=r"deep\.yaml: line 5"):
        load_config(tmp_path / "leaf.yaml")
    # a merge key is not a duplicate; the keys after it override what it merges
    assert parse_yaml("x: &x {a: 1, b: 2}\ny:\n  <<: *x\n  a: 3\n", "m") == {"x": {"a": 1, "b": 2},
                                                                            "y": {"a": 3, "b": 2}}
    refused("info", "--config", top, match=f"{top}: line 4: duplicate key 'data'")


def test_duplicate_keys_in_set_values_variant_and_checkpoint_config(tmp_path):
    with pytest.raises(ConfigError, match=r"--set: model\.decoder: line 1: duplicate key 'n_layers'"):
        apply_overrides(Config(), ["model.decoder={n_layers: 1, n_layers: 2}"])
    variant = tmp_path / "variant.yml"
    variant.write_text((RELEASE / "variant.yml").read_text() + "net_kwargs:\n  n_heads: 4\n")
    with pytest.raises(ConfigError, match=r"variant\.yml: line \d+: duplicate key 'net_kwargs'"):
        config_from_variant(variant)
    companion = tmp_path / "m.yaml"
    companion.write_text("seed: 0\nmodel: {n_heads: 2}\nmodel: {n_heads: 4}\n")
    (tmp_path / "m.ckpt").write_bytes(b"")
    refused("export", "--checkpoint", tmp_path / "m.ckpt", "--out", tmp_path / "m.mindir", "--size", "32x32",
            match=f"{companion}: line 3: duplicate key 'model'")


# --- 2. bounded YAML ---------------------------------------------------------------------------

def _alias_bomb() -> str:
    levels = ["&a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        levels.append(f"&{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "model:\n  image_size: [" + ", ".join(levels) + "]\n"


def test_a_yaml_alias_bomb_is_refused_before_it_is_built(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(_alias_bomb())  # 9**9 = 387 million values in under 400 bytes
    assert bomb.stat().st_size < 400
    code, err, peak = cli_peak(tmp_path, "info", "--config", bomb)
    assert code == 2 and err.startswith(f"error: {bomb}: line 2: expands to more than"), err
    assert len(err) < MESSAGE_LIMIT and peak < PEAK_LIMIT_KIB, (len(err), peak)
    # an alias inside its own anchor, nesting past the depth bound, a file past the size bound
    for text, what in (("model: &m {decoder: *m}\n", "refers to a node that contains it"),
                       ("model: " + "[" * 100 + "]" * 100 + "\n", "nested deeper than"),
                       ("seed: 0\n" + "#" * (2 << 20) + "\n", "larger than")):
        path = tmp_path / "x.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=what):
            load_config(path)
    # ordinary aliases still work (PyYAML's dump writes them for a value used twice)
    ok = tmp_path / "ok.yaml"
    ok.write_text("data: {ratio_range: &r [0.5, 2.0]}\nmodel: {mean: &m [1.0, 2.0, 3.0], std: *m}\n")
    assert load_config(ok).model.std == [1.0, 2.0, 3.0]


def test_long_values_are_cut_in_every_config_message(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_text("model:\n  image_size: [" + ", ".join(["[1, 2, 3, 4, 5, 6, 7, 8, 9, 10]"] * 5000) + "]\n"
                   + "data: {train_split: " + "x" * 100000 + "}\n")
    with pytest.raises(ConfigError) as err:
        load_config(big)
    assert "model.image_size[0]: expected an integer" in str(err.value) and len(str(err.value)) < MESSAGE_LIMIT
    with pytest.raises(ConfigError) as err:
        config_from_dict({"model": {"x" * 100000: 1}})
    assert "unknown key" in str(err.value) and len(str(err.value)) < MESSAGE_LIMIT
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_yaml("a: " + "9" * 5000, "big int")  # past Python's int-from-text digit limit
    with pytest.raises(ConfigError, match="unknown key 'model.1'"):
        config_from_dict({"model": {1: 2, "x": 3}})  # keys of mixed types


# --- 3. validation of the whole config at load ---------------------------------------------------

@pytest.mark.parametrize("override,key", [
    ("model.n_heads=0", "model.n_heads (0) must be >= 1"),
    ("model.n_heads=5", "model.d_model (192) must be divisible by model.n_heads (5)"),
    ("model.mlp_ratio=-1", "model.mlp_ratio (-1) must be >= 1"),
    ("model.dropout=-0.1", "model.dropout (-0.1) must be in [0, 1)"),
    ("model.decoder.drop_path_rate=1.5", "model.decoder.drop_path_rate (1.5) must be in [0, 1)"),
    ("model.patch_size=0", "model.patch_size (0) must be >= 1"),
    ("model.patch_size=1536", "model.image_size ([768, 768]) must be [H, W], multiples of model.patch_size"),
    ("model.n_layers=0", "model.n_layers (0) must be >= 1"),
    ("model.decoder.n_layers=-1", "model.decoder.n_layers (-1) must be >= 0"),
    ("model.d_model=0", "model.d_model (0) must be >= 1"),
    ("model.std=[1.0, -1.0, 1.0]", "model.std ([1.0, -1.0, 1.0]) must be positive"),
    ("seed=-1", "seed (-1) must be in 0..4294967295"),
    ("seed=4294967296", "seed (4294967296) must be in 0..4294967295"),
    ("seed=100000000000000000000", "seed: 100000000000000000000 is out of range"),
    ("data.train_split=../../tmp/x", "data.train_split ('../../tmp/x'): not a plain name"),
    ("data.val_split=v al", "data.val_split ('v al'): not a plain name"),  # the rule build-mindrecord applies
    ("eval.window_size=0", "eval.window_size (0) must be >= 1"),
    ("model.d_model=[", "--set: model.d_model: line 1: not valid YAML"),
])
def test_impossible_values_are_config_errors_naming_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        apply_overrides(Config(), [override])
    assert key in str(err.value)


def test_commands_that_never_build_a_model_validate_the_whole_config(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {n_heads: 0}\n")
    refused("info", "--config", bad, match=f"{bad}: model.n_heads (0) must be >= 1")
    refused("inspect-pipeline", "--config", bad, "--data", tmp_path, "--list-ids", match="model.n_heads (0)")
    good = tmp_path / "good.yaml"
    save_config(Config(), good)
    refused("inspect-pipeline", "--config", good, "--data", tmp_path, "--list-ids", "--set", "model.d_model=[",
            match="--set: model.d_model: line 1: not valid YAML")
    refused("train", "--config", good, "--data", tmp_path, "--out", tmp_path / "run", "--set", "seed=-3",
            match="seed (-3) must be in 0..4294967295")


@pytest.mark.parametrize("edit,match", [
    (lambda v: [v], "expected a mapping, got list"),
    (lambda v: {k: x for k, x in v.items() if k != "net_kwargs"}, "missing key 'net_kwargs.normalization'"),
    (lambda v: {**v, "net_kwargs": [1, 2]}, "net_kwargs: expected a mapping, got [1, 2]"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "n_heads": "three"}}, "net_kwargs.n_heads: expected an integer"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "n_heads": True}}, "net_kwargs.n_heads: expected an integer"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "decoder": "mask"}}, "net_kwargs.decoder: expected a mapping"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "image_size": "big"}}, "net_kwargs.image_size: expected"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "image_size": [32]}}, "net_kwargs.image_size: expected"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "dropout": "x"}}, "net_kwargs.dropout: expected a number"),
    (lambda v: {**v, "net_kwargs": {**v["net_kwargs"], "n_heads": 0}}, "model.n_heads (0) must be >= 1"),
    (lambda v: {**v, "inference_kwargs": [1]}, "inference_kwargs: expected a mapping"),
    (lambda v: {**v, "optimizer_kwargs": {"lr": "fast"}}, "optimizer_kwargs.lr: expected a number"),
    (lambda v: {**v, "algorithm_kwargs": {"num_epochs": "x"}}, "algorithm_kwargs.num_epochs: expected an integer"),
])
def test_a_variant_yml_of_the_wrong_shape_is_an_error_naming_the_key(tmp_path, edit, match):
    variant = yaml.safe_load((RELEASE / "variant.yml").read_text().replace("!!python/tuple", ""))
    path = tmp_path / "variant.yml"
    path.write_text(yaml.safe_dump(edit(variant)))
    with pytest.raises(ConfigError) as err:
        config_from_variant(path)
    assert str(err.value).startswith(f"{path}: ") and match in str(err.value), str(err.value)


def test_a_bad_variant_yml_through_convert_weights(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    (release / "variant.yml").write_text("- just\n- a list\n")
    refused("convert-weights", release, "--out", tmp_path / "o.ckpt", match="variant.yml: expected a mapping")
    assert not (tmp_path / "o.ckpt").exists()


# --- 4. finite weights -------------------------------------------------------------------------

def _nan_checkpoint(tmp_path: Path) -> Path:
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg(n_cls=19)  # predict writes Cityscapes trainIds
    net = build_segmenter(cfg.model)
    param = next(p for p in net.get_parameters() if p.name == "encoder.blocks.0.attn.qkv.weight")
    value = param.asnumpy()
    value[3, 5] = np.nan
    param.set_data(ms.Tensor(value))
    save_model(net, tmp_path / "nan.ckpt", cfg)
    return tmp_path / "nan.ckpt"


def test_weights_holding_nan_are_refused_at_load_naming_the_tensor(tmp_path):
    ckpt = _nan_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=r"nan\.ckpt: tensor encoder\.blocks\.0\.attn\.qkv\.weight holds NaN/inf"):
        load_model(ckpt, tiny_cfg(n_cls=19))
    out = tmp_path / "m.mindir"
    refused("export", "--checkpoint", ckpt, "--out", out, "--size", "32x32",
            match="tensor encoder.blocks.0.attn.qkv.weight holds NaN/inf")
    assert not out.exists()
    refused("predict", GOLDEN / "frankfurt_000000_000294_small.png", "--checkpoint", ckpt, "--out", tmp_path / "p",
            "--window", 32, "--stride", 32, "--infer-size", 0, match="holds NaN/inf")


def test_a_release_or_npz_holding_inf_is_refused(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    pth = release / "checkpoint.pth"
    with zipfile.ZipFile(RELEASE / "checkpoint.pth") as src, zipfile.ZipFile(pth, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename.endswith("/data/0"):
                data = struct.pack("<f", float("inf")) + data[4:]
            dst.writestr(info, data)
    refused("convert-weights", release, "--out", tmp_path / "r.ckpt", match="holds NaN/inf")
    weights = dict(np.load(GOLDEN / "vit_golden_augreg.npz"))
    weights["Transformer/encoderblock_1/MlpBlock_3/Dense_0/bias"][7] = np.nan
    np.savez(tmp_path / "nan.npz", **weights)
    cfg = tmp_path / "cfg.yaml"
    save_config(Config(model=ModelConfig(d_model=64, n_heads=2, n_layers=2, patch_size=8, image_size=[48, 48])), cfg)
    refused("convert-weights", tmp_path / "nan.npz", "--out", tmp_path / "n.ckpt", "--config", cfg,
            match="nan.npz: tensor encoder.blocks.1.mlp.fc1.bias holds NaN/inf")
    assert not (tmp_path / "r.ckpt").exists() and not (tmp_path / "n.ckpt").exists()


# --- 5. a checkpoint's config against its weights ------------------------------------------------

def test_a_companion_yaml_contradicting_the_checkpoint_is_refused(tmp_path):
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg()
    ckpt = tmp_path / "m.ckpt"
    save_model(build_segmenter(cfg.model), ckpt, cfg)
    edited = config_beside(ckpt)
    edited.write_text(edited.read_text().replace("n_heads: 2", "n_heads: 4"))  # same shapes, other model
    refused("export", "--checkpoint", ckpt, "--out", tmp_path / "m.mindir", "--size", "32x32",
            match="model.n_heads is 4 in the config, 2 in the checkpoint")
    other_stats = tiny_cfg(mean=[0.0, 0.0, 0.0])
    with pytest.raises(CheckpointError, match=r"model\.mean is \[0\.0, 0\.0, 0\.0\] in the config"):
        load_model(ckpt, other_stats)
    # dropout rates do not change what the weights compute: fine-tuning may change them
    assert load_model(ckpt, tiny_cfg(drop_path_rate=0.0)) is not None


def test_pixel_statistics_agree_within_rounding_and_starting_weights_may_change_them(tmp_path):
    from train.checkpoint import TrainError
    from train.initial_weights import initial_net

    setup_context("CPU", "pynative", 0)
    release = tiny_cfg(mean=[0.485 * 255, 0.456 * 255, 0.406 * 255], std=[0.229 * 255, 0.224 * 255, 0.225 * 255])
    ckpt = tmp_path / "m.ckpt"
    save_model(build_segmenter(release.model), ckpt, release)
    typed = tiny_cfg(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375])  # as a config spells them
    assert typed.model.std != release.model.std  # 0.224 * 255 == 57.120000000000005
    assert load_model(ckpt, typed) is not None
    with pytest.raises(CheckpointError, match=r"model\.std is \[58\.4, 57\.12, 57\.375\] in the config"):
        load_model(ckpt, tiny_cfg(mean=[123.675, 116.28, 103.53], std=[58.4, 57.12, 57.375]))
    # The starting weights of a run (model.pretrained): the run chooses its own pixel statistics;
    # the head count, which no shape shows, must still agree.
    assert initial_net(tiny_cfg(pretrained=str(ckpt)), lambda *_: None) is not None
    with pytest.raises(TrainError, match=r"model\.n_heads is 4 in the config, 2 in the checkpoint"):
        initial_net(tiny_cfg(n_heads=4, pretrained=str(ckpt)), lambda *_: None)


def test_an_older_checkpoint_is_checked_against_what_its_shapes_imply(tmp_path, monkeypatch):
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg()
    old = tmp_path / "old.ckpt"
    ms.save_checkpoint(build_segmenter(cfg.model), str(old))  # no config inside: written before this rule
    assert load_model(old, cfg) is not None

    def never(*_):
        raise AssertionError("the network was built before the config was checked")
    monkeypatch.setattr("weights.checkpoint.build_segmenter", never)
    huge = tiny_cfg(d_model=16384, n_heads=16, n_layers=48)
    with pytest.raises(CheckpointError) as err:
        load_model(old, huge)
    msg = str(err.value)
    assert "model.d_model is 16384 in the config, the weights imply 64 (encoder.cls_token (1, 1, 64))" in msg
    assert "model.n_layers is 48 in the config, the weights imply 2" in msg
    for model, what in (({"image_size": [64, 32]}, "positions) is 8 in the config, the weights imply 4"),
                        ({"n_cls": 7}, "model.n_cls is 7 in the config, the weights imply 5"),
                        ({"decoder": DecoderConfig(n_layers=2)}, "model.decoder.n_layers is 2"),
                        ({"decoder": DecoderConfig(name="linear", n_layers=0)}, "model.decoder.name is 'linear'"),
                        ({"mlp_ratio": 2}, "model.mlp_ratio is 2 in the config, the weights imply 4.0")):
        with pytest.raises(CheckpointError, match=r"does not match the model of the config") as err:
            load_model(old, tiny_cfg(**model))
        assert what in str(err.value), str(err.value)


# --- 6. bounded .pth containers ------------------------------------------------------------------

def _tuple_bomb(levels: int) -> bytes:
    """A tuple of two references to a tuple of two references ... `levels` deep: 2**levels leaves."""
    return b"K\x01\x85" + b"2\x86" * levels  # BININT1 1, TUPLE1, then (DUP, TUPLE2) per level


def _pth(path: Path, pkl: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + pkl + b".")
        z.writestr("archive/byteorder", "little")
    return path


def test_a_tuple_key_bomb_pth_is_refused_in_bounded_memory(tmp_path):
    release = tmp_path / "release"
    release.mkdir()
    shutil.copy(RELEASE / "variant.yml", release)
    # {'model': {<2**60 leaves>: 'v'}}: hashing or printing the key would never end
    _pth(release / "checkpoint.pth", b"}X\x05\x00\x00\x00model}" + _tuple_bomb(60) + b"X\x01\x00\x00\x00vss")
    assert (release / "checkpoint.pth").stat().st_size < 400
    code, err, peak = cli_peak(tmp_path, "convert-weights", release, "--out", tmp_path / "o.ckpt")
    assert code == 2 and "expands to more than" in err and len(err) < MESSAGE_LIMIT, err
    assert peak < PEAK_LIMIT_KIB, peak
    assert not (tmp_path / "o.ckpt").exists()


def test_pth_containers_are_bounded_and_never_refilled(tmp_path):
    # the same bomb as a tensor's size: refused while built, the message short
    with pytest.raises(TorchFileError, match="expands to more than") as err:
        load_torch_file(_pth(tmp_path / "size.pth", b"}X\x01\x00\x00\x00w" + _tuple_bomb(40) + b"s"))
    assert len(str(err.value)) < MESSAGE_LIMIT
    # a list put in a tuple and filled afterwards would make the tuple's count a lie
    refill = b"]q\x00h\x00h\x00\x86h\x00(K\x01K\x02e"  # L = [], memo; (L, L); L; MARK 1 2 APPENDS into L
    with pytest.raises(TorchFileError, match="already held by another container"):
        load_torch_file(_pth(tmp_path / "refill.pth", refill))
    with pytest.raises(TorchFileError, match="already held by another container"):
        load_torch_file(_pth(tmp_path / "self.pth", b"]q\x00h\x00a"))  # L.append(L)
    assert load_torch_file(RELEASE / "checkpoint.pth")["epoch"] == 215


# --- 7. convert-weights never replaces an input or a user's .yaml -----------------------------------

def _user_config(tmp_path: Path, name: str = "X.yaml") -> Path:
    (tmp_path / "recipe.yaml").write_text("seed: 3\n")
    path = tmp_path / name
    path.write_text("# my notes\nbase: recipe.yaml\ntrain: {epochs: 5}\n")
    return path


def test_convert_weights_never_replaces_its_config_or_a_users_yaml(tmp_path):
    config = _user_config(tmp_path)
    before = config.read_bytes()
    refused("convert-weights", RELEASE, "--config", config, "--out", tmp_path / "X.ckpt",
            match=f"{config}: is an input of this command")
    link = tmp_path / "link.yaml"
    link.symlink_to(config.name)
    refused("convert-weights", RELEASE, "--config", link, "--out", tmp_path / "X.ckpt",
            match=f"{config}: is an input")  # the same file under another name
    (tmp_path / "c.yaml").write_text("base: X.yaml\n")  # the --config's base file is an input too
    refused("convert-weights", RELEASE, "--config", tmp_path / "c.yaml", "--out", tmp_path / "X.ckpt",
            match="X.yaml: is an input")
    refused("convert-weights", RELEASE, "--out", tmp_path / "X.ckpt",
            match=f"{config}: exists and was not written by convert-weights")
    assert config.read_bytes() == before and not (tmp_path / "X.ckpt").exists()


def test_convert_weights_replaces_only_its_own_unchanged_yaml(tmp_path):
    out = tmp_path / "m.ckpt"
    assert run("convert-weights", RELEASE, "--out", out).exit_code == 0
    companion = config_beside(out)
    assert companion.read_text().startswith("# segmenter: ")
    assert run("convert-weights", RELEASE, "--out", out).exit_code == 0  # ours: a rerun replaces it
    companion.write_text(companion.read_text().replace("epochs: 216", "epochs: 100"))  # now the user's
    mtime = out.stat().st_mtime_ns
    refused("convert-weights", RELEASE, "--out", out, match="exists and was not written by convert-weights")
    assert "epochs: 100" in companion.read_text() and out.stat().st_mtime_ns == mtime


def test_convert_weights_never_replaces_its_source(tmp_path):
    release = tmp_path / "release"
    shutil.copytree(RELEASE, release)
    src = release / "weights.ckpt"
    (release / "checkpoint.pth").rename(src)
    before = src.read_bytes()
    refused("convert-weights", src, "--out", src, match=f"{src}: is an input")
    assert src.read_bytes() == before


def test_save_model_never_replaces_a_yaml_it_did_not_write_unless_the_folder_is_the_callers(tmp_path):
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg()
    net = build_segmenter(cfg.model)
    (tmp_path / "step_0000001.yaml").write_text("# a user's notes\n")
    with pytest.raises(FileExistsError, match="was not written by convert-weights or train"):
        save_model(net, tmp_path / "step_0000001.ckpt", cfg)
    assert (tmp_path / "step_0000001.yaml").read_text() == "# a user's notes\n"
    assert not (tmp_path / "step_0000001.ckpt").exists()
    save_model(net, tmp_path / "step_0000002.ckpt", cfg)
    save_model(net, tmp_path / "step_0000002.ckpt", cfg)  # its own .yaml is replaced
    assert load_config(tmp_path / "step_0000002.yaml") == cfg
    # train's own run folder (held under its lock): a .yaml from before the marker is replaced
    save_model(net, tmp_path / "step_0000001.ckpt", cfg, owned=True)
    assert load_config(tmp_path / "step_0000001.yaml") == cfg


# --- 8. no temporary file left by a failed save ---------------------------------------------------

def test_a_full_disk_leaves_no_temporary_file(tmp_path, small_disk):
    disk = small_disk(256)  # the release's checkpoint needs more than a megabyte
    out = disk / "X.ckpt"
    refused("convert-weights", RELEASE, "--out", out, match=f"{out}: No space left on device")
    assert os.listdir(disk) == []


def test_a_failed_save_removes_mindspores_own_temporary_files(tmp_path, monkeypatch):
    setup_context("CPU", "pynative", 0)
    cfg = tiny_cfg()
    net = build_segmenter(cfg.model)

    def half_written(net, name, **_):  # MindSpore writes `<name minus .ckpt>.tmp` beside the name it gets
        Path(name).with_suffix(".tmp").write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ms, "save_checkpoint", half_written)
    with pytest.raises(OSError, match="No space left") as err:
        save_model(net, tmp_path / "m.ckpt", cfg)
    assert err.value.filename == str(tmp_path / "m.ckpt")
    assert os.listdir(tmp_path) == []

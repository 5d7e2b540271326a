"""Weight import: official Segmenter releases (checkpoint.pth + variant.yml) and Google ViT .npz files.

Official state-dict names equal this project's parameter names (see model/layers.py), so a
release maps one to one; only the unused ImageNet head `encoder.head.*` is dropped. Google ViT
keys are converted to (out, in) layouts as timm's loader does (docs/model.md). The checkpoint
written carries the class table and eval protocol of its data set: the one a release's
variant.yml names (`dataset_kwargs.dataset`: ade20k, pascal_context, cityscapes), or the one
given for a .npz (`--dataset`).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import mindspore as ms

from base.class_table import check_classes
from base.messages import short_repr
from settings.datasets import DatasetSpec, builtin_names, load_dataset
from settings.files import StrictLoader, load_config_files, read_yaml
from settings.schema import Config, ConfigError, config_from_dict, config_to_dict
from weights.checkpoint import CheckpointError, assign_parameters, check_checkpoint_target, match_parameters, save_model
from base.resize import resize_bilinear
from weights.npz_reader import NpzError, read_npz
from model.segmenter import build_segmenter
from weights.torch_pickle import load_torch_file

# Official pixel statistics (segm/data/utils.py STATS) on the 0..1 scale.
NORMALIZATION = {
    "vit": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "deit": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
UNUSED_RELEASE_PREFIXES = ("encoder.head.",)  # the ViT's ImageNet classifier, never used by Segmenter
UNUSED_NPZ_PREFIXES = ("head/", "pre_logits/")


class _VariantLoader(StrictLoader):
    """The project's strict YAML loader plus the `!!python/tuple` tag official variant.yml files use
    (read as a list)."""


_VariantLoader.add_constructor("tag:yaml.org,2002:python/tuple",
                               lambda loader, node: loader.construct_sequence(node))

_REQUIRED = object()
_NUMBER = (int, float)
_KINDS = {str: "a string", int: "an integer", dict: "a mapping", bool: "true/false", list: "a list",
          _NUMBER: "a number", (int, list): "an integer or [H, W]"}


def _variant_value(variant: dict, path: str, source: Path, types, default=_REQUIRED):
    """variant[path] (dotted) if it is of `types`; `default` if it (or its section) is absent or null."""
    node, parts = variant, path.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[:depth])}: expected a mapping, got {short_repr(node)}")
        if node.get(part) is None:
            if default is _REQUIRED:
                raise ConfigError(f"{source}: missing key {path!r}")
            return default
        node = node[part]
    wanted = types if isinstance(types, tuple) else (types,)
    if not isinstance(node, wanted) or (isinstance(node, bool) and bool not in wanted):
        raise ConfigError(f"{source}: {path}: expected {_KINDS[types]}, got {short_repr(node)}")
    return node


def _variant_image_size(get, source: Path) -> list:
    size = get("net_kwargs.image_size", (int, list))
    size = [size, size] if isinstance(size, int) else size
    if len(size) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) for s in size):
        raise ConfigError(f"{source}: net_kwargs.image_size: expected an integer or [H, W], got {short_repr(size)}")
    return size


def _variant_dataset(get, source: Path) -> DatasetSpec:
    """The built-in data set a variant.yml was trained on (`dataset_kwargs.dataset`)."""
    name = get("dataset_kwargs.dataset", str)
    if name not in builtin_names():
        raise ConfigError(f"{source}: dataset_kwargs.dataset: {short_repr(name)} is not a data set this project "
                          f"knows ({', '.join(builtin_names())})")
    return load_dataset(name)


def _read_variant(source: Path):
    """`get(dotted key, types, default)` over an official variant.yml."""
    variant = read_yaml(source, _VariantLoader)
    if not isinstance(variant, dict):
        raise ConfigError(f"{source}: expected a mapping, got {type(variant).__name__}")
    return lambda path, types, default=_REQUIRED: _variant_value(variant, path, source, types, default)


def variant_dataset(variant_path) -> DatasetSpec:
    """The data set an official variant.yml names (`dataset_kwargs.dataset`)."""
    return _variant_dataset(_read_variant(Path(variant_path)), Path(variant_path))


def config_from_variant(variant_path, base: Config | None = None) -> Config:
    """A project config whose model (and eval/crop/optimizer settings) come from an official
    variant.yml; its classes are those of the data set it names (net_kwargs.n_cls, if given, must
    agree)."""
    source = Path(variant_path)
    get = _read_variant(source)
    dataset = _variant_dataset(get, source)
    n_cls = get("net_kwargs.n_cls", int, None)
    if n_cls is not None and n_cls != len(dataset.classes):
        raise ConfigError(f"{source}: net_kwargs.n_cls is {n_cls}, data set {dataset.name} "
                          f"(dataset_kwargs.dataset) has {len(dataset.classes)} classes")
    if get("net_kwargs.distilled", bool, False):
        raise ConfigError(f"{source}: distilled (DeiT) backbones are not supported")
    norm = get("net_kwargs.normalization", str)
    if norm not in NORMALIZATION:
        raise ConfigError(f"{source}: unknown normalization {short_repr(norm)} (known: {', '.join(NORMALIZATION)})")
    mean, std = NORMALIZATION[norm]
    image_size = _variant_image_size(get, source)
    dec_name = get("net_kwargs.decoder.name", str)
    dec_name = "linear" if "linear" in dec_name else dec_name
    data = config_to_dict(base or Config())
    decoder = config_to_dict(Config())["model"]["decoder"]
    decoder.update(name=dec_name,
                   n_layers=get("net_kwargs.decoder.n_layers", int, 0 if dec_name == "linear" else decoder["n_layers"]),
                   **{k: get(f"net_kwargs.decoder.{k}", _NUMBER, decoder[k]) for k in ("dropout", "drop_path_rate")})
    data["model"].update(
        **{k: get(f"net_kwargs.{k}", int) for k in ("patch_size", "d_model", "n_layers", "n_heads")},
        n_cls=len(dataset.classes),
        backbone=get("net_kwargs.backbone", str), image_size=image_size, mlp_ratio=4,
        dropout=get("net_kwargs.dropout", _NUMBER, 0.0), drop_path_rate=get("net_kwargs.drop_path_rate", _NUMBER, 0.0),
        mean=[m * 255 for m in mean], std=[s * 255 for s in std], decoder=decoder, pretrained=None)
    for key, name in (("window_size", "window_size"), ("window_stride", "window_stride"), ("im_size", "infer_size")):
        data["eval"][name] = get(f"inference_kwargs.{key}", int, data["eval"][name])
    protocol = dataset.eval
    if protocol.max_long_side and data["eval"]["infer_size"]:
        # The official resize keeps the data set's ratio of long side to short: (4 x 512, 512) on
        # ADE20K, so (4 x 640, 640) for a release evaluated at 640.
        data["eval"]["max_long_side"] = data["eval"]["infer_size"] * protocol.max_long_side // protocol.infer_size
    data["data"]["crop_size"] = image_size[0]
    for key, section, name in (("lr", "optimizer", "lr"), ("momentum", "optimizer", "momentum"),
                               ("weight_decay", "optimizer", "weight_decay"), ("min_lr", "schedule", "min_lr"),
                               ("poly_power", "schedule", "power")):
        data["train"][section][name] = get(f"optimizer_kwargs.{key}", _NUMBER, data["train"][section][name])
    data["train"]["epochs"] = get("algorithm_kwargs.num_epochs", int, 0) or data["train"]["epochs"]
    if data["model"]["dropout"] > 0:  # the per-block step's recomputed forward would draw other dropout masks
        data["train"]["step_graph"] = "whole"
    return config_from_dict(data, str(source))


def release_paths(src) -> tuple[Path, Path]:
    """(checkpoint.pth, variant.yml) of a release given its folder or its .pth."""
    src = Path(src)
    pth = src / "checkpoint.pth" if src.is_dir() else src
    if not pth.is_file():
        raise CheckpointError(f"{pth}: checkpoint not found")
    variant = pth.parent / "variant.yml"
    if not variant.is_file():
        raise CheckpointError(f"{pth}: no variant.yml beside it ({variant}); an official release folder holds both")
    return pth, variant


def load_release(src, base: Config | None = None):
    """Build the network of an official release and load its weights: (net, config)."""
    pth, variant = release_paths(src)
    cfg = config_from_variant(variant, base)
    obj = load_torch_file(pth)
    state = obj.get("model") if isinstance(obj, dict) else None
    if not isinstance(state, dict):
        raise CheckpointError(f"{pth}: no 'model' state dict in the checkpoint")
    bad = [k for k, v in state.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise CheckpointError(f"{pth}: entries that are not tensors: {', '.join(map(short_repr, bad[:5]))}")
    tensors = {k: v for k, v in state.items() if not k.startswith(UNUSED_RELEASE_PREFIXES)}
    net = build_segmenter(cfg.model)
    assign_parameters(net, match_parameters(net, tensors, str(pth)))
    net.set_train(False)
    return net, cfg


def _npz_expected(cfg: Config, grid_old: int | None) -> dict:
    m = cfg.model
    d, h, p = m.d_model, m.n_heads, m.patch_size
    shapes = {"embedding/kernel": (p, p, 3, d), "embedding/bias": (d,), "cls": (1, 1, d),
              "Transformer/encoder_norm/scale": (d,), "Transformer/encoder_norm/bias": (d,)}
    if grid_old is not None:
        shapes["Transformer/posembed_input/pos_embedding"] = (1, 1 + grid_old * grid_old, d)
    for i in range(m.n_layers):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        for ln in ("LayerNorm_0", "LayerNorm_2"):
            shapes[f"{b}{ln}/scale"] = shapes[f"{b}{ln}/bias"] = (d,)
        for n in ("query", "key", "value"):
            shapes[f"{a}{n}/kernel"] = (d, h, d // h)
            shapes[f"{a}{n}/bias"] = (h, d // h)
        shapes[f"{a}out/kernel"] = (h, d // h, d)
        shapes[f"{a}out/bias"] = (d,)
        shapes[f"{b}MlpBlock_3/Dense_0/kernel"] = (d, m.mlp_ratio * d)
        shapes[f"{b}MlpBlock_3/Dense_0/bias"] = (m.mlp_ratio * d,)
        shapes[f"{b}MlpBlock_3/Dense_1/kernel"] = (m.mlp_ratio * d, d)
        shapes[f"{b}MlpBlock_3/Dense_1/bias"] = (d,)
    return shapes


def encoder_from_npz(path, cfg: Config) -> dict:
    """Encoder parameters (project names) from a Google ViT .npz, position grid resized to model.image_size."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    try:
        w = read_npz(path)
    except NpzError as err:
        raise CheckpointError(str(err)) from None
    prefix = "opt/target/" if "opt/target/embedding/kernel" in w else ""
    w = {k[len(prefix):]: v for k, v in w.items() if k.startswith(prefix)}
    pos_key = "Transformer/posembed_input/pos_embedding"
    grid_old = None
    if pos_key in w and w[pos_key].ndim == 3:
        grid_old = int(round(np.sqrt(w[pos_key].shape[1] - 1)))
        if grid_old * grid_old + 1 != w[pos_key].shape[1]:
            raise CheckpointError(f"{path}: {pos_key} {w[pos_key].shape} is not a square grid plus a class token")
    expected = _npz_expected(cfg, grid_old)
    if pos_key not in expected:
        expected[pos_key] = ("(1, 1+g*g, d_model)",)
    missing = sorted(set(expected) - set(w))
    unexpected = sorted(k for k in set(w) - set(expected) if not k.startswith(UNUSED_NPZ_PREFIXES))
    shaped = sorted(f"{k} {w[k].shape} != {expected[k]}" for k in set(expected) & set(w)
                    if tuple(w[k].shape) != tuple(expected[k]))
    problems = [f"{label} {len(v)}: {', '.join(v[:8])}{' ...' if len(v) > 8 else ''}"
                for label, v in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shaped)) if v]
    if problems:
        raise CheckpointError(f"{path}: does not match model (d_model {cfg.model.d_model}, n_heads "
                              f"{cfg.model.n_heads}, n_layers {cfg.model.n_layers}, patch {cfg.model.patch_size}); "
                              + "; ".join(problems))
    d = cfg.model.d_model
    f32 = {k: np.asarray(v, np.float32) for k, v in w.items()}
    out = {"encoder.patch_embed.proj.weight": f32["embedding/kernel"].transpose(3, 2, 0, 1),
           "encoder.patch_embed.proj.bias": f32["embedding/bias"],
           "encoder.cls_token": f32["cls"],
           "encoder.norm.weight": f32["Transformer/encoder_norm/scale"],
           "encoder.norm.bias": f32["Transformer/encoder_norm/bias"]}
    pos = f32[pos_key]
    gh, gw = (s // cfg.model.patch_size for s in cfg.model.image_size)
    grid = pos[0, 1:].reshape(grid_old, grid_old, d).transpose(2, 0, 1)
    grid = resize_bilinear(grid, (gh, gw)).transpose(1, 2, 0).reshape(1, gh * gw, d)
    out["encoder.pos_embed"] = np.concatenate([pos[:, :1], grid], axis=1)
    for i in range(cfg.model.n_layers):
        b = f"Transformer/encoderblock_{i}/"
        a = b + "MultiHeadDotProductAttention_1/"
        t = f"encoder.blocks.{i}."
        out[t + "norm1.weight"] = f32[b + "LayerNorm_0/scale"]
        out[t + "norm1.bias"] = f32[b + "LayerNorm_0/bias"]
        out[t + "norm2.weight"] = f32[b + "LayerNorm_2/scale"]
        out[t + "norm2.bias"] = f32[b + "LayerNorm_2/bias"]
        out[t + "attn.qkv.weight"] = np.concatenate([f32[f"{a}{n}/kernel"].reshape(d, d).T
                                                     for n in ("query", "key", "value")])
        out[t + "attn.qkv.bias"] = np.concatenate([f32[f"{a}{n}/bias"].reshape(d) for n in ("query", "key", "value")])
        out[t + "attn.proj.weight"] = f32[a + "out/kernel"].reshape(d, d).T
        out[t + "attn.proj.bias"] = f32[a + "out/bias"]
        for r in range(2):
            out[t + f"mlp.fc{r + 1}.weight"] = f32[f"{b}MlpBlock_3/Dense_{r}/kernel"].T
            out[t + f"mlp.fc{r + 1}.bias"] = f32[f"{b}MlpBlock_3/Dense_{r}/bias"]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def init_from_npz(path, cfg: Config):
    """The network of `cfg` with its encoder from a Google ViT .npz; the decoder is seeded random init."""
    encoder = encoder_from_npz(path, cfg)
    ms.set_seed(cfg.seed)
    net = build_segmenter(cfg.model)
    tensors = {p.name: p.asnumpy() for p in net.get_parameters() if not p.name.startswith("encoder.")}
    tensors.update(encoder)
    assign_parameters(net, match_parameters(net, tensors, str(path)))
    return net


def _npz_config(src: Path, config: Config | None, config_path, dataset: DatasetSpec | None) -> Config:
    """The model a .npz initializes: --config's, its class count the data set's (a null
    model.n_cls takes it; any other count must equal it)."""
    if config is None:
        raise ConfigError(f"{src}: a .npz holds only encoder weights; pass --config for the model to build")
    cfg = copy.deepcopy(config)
    if dataset is not None:
        cfg.model.n_cls = check_classes(cfg.model.n_cls, dataset.class_table(), config_path,
                                        f"data set {dataset.name}")
    elif cfg.model.n_cls is None:
        raise ConfigError(f"{config_path}: model.n_cls is null (the data's): pass --dataset NAME|FILE, or set "
                          "model.n_cls, for the classes of the decoder")
    return cfg


def convert_weights(src, out, config_path=None, dataset_name=None) -> tuple[Config, str, DatasetSpec | None]:
    """Write CKPT (+ its .yaml) from a release or an .npz, `config_path` the model config (a .npz)
    or the base of the non-model settings (a release), `dataset_name` (a .npz only) the data set
    whose classes it will learn; returns (config, kind, data set or None). Nothing is written over
    an input or over a .yaml this project did not write (`check_checkpoint_target`)."""
    src = Path(src)
    config, inputs = None, [src]
    if config_path is not None:
        config, files = load_config_files(config_path)
        inputs += files
    if src.suffix == ".npz":
        dataset = load_dataset(dataset_name) if dataset_name is not None else None
        cfg = _npz_config(src, config, config_path, dataset)
        check_checkpoint_target(out, inputs)
        net = init_from_npz(src, cfg)
        cfg.model.pretrained = str(src)
        kind = "Google ViT .npz (encoder)"
    else:
        if dataset_name is not None:
            raise ConfigError(f"--dataset {dataset_name}: a release names its data set in its variant.yml "
                              "(dataset_kwargs.dataset); --dataset is for a .npz")
        inputs += release_paths(src)
        check_checkpoint_target(out, inputs)
        dataset = variant_dataset(inputs[-1])
        net, cfg = load_release(src, config)
        kind = "official Segmenter release"
    save_model(net, out, cfg, owned=True,  # checked above, before the weights were read
               dataset=None if dataset is None else (dataset.class_table(), dataset.eval))
    return cfg, kind, dataset

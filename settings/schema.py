"""The one config schema: typed sections, YAML load/save, strict validation.

Every command that reads a config goes through `load_config`; an unknown key or a
value of the wrong type is a `ConfigError` naming the dotted key and the file.
"""
from __future__ import annotations

import dataclasses
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional, Tuple

import yaml

from base.atomic import write_text_atomic


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key (and file)."""


@dataclass
class DecoderConfig:
    name: str = "mask_transformer"  # mask_transformer | linear
    n_layers: int = 2
    drop_path_rate: float = 0.0
    dropout: float = 0.1


@dataclass
class ModelConfig:
    backbone: str = "vit_tiny_patch16"
    patch_size: int = 16
    d_model: int = 192
    n_layers: int = 12
    n_heads: int = 3
    mlp_ratio: int = 4
    n_cls: int = 19
    # (H, W) the position-embedding grid is trained at (the crop); other sizes resize it bilinearly.
    image_size: List[int] = field(default_factory=lambda: [768, 768])
    drop_path_rate: float = 0.1
    dropout: float = 0.0
    # Pixel normalization applied to RGB uint8 input: (x - mean) / std.
    mean: List[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: List[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # A converted checkpoint (.ckpt) or a Google ViT .npz; None trains from scratch.
    pretrained: Optional[str] = None


@dataclass
class PhotometricConfig:
    enabled: bool = True
    prob: float = 0.5
    brightness_delta: int = 32
    contrast_range: List[float] = field(default_factory=lambda: [0.5, 1.5])
    saturation_range: List[float] = field(default_factory=lambda: [0.5, 1.5])
    hue_delta: int = 18


@dataclass
class DataConfig:
    crop_size: int = 768
    # (width, height) the random ratio multiplies, as in mmseg's img_scale.
    base_size: List[int] = field(default_factory=lambda: [2048, 1024])
    ratio_range: List[float] = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    cat_max_tries: int = 10
    flip_prob: float = 0.5
    photometric: PhotometricConfig = field(default_factory=PhotometricConfig)
    ignore_index: int = 255
    train_split: str = "train"
    val_split: str = "val"
    num_parallel_workers: int = 2
    shuffle_buffer: int = 64
    # Validate on at most this many val images during training (0 = all).
    val_max_images: int = 0


@dataclass
class OptimizerConfig:
    name: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class ScheduleConfig:
    name: str = "poly"  # poly | cosine | constant
    power: float = 0.9
    min_lr: float = 1e-5
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6  # lr at step 0 of warmup, as a fraction of the base lr


@dataclass
class LossScaleConfig:
    dynamic: bool = True
    init_scale: float = 65536.0
    factor: float = 2.0
    window: int = 1000


@dataclass
class TrainConfig:
    epochs: int = 216
    # If > 0, overrides epochs: the run lasts exactly this many iterations.
    iterations: int = 0
    batch_size: int = 1  # per device
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    clip_grad_norm: float = 5.0  # 0 disables clipping
    amp_level: str = "O0"  # O0 | O1 | O2
    # per_block: one compiled graph per block kind, blocks recomputed in backward (memory of one
    # block: 4.3 GiB for seg_tiny at 2x768x768 on CPU); whole: one forward+backward graph
    # (faster on small crops, memory grows with every block's attention maps).
    step_graph: str = "per_block"  # per_block | whole
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 4000  # 0 disables periodic validation
    log_every: int = 10
    # Stop after this many consecutive non-finite losses (each one halves the dynamic loss scale).
    nonfinite_patience: int = 5


@dataclass
class EvalConfig:
    window_size: int = 768
    window_stride: int = 512
    # Images are resized so that their short side equals infer_size (0 = keep size).
    infer_size: int = 1024
    batch_windows: int = 4
    flip: bool = False
    scales: List[float] = field(default_factory=lambda: [1.0])


@dataclass
class Config:
    seed: int = 0
    device_target: str = "CPU"  # CPU | GPU | Ascend
    mode: str = "graph"  # graph | pynative
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_CHOICES = {
    "device_target": ("CPU", "GPU", "Ascend"),
    "mode": ("graph", "pynative"),
    "model.decoder.name": ("mask_transformer", "linear"),
    "train.optimizer.name": ("sgd", "adamw"),
    "train.schedule.name": ("poly", "cosine", "constant"),
    "train.amp_level": ("O0", "O1", "O2"),
    "train.step_graph": ("per_block", "whole"),
}


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown key {prefix + unknown[0]!r} (allowed here: {', '.join(sorted(names))})")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, prefix + name)
    return cls(**kwargs)


def _convert(tp, value: Any, key: str):
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    if origin is typing.Union:  # Optional[X]
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if value is None else _convert(args[0], value, key)
    if origin in (list, List, tuple, Tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp)[:1]
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        choices = _CHOICES.get(key)
        if choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _check(cfg: Config) -> None:
    """Cross-field rules a type alone cannot express."""
    m = cfg.model
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if m.patch_size <= 0 or m.n_cls <= 0:
        raise ConfigError("model.patch_size and model.n_cls must be positive")
    if len(m.image_size) != 2 or min(m.image_size) <= 0 or any(s % max(m.patch_size, 1) for s in m.image_size):
        raise ConfigError(f"model.image_size ({m.image_size}) must be [H, W], multiples of model.patch_size "
                          f"({m.patch_size})")
    dec_heads = max(m.d_model // 64, 1)  # the official mask decoder's head count
    if m.decoder.name == "mask_transformer" and m.d_model % dec_heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by the mask decoder's heads "
                          f"(d_model // 64 = {dec_heads})")
    if m.decoder.n_layers < 0 or m.n_layers <= 0:
        raise ConfigError("model.n_layers must be positive and model.decoder.n_layers >= 0")
    if not (0 <= m.dropout < 1 and 0 <= m.drop_path_rate < 1 and 0 <= m.decoder.dropout < 1
            and 0 <= m.decoder.drop_path_rate < 1):
        raise ConfigError("model dropout / drop_path_rate values must be in [0, 1)")
    if len(m.mean) != 3 or len(m.std) != 3:
        raise ConfigError("model.mean and model.std must have 3 values (RGB)")
    if min(m.std) == 0:
        raise ConfigError("model.std must not contain 0")
    e = cfg.eval
    if e.window_stride <= 0 or e.window_stride > e.window_size:
        raise ConfigError(f"eval.window_stride ({e.window_stride}) must be in 1..eval.window_size ({e.window_size})")
    if e.infer_size < 0 or e.batch_windows <= 0:
        raise ConfigError("eval.infer_size must be >= 0 (0 = keep size) and eval.batch_windows positive")
    if not e.scales or min(e.scales) <= 0:
        raise ConfigError(f"eval.scales ({e.scales}) must be a non-empty list of positive factors")
    if cfg.train.batch_size <= 0:
        raise ConfigError("train.batch_size must be positive")
    t = cfg.train
    if t.step_graph == "per_block" and m.dropout > 0:
        # The recomputed forward pass would draw different dropout masks than the first one.
        raise ConfigError(f"train.step_graph=per_block needs model.dropout=0 (got {m.dropout}); "
                          "set train.step_graph=whole to train with encoder dropout")
    for key in ("checkpoint_every", "log_every", "nonfinite_patience"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive")
    if t.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints must be at least 1 (--resume needs the last checkpoint)")
    if t.loss_scale.init_scale < 1 or t.loss_scale.window < 1 or t.loss_scale.factor < 1:
        raise ConfigError("train.loss_scale: init_scale, factor and window must be >= 1")


def config_from_dict(data: dict, source: str = "config") -> Config:
    try:
        cfg = _build(Config, data or {}, "")
        _check(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: Config, overrides: List[str], source: str = "--set") -> Config:
    """Apply `key=value` strings (value parsed as YAML) and re-validate."""
    data = config_to_dict(cfg)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"{source}: {item!r} is not key=value")
        key, raw = item.split("=", 1)
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{source}: unknown key {key!r}")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{source}: unknown key {key!r}")
        node[parts[-1]] = yaml.safe_load(raw)
    return config_from_dict(data, source)


def load_config(path: str | os.PathLike) -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    return config_from_dict(data, str(path))


def save_config(cfg: Config, path: str | os.PathLike) -> None:
    """Write atomically (temp file + rename) so a reader never sees half a config."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def config_beside(checkpoint: str | os.PathLike) -> Path:
    """A checkpoint's config travels with it: CKPT with suffix .yaml."""
    return Path(checkpoint).with_suffix(".yaml")


def resolve_config(checkpoint: str | os.PathLike | None, config: str | os.PathLike | None) -> Config:
    """`--config` wins; otherwise the config beside `--checkpoint`."""
    if config is not None:
        return load_config(config)
    if checkpoint is None:
        raise ConfigError("give --config or a --checkpoint with its .yaml beside it")
    beside = config_beside(checkpoint)
    if not beside.is_file():
        raise ConfigError(f"{checkpoint}: no config beside the checkpoint ({beside}); pass --config")
    return load_config(beside)

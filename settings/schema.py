"""The one config schema: typed sections and strict validation (files: `settings.files`).

An unknown key or a value of the wrong type is a `ConfigError` naming the dotted key; rules
across fields (model shape, data augmentation, evaluation, training) are checked after.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

from base.messages import short_repr
from base.names import split_name_problem
from base.errors import UserError


class ConfigError(UserError, ValueError):
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
    # None (null): the classes of the data the run trains or evaluates on (docs/datasets.md).
    n_cls: Optional[int] = 19
    # (H, W) the position-embedding grid is trained at (the crop); other sizes resize it bilinearly.
    image_size: List[int] = field(default_factory=lambda: [768, 768])
    drop_path_rate: float = 0.1
    dropout: float = 0.0
    # Pixel normalization applied to RGB uint8 input: (x - mean) / std.
    mean: List[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: List[float] = field(default_factory=lambda: [127.5, 127.5, 127.5])
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    # The weights a new run starts from: a Google ViT .npz (each recipe names the ImageNet checkpoint
    # its backbone expects, docs/weights.md#pretrained-weights), a converted .ckpt, or `none`
    # (FROM_SCRATCH). Left null, training refuses to start: a run never starts from random weights
    # by omission.
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
    # per_block: one compiled graph per block kind, blocks recomputed in backward (the memory of
    # one block; figures in docs/training.md); whole: one forward+backward graph
    # (faster on small crops, memory grows with every block's attention maps); auto: per_block on
    # CPU (proven there), whole on GPU and Ascend.
    step_graph: str = "auto"  # auto | per_block | whole
    # whole only: MindSpore recomputes each encoder block in the backward pass (less memory).
    recompute: bool = False
    # Micro-batches per optimizer update: global batch = batch_size x ranks x accumulate.
    accumulate: int = 1
    # The recipe's global batch (null: none stated); a run at another one says so when it starts.
    global_batch: Optional[int] = None
    loss_scale: LossScaleConfig = field(default_factory=LossScaleConfig)
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 4000  # 0 disables periodic validation
    log_every: int = 10
    # TensorBoard event files in RUN/tensorboard/ (train/events.py); metrics.jsonl is written either way.
    tensorboard: bool = True
    # Stop after this many consecutive non-finite losses (each one halves the dynamic loss scale).
    nonfinite_patience: int = 5


@dataclass
class EvalConfig:
    # None (the default): the data set's protocol (`with_eval_protocol`), recorded in the build's
    # manifest and in checkpoints; a value here overrides it, a CLI option overrides both.
    window_size: Optional[int] = None
    window_stride: Optional[int] = None
    # Images are resized so that their short side equals infer_size (0 = keep size) ...
    infer_size: Optional[int] = None
    # ... and, if > 0, their long side is at most max_long_side: mmseg's keep-ratio Resize (mmcv
    # imrescale on the uint8 image, as the official ADE20K and Pascal Context evaluation);
    # 0 resizes the normalized image to the short side (the official Cityscapes evaluation).
    max_long_side: Optional[int] = None
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


# `model.pretrained: none`: the run starts from random weights, said explicitly.
FROM_SCRATCH = "none"

# Keys that no longer mean anything: old configs (and runs' config.yaml) holding them still load,
# the value is ignored.
RETIRED = {"data.shuffle_buffer"}

INT_LIMIT = 2 ** 63  # every integer must fit the int64 a checkpoint stores it as
SEED_LIMIT = 2 ** 32  # MindSpore's and its data pipeline's seeds are uint32

_CHOICES = {
    "device_target": ("CPU", "GPU", "Ascend"),
    "mode": ("graph", "pynative"),
    "model.decoder.name": ("mask_transformer", "linear"),
    "train.optimizer.name": ("sgd", "adamw"),
    "train.schedule.name": ("poly", "cosine", "constant"),
    "train.amp_level": ("O0", "O1", "O2"),
    "train.step_graph": ("auto", "per_block", "whole"),
}


def _build(cls, data: Any, prefix: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    data = {k: v for k, v in data.items() if prefix + str(k) not in RETIRED}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise ConfigError(f"unknown key {short_repr(prefix + str(unknown[0]))} (allowed here: "
                          f"{', '.join(sorted(names))})")
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
            raise ConfigError(f"{key}: expected a list, got {short_repr(value)}")
        (item,) = typing.get_args(tp)[:1]
        return [_convert(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {short_repr(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {short_repr(value)}")
        if not -INT_LIMIT <= value < INT_LIMIT:
            raise ConfigError(f"{key}: {short_repr(value)} is out of range (a 64-bit integer)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {short_repr(value)}")
        if not math.isfinite(value):
            raise ConfigError(f"{key}: expected a finite number, got {short_repr(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {short_repr(value)}")
        choices = _CHOICES.get(key)
        if choices and value not in choices:
            raise ConfigError(f"{key}: {short_repr(value)} is not one of {', '.join(choices)}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _check_model(cfg: Config) -> None:
    m = cfg.model
    for key in ("patch_size", "d_model", "n_layers", "n_heads", "mlp_ratio", "n_cls"):
        if getattr(m, key) is not None:
            _at_least(f"model.{key}", getattr(m, key), 1)
    _at_least("model.decoder.n_layers", m.decoder.n_layers, 0)
    if m.d_model % m.n_heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by model.n_heads ({m.n_heads})")
    if len(m.image_size) != 2 or min(m.image_size) <= 0 or any(s % m.patch_size for s in m.image_size):
        raise ConfigError(f"model.image_size ({short_repr(m.image_size)}) must be [H, W], multiples of "
                          f"model.patch_size ({m.patch_size})")
    dec_heads = max(m.d_model // 64, 1)  # the official mask decoder's head count
    if m.decoder.name == "mask_transformer" and m.d_model % dec_heads:
        raise ConfigError(f"model.d_model ({m.d_model}) must be divisible by the mask decoder's heads "
                          f"(d_model // 64 = {dec_heads})")
    for key, value in (("model.dropout", m.dropout), ("model.drop_path_rate", m.drop_path_rate),
                       ("model.decoder.dropout", m.decoder.dropout),
                       ("model.decoder.drop_path_rate", m.decoder.drop_path_rate)):
        if not 0 <= value < 1:
            raise ConfigError(f"{key} ({value}) must be in [0, 1)")
    if len(m.mean) != 3 or len(m.std) != 3:
        raise ConfigError("model.mean and model.std must have 3 values (RGB)")
    if min(m.std) <= 0:
        raise ConfigError(f"model.std ({m.std}) must be positive")
    if m.pretrained is not None and not m.pretrained.strip():
        raise ConfigError(f"model.pretrained is empty: name the weights file, or {FROM_SCRATCH} to train from scratch")


def _positive_range(key: str, values) -> None:
    if len(values) != 2 or not 0 < values[0] <= values[1]:
        raise ConfigError(f"{key} ({short_repr(values)}) must be [low, high] with 0 < low <= high")


def _check_data(cfg: Config) -> None:
    """Data settings the training augmentation cannot work with."""
    d, p = cfg.data, cfg.data.photometric
    if d.crop_size <= 0 or len(d.base_size) != 2 or min(d.base_size) <= 0:
        raise ConfigError(f"data.crop_size ({d.crop_size}) and data.base_size ({short_repr(d.base_size)}, "
                          "[width, height]) must be positive")
    for key in ("train_split", "val_split"):
        _split_name(f"data.{key}", getattr(d, key))
    _positive_range("data.ratio_range", d.ratio_range)
    if not 0 < d.cat_max_ratio <= 1 or d.cat_max_tries < 0:
        raise ConfigError(f"data.cat_max_ratio ({d.cat_max_ratio}) must be in (0, 1] (1 disables it) and "
                          f"data.cat_max_tries ({d.cat_max_tries}) >= 0")
    if not 0 <= d.flip_prob <= 1 or not 0 <= p.prob <= 1:
        raise ConfigError(f"data.flip_prob ({d.flip_prob}) and data.photometric.prob ({p.prob}) must be in [0, 1]")
    _positive_range("data.photometric.contrast_range", p.contrast_range)
    _positive_range("data.photometric.saturation_range", p.saturation_range)
    if not 0 <= p.brightness_delta <= 255 or not 0 <= p.hue_delta <= 180:
        raise ConfigError(f"data.photometric.brightness_delta ({p.brightness_delta}) must be in 0..255 and "
                          f"data.photometric.hue_delta ({p.hue_delta}) in 0..180 (OpenCV's 8-bit hue range)")
    if d.num_parallel_workers < 1:
        raise ConfigError(f"data.num_parallel_workers ({d.num_parallel_workers}) must be >= 1")
    if not (cfg.model.n_cls or 1) <= d.ignore_index <= 255:
        raise ConfigError(f"data.ignore_index ({d.ignore_index}) must be in {cfg.model.n_cls}..255: "
                          f"padding and void pixels must never look like a class")
    short_max = int(min(d.base_size) * max(d.ratio_range))
    if d.crop_size > short_max:
        raise ConfigError(
            f"data.crop_size ({d.crop_size}) is larger than the scaled images allow: the short side is at most "
            f"{short_max} (min(data.base_size) x max(data.ratio_range)); every crop would be mostly padding")


def _split_name(key: str, value: str) -> None:
    """A split's name (OUT/{split}/): the one rule of `base.names`, never a path that could lead elsewhere."""
    problem = split_name_problem(value)
    if problem:
        raise ConfigError(f"{key} ({short_repr(value)}): {problem}")


def _check_eval(cfg: Config) -> None:
    """The eval keys a config sets (None leaves one to the data set, checked when it is resolved)."""
    e = cfg.eval
    if e.window_size is not None:
        _at_least("eval.window_size", e.window_size, 1)
    if e.window_stride is not None and (e.window_stride <= 0 or e.window_stride > (e.window_size or e.window_stride)):
        raise ConfigError(f"eval.window_stride ({e.window_stride}) must be in 1..eval.window_size ({e.window_size})")
    for key in ("infer_size", "max_long_side"):
        if (getattr(e, key) or 0) < 0:
            raise ConfigError(f"eval.{key} ({getattr(e, key)}) must be >= 0 (0 = no resize, no limit)")
    if e.batch_windows <= 0:
        raise ConfigError("eval.batch_windows must be positive")
    if not e.scales or min(e.scales) <= 0:
        raise ConfigError(f"eval.scales ({short_repr(e.scales)}) must be a non-empty list of positive factors")


# EvalConfig key -> the data set's protocol field (settings.datasets.DatasetEval).
PROTOCOL_KEYS = {"window_size": "window", "window_stride": "stride", "infer_size": "infer_size",
                 "max_long_side": "max_long_side"}


def with_eval_protocol(cfg: Config, protocol, source: str) -> Config:
    """`cfg` with each eval key it leaves None taken from `protocol` (a DatasetEval: the data
    set's evaluation protocol, from `source`); ConfigError if the mix has a stride above the window."""
    e = cfg.eval
    filled = {key: getattr(protocol, field) for key, field in PROTOCOL_KEYS.items() if getattr(e, key) is None}
    resolved = dataclasses.replace(cfg, eval=dataclasses.replace(e, **filled))
    try:
        _check_eval(resolved)
    except ConfigError as err:
        taken = ", ".join(f"{k} {v}" for k, v in filled.items())
        raise ConfigError(f"{err} ({taken} from the data set's protocol, {source})" if taken else str(err)) from None
    return resolved


def _at_least(key: str, value, low, strict: bool = False) -> None:
    if value < low or (strict and value == low):
        raise ConfigError(f"{key} ({value}) must be {'>' if strict else '>='} {low}")


def _check_optimization(cfg: Config) -> None:
    t, o, sch = cfg.train, cfg.train.optimizer, cfg.train.schedule
    _at_least("train.optimizer.lr", o.lr, 0, strict=True)
    _at_least("train.optimizer.weight_decay", o.weight_decay, 0)
    _at_least("train.optimizer.eps", o.eps, 0, strict=True)
    if not 0 <= o.momentum < 1 or len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas):
        raise ConfigError(f"train.optimizer.momentum ({o.momentum}) and each of train.optimizer.betas "
                          f"({short_repr(o.betas)}) "
                          "must be in [0, 1)")
    _at_least("train.schedule.power", sch.power, 0, strict=True)
    if not 0 <= sch.min_lr <= o.lr:
        raise ConfigError(f"train.schedule.min_lr ({sch.min_lr}) must be in 0..train.optimizer.lr ({o.lr})")
    _at_least("train.schedule.warmup_iters", sch.warmup_iters, 0)
    if not 0 < sch.warmup_ratio <= 1:
        raise ConfigError(f"train.schedule.warmup_ratio ({sch.warmup_ratio}) must be in (0, 1]")
    for key in ("epochs", "iterations", "eval_every"):
        _at_least(f"train.{key}", getattr(t, key), 0)
    if t.epochs == 0 and t.iterations == 0:
        raise ConfigError("train.epochs and train.iterations are both 0: the run would have no steps")
    _at_least("train.clip_grad_norm", t.clip_grad_norm, 0)


def _check_train(cfg: Config) -> None:
    t = cfg.train
    if t.batch_size <= 0:
        raise ConfigError("train.batch_size must be positive")
    graph = resolved_step_graph(cfg)
    if graph == "per_block" and cfg.model.dropout > 0:
        # The recomputed forward pass would draw different dropout masks than the first one.
        raise ConfigError(f"train.step_graph=per_block needs model.dropout=0 (got {cfg.model.dropout}); "
                          "set train.step_graph=whole to train with encoder dropout")
    if t.recompute and (graph != "whole" or cfg.model.dropout > 0):
        raise ConfigError(f"train.recompute recomputes the blocks of the whole step graph without encoder dropout "
                          f"(train.step_graph resolves to {graph}, model.dropout={cfg.model.dropout}); the per-block "
                          "step recomputes its blocks already")
    _at_least("train.accumulate", t.accumulate, 1)
    if t.global_batch is not None:
        _at_least("train.global_batch", t.global_batch, 1)
    for key in ("checkpoint_every", "log_every", "nonfinite_patience"):
        if getattr(t, key) <= 0:
            raise ConfigError(f"train.{key} must be positive")
    if t.keep_checkpoints < 1:
        raise ConfigError("train.keep_checkpoints must be at least 1 (--resume needs the last checkpoint)")
    if t.loss_scale.init_scale < 1 or t.loss_scale.window < 1 or t.loss_scale.factor < 1:
        raise ConfigError("train.loss_scale: init_scale, factor and window must be >= 1")


def resolved_step_graph(cfg: Config) -> str:
    """`train.step_graph` with `auto` resolved for `device_target`: the per-block step re-points one
    template block's weights, proven on CPU only; GPU and Ascend get the whole graph."""
    if cfg.train.step_graph != "auto":
        return cfg.train.step_graph
    return "per_block" if cfg.device_target == "CPU" else "whole"


def _check_seed(cfg: Config) -> None:
    if not 0 <= cfg.seed < SEED_LIMIT:
        raise ConfigError(f"seed ({cfg.seed}) must be in 0..{SEED_LIMIT - 1}")


def _check(cfg: Config) -> None:
    """Cross-field rules a type alone cannot express."""
    for check in (_check_seed, _check_model, _check_data, _check_eval, _check_train, _check_optimization):
        check(cfg)


def check_keys(data: Any, source: str) -> None:
    """Every key and value type of a (partial) config dict, as in a file that overrides defaults."""
    try:
        _build(Config, data if data is not None else {}, "")
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None


def config_from_dict(data: dict, source: str = "config") -> Config:
    try:
        cfg = _build(Config, data or {}, "")
        _check(cfg)
    except ConfigError as err:
        raise ConfigError(f"{source}: {err}") from None
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def build_section(cls, data: Any, prefix: str = ""):
    """A schema dataclass built from a mapping and checked key by key, as configs are (the dataset
    files of settings/datasets.py use it)."""
    return _build(cls, data, prefix)

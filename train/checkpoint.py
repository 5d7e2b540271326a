"""Training checkpoints: model weights + optimizer/loss-scale/RNG/step state, atomically written.

A training checkpoint is a model checkpoint (written by `weights.checkpoint.save_model`, so
`load_model` reads it and its config travels inside and beside it; a resume checks RUN/config.yaml
against the one inside) with extra entries whose keys start with `optimizer.` (every optimizer
Parameter that is not a model weight: moments, step, lr) or `state.` (step, loss scale, RNG
state, best score). Layout under RUN/checkpoints/: `step_NNNNNNN.ckpt` (+ `.yaml`), the last
`train.keep_checkpoints` kept, and `best.ckpt` (+ `.yaml`), the checkpoint with the best
validation mIoU so far. A checkpoint read back to resume is checked entry by entry (type, shape,
range, finiteness) before anything of it is used.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import mindspore as ms
import numpy as np

from settings.files import config_beside

from base.errors import UserError
from settings.schema import Config
from weights.checkpoint import check_finite, save_model, stored_config

STEP_RE = re.compile(r"^step_(\d{7,})\.ckpt$")
BEST = "best.ckpt"
# The `state.` numbers every training checkpoint has (`--resume` refuses a file without them):
# name -> (an integer?, the values allowed, said in words).
STATE_NUMBERS = {
    "step": (True, lambda v: v >= 0, ">= 0"), "epoch": (True, lambda v: v >= 0, ">= 0"),
    "steps_per_epoch": (True, lambda v: v >= 1, ">= 1"), "group_size": (True, lambda v: v >= 1, ">= 1"),
    "loss_scale": (False, lambda v: v > 0, "> 0"), "loss_scale_counter": (True, lambda v: v >= 0, ">= 0"),
    "best_miou": (False, lambda v: -1 <= v <= 1, "in -1..1 (-1: none yet)"),
    "best_step": (True, lambda v: v >= -1, ">= -1 (-1: none yet)")}
RNG = "state.rng"


class TrainError(UserError, ValueError):
    """Training cannot start or continue; the message names the file or key at fault."""


@dataclass
class TrainingCheckpoint:
    """A training checkpoint read back and checked: every entry, its `state.` numbers (without
    the prefix) and the config it was saved with (None in checkpoints from before they held it)."""
    path: Path
    entries: dict
    state: dict
    config: Config | None


def step_checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.ckpt"


def list_step_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name))]
    return sorted(found)


def _scalar(value) -> ms.Tensor:
    return ms.Tensor(np.asarray(value))


def save_training_checkpoint(path: Path, net, cfg: Config, optimizer_params: dict, scaler, state: dict,
                             dataset: tuple | None = None) -> None:
    """Write `path` and its config atomically into the run's folder (held under the run's lock:
    its files are train's own); `state` maps names (without `state.`) to numbers, `dataset` the
    data's (ClassTable, DatasetEval) the checkpoint carries."""
    extra = {f"optimizer.{name}": param for name, param in optimizer_params.items()}
    extra["state.loss_scale"] = _scalar(np.float32(scaler.scale_value.asnumpy()))
    counter = getattr(scaler, "counter", None)
    extra["state.loss_scale_counter"] = _scalar(np.int32(counter.asnumpy() if counter is not None else 0))
    extra[RNG] = ms.get_rng_state()
    for key, value in state.items():
        extra[f"state.{key}"] = _scalar(np.float64(value) if isinstance(value, float) else np.int64(value))
    save_model(net, str(path), cfg, extra=extra, owned=True, dataset=dataset)


def read_checkpoint(path: Path) -> TrainingCheckpoint:
    """A training checkpoint, checked; a clear TrainError if it is missing, truncated, not a
    training one, or holds a `state.` entry of the wrong type or out of range."""
    if not path.is_file():
        raise TrainError(f"{path}: {'not a file' if path.exists() else 'checkpoint not found'}")
    try:
        entries = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as err:
        raise TrainError(f"{path}: cannot be read (truncated or damaged?): {err}") from None
    missing = [f"state.{name}" for name in STATE_NUMBERS if f"state.{name}" not in entries]
    if missing:
        raise TrainError(f"{path}: not a training checkpoint (no {', '.join(missing)}); "
                         "it can initialize a model (model.pretrained) but not resume a run")
    state = {name: _state_number(entries[f"state.{name}"], name, path) for name in STATE_NUMBERS}
    named = STEP_RE.match(path.name)
    if named and int(named.group(1)) != state["step"]:
        raise TrainError(f"{path}: state.step is {state['step']}, the file name says step {int(named.group(1))}")
    if RNG in entries:
        want = ms.get_rng_state()
        got = entries[RNG]
        if not isinstance(got, ms.Tensor) or got.dtype != want.dtype or tuple(got.shape) != tuple(want.shape):
            raise TrainError(f"{path}: {RNG}: expected {want.dtype} of shape {tuple(want.shape)}, got {_kind(got)}")
    return TrainingCheckpoint(path, entries, state, stored_config(entries, path))


def _kind(value) -> str:
    if isinstance(value, ms.Tensor):
        return f"{value.dtype} of shape {tuple(value.shape)}"
    return f"a {type(value).__name__}"


def _state_number(value, name: str, path: Path):
    integer, allowed, rule = STATE_NUMBERS[name]
    array = value.asnumpy() if isinstance(value, ms.Tensor) else None
    if array is None or array.size != 1 or not np.issubdtype(array.dtype, np.integer if integer else np.number):
        raise TrainError(f"{path}: state.{name}: expected {'an integer' if integer else 'a number'}, "
                         f"got {_kind(value)}")
    number = array.item()
    if not (np.isfinite(number) and allowed(number)):
        raise TrainError(f"{path}: state.{name} is {number}; expected a finite number {rule}")
    return int(number) if integer else float(number)


def restore(checkpoint: TrainingCheckpoint, net, optimizer_params: dict, scaler) -> dict:
    """Load weights, optimizer state, loss scale and RNG state; return the `state.` numbers.
    Each entry is checked (present, a tensor of the run's shape, finite) before it is loaded."""
    path, entries = checkpoint.path, checkpoint.entries
    model_params = {p.name: p for p in net.get_parameters()}
    for name, target in list(model_params.items()) + [(f"optimizer.{n}", p) for n, p in optimizer_params.items()]:
        if name not in entries:
            raise TrainError(f"{path}: has no entry {name!r} (was it written by a different model or optimizer?)")
        value = entries[name]
        if not isinstance(value, ms.Tensor):
            raise TrainError(f"{path}: {name!r} is {_kind(value)}, not a tensor")
        if tuple(value.shape) != tuple(target.shape):
            raise TrainError(f"{path}: {name!r} has shape {tuple(value.shape)}, the run expects {tuple(target.shape)}")
        array = value.asnumpy()
        check_finite({name: array}, str(path))  # one tensor at a time: no second copy of the run's state
        target.set_data(ms.Tensor(array, target.dtype))
    state = checkpoint.state
    scaler.scale_value.set_data(ms.Tensor(np.full(scaler.scale_value.shape, state["loss_scale"], np.float32)))
    if getattr(scaler, "counter", None) is not None:
        scaler.counter.set_data(ms.Tensor(np.full(scaler.counter.shape, state["loss_scale_counter"], np.int32)))
    if RNG in entries:
        ms.set_rng_state(ms.Tensor(entries[RNG].asnumpy()))
    return dict(state)


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    config_beside(path).unlink(missing_ok=True)


def rotate(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (best.ckpt is separate and stays)."""
    for _, path in list_step_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        remove_checkpoint(path)

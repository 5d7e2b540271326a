"""Training checkpoints: model weights + optimizer/loss-scale/RNG/step state, atomically written.

A training checkpoint is a model checkpoint (written by `model.checkpoint.save_model`, so
`load_model` reads it and the config travels beside it) with extra entries whose keys start
with `optimizer.` (every optimizer Parameter that is not a model weight: moments, step, lr)
or `state.` (step, loss scale, RNG state, best score). Layout under RUN/checkpoints/:
`step_NNNNNNN.ckpt` (+ `.yaml`), the last `train.keep_checkpoints` kept, and `best.ckpt`
(+ `.yaml`), the checkpoint with the best validation mIoU so far.
"""
from __future__ import annotations

import re
from pathlib import Path

import mindspore as ms
import numpy as np

from settings.files import config_beside

from settings.schema import Config

STEP_RE = re.compile(r"^step_(\d{7,})\.ckpt$")
BEST = "best.ckpt"
# State entries every training checkpoint has; `--resume` refuses a file without them.
REQUIRED_STATE = ("state.step", "state.steps_per_epoch", "state.group_size", "state.loss_scale",
                  "state.loss_scale_counter", "state.best_miou", "state.best_step")


class TrainError(ValueError):
    """Training cannot start or continue; the message names the file or key at fault."""


def step_checkpoint_name(step: int) -> str:
    return f"step_{step:07d}.ckpt"


def list_step_checkpoints(ckpt_dir: Path) -> list[tuple[int, Path]]:
    if not ckpt_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := STEP_RE.match(p.name))]
    return sorted(found)


def _scalar(value) -> ms.Tensor:
    return ms.Tensor(np.asarray(value))


def save_training_checkpoint(path: Path, net, cfg: Config, optimizer_params: dict, scaler, state: dict) -> None:
    """Write `path` and its config atomically; `state` maps names (without `state.`) to numbers."""
    from model.checkpoint import save_model

    extra = {f"optimizer.{name}": param for name, param in optimizer_params.items()}
    extra["state.loss_scale"] = _scalar(np.float32(scaler.scale_value.asnumpy()))
    counter = getattr(scaler, "counter", None)
    extra["state.loss_scale_counter"] = _scalar(np.int32(counter.asnumpy() if counter is not None else 0))
    extra["state.rng"] = ms.get_rng_state()
    for key, value in state.items():
        extra[f"state.{key}"] = _scalar(np.float64(value) if isinstance(value, float) else np.int64(value))
    save_model(net, str(path), cfg, extra=extra)


def read_checkpoint(path: Path) -> dict:
    """All entries of a checkpoint; a clear TrainError if it is missing, truncated or not a training one."""
    if not path.is_file():
        raise TrainError(f"{path}: checkpoint not found")
    try:
        entries = ms.load_checkpoint(str(path))
    except (ValueError, RuntimeError, OSError) as err:
        raise TrainError(f"{path}: cannot be read (truncated or damaged?): {err}") from None
    missing = [key for key in REQUIRED_STATE if key not in entries]
    if missing:
        raise TrainError(f"{path}: not a training checkpoint (no {', '.join(missing)}); "
                         "it can initialize a model (model.pretrained) but not resume a run")
    return entries


def restore(entries: dict, path: Path, net, optimizer_params: dict, scaler) -> dict:
    """Load weights, optimizer state, loss scale and RNG state; return the `state.` numbers."""
    model_params = {p.name: p for p in net.get_parameters()}
    for name, target in list(model_params.items()) + [(f"optimizer.{n}", p) for n, p in optimizer_params.items()]:
        if name not in entries:
            raise TrainError(f"{path}: has no entry {name!r} (was it written by a different model or optimizer?)")
        value = entries[name]
        if tuple(value.shape) != tuple(target.shape):
            raise TrainError(f"{path}: {name!r} has shape {tuple(value.shape)}, the run expects {tuple(target.shape)}")
        target.set_data(ms.Tensor(value.asnumpy(), target.dtype))
    scaler.scale_value.set_data(ms.Tensor(entries["state.loss_scale"].asnumpy(), ms.float32))
    if getattr(scaler, "counter", None) is not None:
        scaler.counter.set_data(ms.Tensor(entries["state.loss_scale_counter"].asnumpy(), ms.int32))
    if "state.rng" in entries:
        ms.set_rng_state(ms.Tensor(entries["state.rng"].asnumpy()))
    return {key[len("state."):]: entries[key].asnumpy().item() for key in entries
            if key.startswith("state.") and key != "state.rng"}


def remove_checkpoint(path: Path) -> None:
    path.unlink(missing_ok=True)
    config_beside(path).unlink(missing_ok=True)


def rotate(ckpt_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` step checkpoints (best.ckpt is separate and stays)."""
    for _, path in list_step_checkpoints(ckpt_dir)[:-keep] if keep > 0 else []:
        remove_checkpoint(path)

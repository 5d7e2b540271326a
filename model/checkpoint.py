"""Model checkpoints: `.ckpt` + the config beside it (CKPT with suffix .yaml).

Training checkpoints may hold non-model entries; their keys start with `optimizer.` or
`state.` and are ignored here. Anything else that is not a model parameter is an error.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import mindspore as ms

from settings.files import config_beside, save_config
from base.atomic import atomic_path
from model.segmenter import build_segmenter

NON_MODEL_PREFIXES = ("optimizer.", "state.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used with the config; the message names the file."""


def _names(names, limit=8):
    names = sorted(names)
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def match_parameters(net, tensors: dict, source: str) -> dict:
    """Check `tensors` (name -> array) covers every parameter of `net` with its shape, nothing else.

    Returns name -> float32 numpy array. Raises CheckpointError listing every offending name.
    """
    expected = {p.name: tuple(p.shape) for p in net.get_parameters()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    shaped = sorted(f"{k} {tuple(np.shape(tensors[k]))} != {expected[k]}"
                    for k in set(expected) & set(tensors) if tuple(np.shape(tensors[k])) != expected[k])
    problems = []
    if missing:
        problems.append(f"missing {len(missing)}: {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)}: {_names(unexpected)}")
    if shaped:
        problems.append(f"wrong shape {len(shaped)}: {_names(shaped)}")
    if problems:
        raise CheckpointError(f"{source}: does not match the model of the config; " + "; ".join(problems))
    return {k: np.asarray(v, dtype=np.float32) for k, v in tensors.items()}


def assign_parameters(net, arrays: dict) -> None:
    for p in net.get_parameters():
        p.set_data(ms.Tensor(arrays[p.name]))


def load_model(ckpt_path, cfg):
    """Build `cfg.model` and load every parameter from CKPT (eval mode)."""
    path = Path(ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        raw = ms.load_checkpoint(str(path))
    except Exception as err:  # MindSpore raises ValueError/RuntimeError on corrupt files
        raise CheckpointError(f"{path}: not a readable MindSpore checkpoint ({str(err).splitlines()[0]})") from None
    tensors = {k: v.asnumpy() for k, v in raw.items() if not k.startswith(NON_MODEL_PREFIXES)}
    net = build_segmenter(cfg.model)
    assign_parameters(net, match_parameters(net, tensors, str(path)))
    net.set_train(False)
    return net


def save_model(net, ckpt_path, cfg, extra: dict | None = None) -> None:
    """Write CKPT atomically and its config beside it; `extra` keys must start with optimizer./state."""
    path = Path(ckpt_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    bad = [k for k in (extra or {}) if not k.startswith(NON_MODEL_PREFIXES)]
    if bad:
        raise ValueError(f"save_model: extra keys must start with {' or '.join(NON_MODEL_PREFIXES)}: {bad}")
    with atomic_path(path) as tmp:
        ms.save_checkpoint(net, str(tmp), append_dict=dict(extra) if extra else None)
        save_config(cfg, config_beside(path))


def export_mindir(net, out_path, height: int, width: int) -> None:
    """MindIR of `net` for a fixed (1,3,H,W) input, written atomically."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out, suffix=".mindir") as tmp:
        # MindSpore appends ".mindir" to file_name itself.
        ms.export(net, ms.Tensor(np.zeros((1, 3, height, width), np.float32)), file_name=str(tmp)[:-len(".mindir")],
                  file_format="MINDIR")

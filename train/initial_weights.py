"""A run's starting network: random, or initialized from `model.pretrained`."""
from __future__ import annotations

from pathlib import Path

from settings.schema import Config
from train.checkpoint import TrainError


def initial_net(cfg: Config, log):
    """A fresh network, or one initialized from `model.pretrained` (converted .ckpt or Google ViT .npz)."""
    from weights.checkpoint import load_model
    from weights.convert import init_from_npz
    from model.segmenter import build_segmenter

    source = cfg.model.pretrained
    if not source:
        return build_segmenter(cfg.model)
    if not Path(source).is_file():
        raise TrainError(f"model.pretrained: {source}: file not found")
    try:
        net = init_from_npz(source, cfg) if source.endswith(".npz") else load_model(source, cfg, starting=True)
    except ValueError as err:  # CheckpointError / ConfigError name the file and the mismatch
        raise TrainError(f"model.pretrained: {err}") from None
    log(f"initialized from {source}")
    return net

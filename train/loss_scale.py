"""The loss scaler of train.loss_scale: dynamic (any factor >= 1) or static."""
from __future__ import annotations

from mindspore import amp

from settings.schema import TrainConfig


class DynamicLossScaler(amp.DynamicLossScaler):
    """MindSpore's dynamic loss scaler with any factor >= 1: its own accepts only integers, and an
    `int()` of 1.5 would give 1, a scale that never moves."""

    def __init__(self, scale_value, scale_factor: float, scale_window: int):
        super().__init__(scale_value, 2, scale_window)
        self.scale_factor = float(scale_factor)


def build_loss_scaler(train: TrainConfig):
    ls = train.loss_scale
    if ls.dynamic:
        return DynamicLossScaler(ls.init_scale, ls.factor, ls.window)
    return amp.StaticLossScaler(ls.init_scale)

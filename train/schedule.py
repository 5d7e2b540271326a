"""Per-iteration learning-rate schedules: poly, cosine, constant, each with linear warmup.

`lr_at(step, total, base_lr, sched)` is a plain function of the step, so a resumed run sits
at exactly the same place in the schedule as an uninterrupted one.
"""
from __future__ import annotations

import math

from settings.schema import ScheduleConfig


def lr_at(step: int, total: int, base_lr: float, sched: ScheduleConfig) -> float:
    """Learning rate of iteration `step` (0-based) in a run of `total` iterations.

    poly:     (base - min) * (1 - step/total)**power + min
    cosine:   min + (base - min) * (1 + cos(pi * step/total)) / 2
    constant: base
    Warmup (mmseg's linear form) multiplies the above by
    1 - (1 - step/warmup) * (1 - warmup_ratio) while step < warmup_iters.
    """
    if total <= 0:
        raise ValueError(f"total iterations must be positive, got {total}")
    progress = min(max(step, 0), total) / total
    if sched.name == "poly":
        lr = (base_lr - sched.min_lr) * (1.0 - progress) ** sched.power + sched.min_lr
    elif sched.name == "cosine":
        lr = sched.min_lr + (base_lr - sched.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))
    elif sched.name == "constant":
        lr = base_lr
    else:
        raise ValueError(f"train.schedule.name: unknown schedule {sched.name!r}")
    if step < sched.warmup_iters:
        lr *= 1.0 - (1.0 - step / sched.warmup_iters) * (1.0 - sched.warmup_ratio)
    return lr

"""MindSpore execution context from the config: device, graph or PyNative mode, seed."""
from __future__ import annotations

import mindspore as ms


def setup_context(device_target: str = "CPU", mode: str = "graph", seed: int | None = None) -> None:
    ms.set_device(device_target)
    ms.set_context(mode=ms.GRAPH_MODE if mode == "graph" else ms.PYNATIVE_MODE)
    if seed is not None:
        ms.set_seed(seed)

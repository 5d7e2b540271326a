"""What the sliding window costs per image, from sizes alone: window forwards and host memory.

Checked before anything is allocated: the settings once, before the model loads (even the smallest
image becomes `infer_size` on its short side, then each scale), then every image, whose inference
size depends on its shape (an extreme aspect ratio makes `infer_size` blow up the long side).
An image that cannot fit this machine's memory is refused; one that needs far more windows than a
Cityscapes frame is announced with a warning. The bytes counted are what `predict` and `eval`
hold at their peak: the uint8 image and its output maps, the float32 network
input, the logit canvases of the runs (evaluate/sliding_window.py) and one run's working image.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from base.errors import UserError
from base.memory import gib, physical_memory_bytes
from base.network_input import inference_size
from evaluate.sliding_window import TILE_BYTES, count_windows, run_sizes

FRAME = (1024, 2048)  # a Cityscapes frame: the yardstick of a normal image
SLOW = 10  # more windows than this many frames' is announced


@dataclass(frozen=True)
class Cost:
    size: tuple[int, int]  # inference size
    largest: tuple[int, int]  # the largest run's working size (scaled, upscaled to the window)
    windows: int
    bytes: int


def image_cost(cfg, h: int, w: int) -> Cost:
    """Windows and peak host bytes of the sliding window over an h x w image (output at h x w)."""
    e, n_cls = cfg.eval, cfg.model.n_cls
    ih, iw = inference_size(h, w, e.infer_size, e.max_long_side)
    runs = run_sizes(ih, iw, e.window_size, e.flip, tuple(e.scales))
    canvases = [4 * n_cls * rh * rw for rh, rw in runs]  # float32 logits per class and working pixel
    # As `probability_bands` chooses: every run's canvas, or one canvas and an output-size sum.
    held = min(sum(canvases), max(canvases) + 4 * n_cls * h * w) if len(runs) > 1 else canvases[0]
    # A run at another size than the input works on a resized float32 copy: 36 bytes per working
    # pixel are three float32 RGB images (12 bytes each), the copy and the two gathers the bilinear
    # resize holds while making it (base/resize.py).
    working = max(36 * rh * rw if (rh, rw) != (ih, iw) else 0 for rh, rw in runs)
    # 7 bytes per output pixel: the uint8 RGB image (3), its class map (1) and colour image (3);
    # 12 per inference pixel: the float32 RGB network input; 3 bands: one of probabilities and the
    # softmax's and resize's temporaries of the same size.
    need = 7 * h * w + 12 * ih * iw + held + working + 3 * TILE_BYTES
    windows = count_windows(ih, iw, e.window_size, e.window_stride, e.flip, tuple(e.scales))
    return Cost((ih, iw), max(runs, key=lambda r: r[0] * r[1]), windows, need)


def _size(hw) -> str:
    return f"{hw[0]}x{hw[1]}"


def _settings(cfg) -> str:
    e = cfg.eval
    return f"infer size {e.infer_size or 'original'}, scales {list(e.scales)}, window {e.window_size}"


def too_costly(cfg, h: int, w: int, where) -> str | None:
    """None if an h x w image fits this machine's memory; else `where: why`, in words."""
    cost, have = image_cost(cfg, h, w), physical_memory_bytes()
    if cost.bytes <= have:
        return None
    return (f"{where}: {h}x{w} is run at up to {_size(cost.largest)} ({_settings(cfg)}): the sliding window needs "
            f"about {gib(cost.bytes)} of memory ({cost.windows:,} windows), more than this machine's {gib(have)}")


def slow_warning(cfg, h: int, w: int, where) -> str | None:
    """A warning line if an h x w image needs more than SLOW frames' windows, else None."""
    cost, frame = image_cost(cfg, h, w), image_cost(cfg, *FRAME)
    if cost.windows <= SLOW * frame.windows:
        return None
    return (f"warning: {where}: {h}x{w} is run at up to {_size(cost.largest)} ({_settings(cfg)}): "
            f"{cost.windows:,} windows, {cost.windows / frame.windows:.0f}x a {FRAME[0]}x{FRAME[1]} frame's "
            f"{frame.windows}, about {gib(cost.bytes)} of memory; it will take long")


def settings_problem(cfg) -> tuple[str, str] | None:
    """None if the smallest image (1x1) fits this machine's memory at these settings; else (the
    eval key at fault: "scales" or "infer_size", why in words)."""
    cost, have = image_cost(cfg, 1, 1), physical_memory_bytes()
    if cost.bytes <= have:
        return None
    single = replace(cfg, eval=replace(cfg.eval, scales=[1.0], flip=False))
    key = "scales" if image_cost(single, 1, 1).bytes <= have else "infer_size"
    return key, (f"any image is run at {_size(cost.largest)} or more ({_settings(cfg)}): the sliding window needs "
                 f"about {gib(cost.bytes)} of memory, more than this machine's {gib(have)}")


def check_split(cfg, data_root, split: str, max_images: int, warn) -> None:
    """Every record size of the split eval or validation reads against this machine's memory
    (UserError naming a record of that size) and against a normal frame's windows (`warn(line)`),
    before the model loads: the one bound the network input relies on."""
    for h, w, record, count in split_sizes(data_root, split, max_images):
        where = f"{data_root}/{split}: record {record!r}" + (f" (and {count - 1} more of its size)" if count > 1 else "")
        problem = too_costly(cfg, h, w, where)
        if problem is not None:
            raise UserError(problem)
        line = slow_warning(cfg, h, w, where)
        if line is not None:
            warn(line)


def split_sizes(data_root, split: str, max_images: int = 0) -> list[tuple[int, int, str, int]]:
    """(height, width, first record id, records) per distinct size among the records eval reads."""
    from mindrecords.manifest import read_manifest

    table = read_manifest(data_root, split, columns=["id", "height", "width"])
    n = min(table.num_rows, max_images) if max_images > 0 else table.num_rows
    hs = table.column("height").to_numpy()[:n].astype(np.int64)
    ws = table.column("width").to_numpy()[:n].astype(np.int64)
    _, first, counts = np.unique(hs << 32 | ws, return_index=True, return_counts=True)
    ids = table.column("id")
    return [(int(hs[i]), int(ws[i]), ids[int(i)].as_py(), int(c)) for i, c in zip(first, counts)]

"""`predict`: official sliding-window prediction for image files -> trainId / color PNGs (+ probabilities).

Memory is bounded for large images: the input is normalized and resized to the inference size
band by band from the uint8 pixels, the class maps are made in bands of rows
(evaluate/sliding_window.py), and `--save-probs` streams each band of float32 probabilities
into its `.npy` file; nothing of size n_cls x H x W is held.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from base.network_input import inference_size, network_input
from evaluate.sliding_window import count_windows, sliding_window_predict
from base.atomic import atomic_path, check_can_create_dir, write_png_atomic
from base.labels import NUM_CLASSES, colorize
from base.progress import Progress

WINDOW_PROGRESS = 16  # an image with more windows than this shows a bar of its own


class PredictError(ValueError):
    """A bad input image or output location; the message names the file."""


def _open_image(path: Path):
    if not path.is_file():
        raise PredictError(f"{path}: image not found")
    try:
        return Image.open(path)
    except Image.DecompressionBombError as err:
        raise PredictError(f"{path}: {err} (PIL's guard against decompression bombs)") from None
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise PredictError(f"{path}: not a readable image ({err})") from None


def read_rgb(path) -> np.ndarray:
    """HxWx3 uint8 RGB; a clear error naming the file if it is not a readable image."""
    path = Path(path)
    with _open_image(path) as im:
        try:
            return np.asarray(im.convert("RGB"))
        except (OSError, ValueError, SyntaxError) as err:
            raise PredictError(f"{path}: not a readable image ({err})") from None


def check_images(paths, out_dir=None) -> None:
    """Fail before any work on a missing/unreadable image, two inputs with the same stem, or an
    output that would overwrite an input."""
    seen = {}
    inputs = {Path(p).resolve() for p in paths}
    for p in map(Path, paths):
        with _open_image(p) as im:
            try:
                im.verify()
            except (OSError, ValueError, SyntaxError) as err:
                raise PredictError(f"{p}: not a readable image ({err})") from None
        if p.stem in seen:
            raise PredictError(f"{p}: same output name {p.stem!r} as {seen[p.stem]}")
        seen[p.stem] = p
        if out_dir is not None:
            for out in output_paths(out_dir, p.stem, save_probs=True):
                if out.resolve() in inputs:
                    raise PredictError(f"{out}: is an input image; predict never overwrites an input "
                                       "(choose another --out)")


def check_output(cfg, out_dir) -> None:
    """Before the model loads: the classes must be Cityscapes' and OUT must be a writable folder."""
    if cfg.model.n_cls != NUM_CLASSES:
        raise PredictError(f"model.n_cls: the model predicts {cfg.model.n_cls} classes; predict writes Cityscapes "
                           f"trainIds and colours, which need {NUM_CLASSES}")
    try:
        check_can_create_dir(out_dir)
    except OSError as err:
        raise PredictError(f"{err.filename}: cannot write predictions here ({err.strerror})") from None


def output_paths(out_dir, stem: str, save_probs: bool) -> list[Path]:
    out = Path(out_dir)
    return [out / f"{stem}.png", out / f"{stem}_color.png"] + ([out / f"{stem}_probs.npy"] if save_probs else [])


class _ProbsFile:
    """A float32 (n_cls, H, W) .npy written band by band (one seek per class and band)."""

    def __init__(self, handle, n_cls: int, h: int, w: int):
        self.fh, self.h, self.w = handle, h, w
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (n_cls, h, w)})
        self.data_start = handle.tell()
        handle.truncate(self.data_start + 4 * n_cls * h * w)

    def write(self, r0: int, r1: int, band: np.ndarray) -> None:
        for c in range(band.shape[0]):
            self.fh.seek(self.data_start + 4 * (c * self.h * self.w + r0 * self.w))
            self.fh.write(np.ascontiguousarray(band[c], "<f4").tobytes())


def predict_image(net, cfg, path: Path, out_dir: Path, save_probs: bool) -> int:
    """Write one image's outputs; returns its pixel count."""
    e = cfg.eval
    rgb = read_rgb(path)
    h, w = rgb.shape[:2]
    size = inference_size(h, w, e.infer_size)
    image = network_input(rgb, cfg.model.mean, cfg.model.std, e.infer_size)
    windows = count_windows(*size, e.window_size, e.window_stride, e.flip, tuple(e.scales))
    bar = Progress(windows, f"predict {path.name}", "win") if windows > WINDOW_PROGRESS else None
    label_png, color_png, *probs_npy = output_paths(out_dir, path.stem, save_probs)
    args = (net, image, cfg.model.n_cls, e.window_size, e.window_stride, e.batch_windows, e.flip, tuple(e.scales),
            (h, w), bar.update if bar else None)
    try:
        if probs_npy:
            with atomic_path(probs_npy[0]) as tmp, open(tmp, "wb") as fh:
                train_ids = sliding_window_predict(*args, on_band=_ProbsFile(fh, cfg.model.n_cls, h, w).write)
        else:
            train_ids = sliding_window_predict(*args)
    finally:
        if bar:
            bar.close()
    del image
    write_png_atomic(label_png, train_ids)
    write_png_atomic(color_png, colorize(train_ids))
    return train_ids.size


def predict_images(net, cfg, paths, out_dir, save_probs: bool = False) -> dict:
    """Write DIR/{stem}.png (trainIds), DIR/{stem}_color.png and optionally DIR/{stem}_probs.npy per image."""
    check_images(paths, out_dir)
    check_output(cfg, out_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(paths), "predict", "img")
    start = time.time()
    pixels = 0
    try:
        for p in map(Path, paths):
            pixels += predict_image(net, cfg, p, out_dir, save_probs)
            progress.update(1, postfix=p.name)
    except OSError as err:  # a full disk while writing: name the file, keep what was written
        raise PredictError(f"{err.filename or out_dir}: cannot write ({err.strerror or err})") from None
    finally:
        progress.close()
    seconds = time.time() - start
    return {"images": len(paths), "seconds": seconds, "pixels": pixels}

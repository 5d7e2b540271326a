"""`predict`: official sliding-window prediction for image files -> trainId / color PNGs (+ probabilities)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from evaluate.sliding_window import sliding_window_probs
from mindrecords.eval_pipeline import inference_size
from model.interpolate import resize_bilinear
from prep.atomic import atomic_path
from prep.labels import colorize
from prep.progress import Progress


class PredictError(ValueError):
    """A bad input image or output location; the message names the file."""


def read_rgb(path) -> np.ndarray:
    """HxWx3 uint8 RGB; a clear error naming the file if it is not a readable image."""
    path = Path(path)
    if not path.is_file():
        raise PredictError(f"{path}: image not found")
    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise PredictError(f"{path}: not a readable image ({err})") from None


def check_images(paths) -> None:
    """Fail before any work on a missing/unreadable image or two inputs with the same stem."""
    seen = {}
    for p in map(Path, paths):
        if not p.is_file():
            raise PredictError(f"{p}: image not found")
        try:
            with Image.open(p) as im:
                im.verify()
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
            raise PredictError(f"{p}: not a readable image ({err})") from None
        if p.stem in seen:
            raise PredictError(f"{p}: same output name {p.stem!r} as {seen[p.stem]}")
        seen[p.stem] = p


def normalize(rgb: np.ndarray, mean, std) -> np.ndarray:
    """HxWx3 uint8 -> 3xHxW float32 (x - mean) / std."""
    x = (rgb.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def predict_probs(net, rgb: np.ndarray, cfg) -> np.ndarray:
    """(n_cls, H, W) averaged softmax at the image's own size with the config's eval settings."""
    e = cfg.eval
    image = normalize(rgb, cfg.model.mean, cfg.model.std)
    h, w = image.shape[1:]
    size = inference_size(h, w, e.infer_size)
    if size != (h, w):
        image = resize_bilinear(image, size)
    return sliding_window_probs(net, image, cfg.model.n_cls, e.window_size, e.window_stride, e.batch_windows,
                                flip=e.flip, scales=tuple(e.scales), out_size=(h, w))


def predict_images(net, cfg, paths, out_dir, save_probs: bool = False) -> dict:
    """Write DIR/{stem}.png (trainIds), DIR/{stem}_color.png and optionally DIR/{stem}_probs.npy per image."""
    check_images(paths)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(paths), "predict", "img")
    start = time.time()
    pixels = 0
    for p in map(Path, paths):
        probs = predict_probs(net, read_rgb(p), cfg)
        train_ids = probs.argmax(0).astype(np.uint8)
        with atomic_path(out_dir / f"{p.stem}.png") as tmp:
            Image.fromarray(train_ids).save(tmp, format="PNG")
        with atomic_path(out_dir / f"{p.stem}_color.png") as tmp:
            Image.fromarray(colorize(train_ids)).save(tmp, format="PNG")
        if save_probs:
            with atomic_path(out_dir / f"{p.stem}_probs.npy") as tmp:
                np.save(tmp, probs.astype(np.float32))
        pixels += train_ids.size
        progress.update(1, postfix=p.name)
    progress.close()
    seconds = time.time() - start
    return {"images": len(paths), "seconds": seconds, "pixels": pixels}

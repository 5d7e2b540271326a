"""Official Segmenter sliding-window inference (REFERENCE.md section 2), the only copy in the project.

Per scale and flip: upscale so the short side is at least the window, run the windows in
batches, average the window logits per pixel, resize to the image size, flip back, softmax;
then average the softmax maps.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms

from model.interpolate import resize_bilinear


def window_anchors(size: int, window: int, stride: int) -> list:
    """Multiples of `stride` below `size - window`, plus `size - window` (flush with the border)."""
    if window <= 0:
        raise ValueError(f"window ({window}) must be positive")
    if stride <= 0 or stride > window:
        raise ValueError(f"stride ({stride}) must be in 1..window ({window})")
    if size < window:
        raise ValueError(f"size ({size}) is smaller than the window ({window})")
    return [a for a in range(0, size, stride) if a < size - window] + [size - window]


def upscale_to_window(image: np.ndarray, window: int) -> np.ndarray:
    """Official `resize`: if the short side is below the window, make it the window (long side int(ratio*window))."""
    h, w = image.shape[1:]
    if min(h, w) >= window:
        return image
    if h < w:
        size = (window, int(w / h * window))
    else:
        size = (int(h / w * window), window)
    return resize_bilinear(image, size)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=0, keepdims=True))
    return e / e.sum(axis=0, keepdims=True)


def window_logits(net, image: np.ndarray, n_cls: int, window: int, stride: int, batch_windows: int) -> np.ndarray:
    """Mean of the window logits per pixel over an image at least `window` on each side."""
    _, h, w = image.shape
    anchors = [(a, b) for a in window_anchors(h, window, stride) for b in window_anchors(w, window, stride)]
    logit = np.zeros((n_cls, h, w), np.float32)
    count = np.zeros((1, h, w), np.float32)
    for i in range(0, len(anchors), batch_windows):
        chunk = anchors[i:i + batch_windows]
        crops = np.stack([image[:, a:a + window, b:b + window] for a, b in chunk])
        out = net(ms.Tensor(np.ascontiguousarray(crops, dtype=np.float32))).asnumpy()
        if out.shape[1] != n_cls:
            raise ValueError(f"the network returns {out.shape[1]} classes, expected {n_cls}")
        for seg, (a, b) in zip(out, chunk):
            logit[:, a:a + window, b:b + window] += seg
            count[:, a:a + window, b:b + window] += 1
    return logit / count


def scaled_size(h: int, w: int, scale: float):
    return max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)


def sliding_window_probs(net, image: np.ndarray, n_cls: int, window: int, stride: int, batch_windows: int = 4,
                         flip: bool = False, scales=(1.0,), out_size=None) -> np.ndarray:
    """Averaged softmax (n_cls, H, W) float32 of `net` over a normalized float32 CHW image.

    `out_size` (h, w): resize the merged logits to this size instead of the image's, as the
    official evaluation does for an image resized to the inference size (logits, not probabilities,
    are resized).
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C,H,W), got shape {image.shape}")
    if batch_windows <= 0:
        raise ValueError(f"batch_windows ({batch_windows}) must be positive")
    window_anchors(window, window, stride)  # validates window and stride before any work
    _, h, w = image.shape
    out_h, out_w = out_size if out_size is not None else (h, w)
    probs = np.zeros((n_cls, out_h, out_w), np.float32)
    runs = 0
    for scale in scales:
        scaled = image if scale == 1.0 else resize_bilinear(image, scaled_size(h, w, scale))
        for flipped in ((False, True) if flip else (False,)):
            im = scaled[:, :, ::-1] if flipped else scaled
            logit = window_logits(net, upscale_to_window(im, window), n_cls, window, stride, batch_windows)
            logit = resize_bilinear(logit, (out_h, out_w))
            if flipped:
                logit = logit[:, :, ::-1]
            probs += _softmax(logit)
            runs += 1
    return probs / runs

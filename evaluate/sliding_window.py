"""Official Segmenter sliding-window inference (docs/sliding_window.md), the only copy in the project.

Per scale and flip ("run"): upscale so the short side is at least the window, run the windows in
batches, average the window logits per pixel, resize to the output size, flip back, softmax;
then average the softmax maps over the runs.

Memory: the output is made in bands of rows (`TILE_BYTES` of float32 probabilities each), so the
full-resolution class maps are never held at once. What is held is each run's logit canvas at
its working size (n_cls x 4 bytes per working pixel) - or, with several runs, whichever is
smaller of all runs' canvases and one output-size accumulator. Results are bit-identical to
merging whole maps: every band is computed with the same arithmetic.
"""
from __future__ import annotations

import numpy as np

from base.resize import resize_bilinear, source_rows

TILE_BYTES = 32 << 20  # float32 probabilities per output band


def window_anchors(size: int, window: int, stride: int) -> list:
    """Multiples of `stride` below `size - window`, plus `size - window` (flush with the border)."""
    if window <= 0:
        raise ValueError(f"window ({window}) must be positive")
    if stride <= 0 or stride > window:
        raise ValueError(f"stride ({stride}) must be in 1..window ({window})")
    if size < window:
        raise ValueError(f"size ({size}) is smaller than the window ({window})")
    return [a for a in range(0, size, stride) if a < size - window] + [size - window]


def upscaled_size(h: int, w: int, window: int) -> tuple[int, int]:
    """Official `resize`: if the short side is below the window, make it the window (long side int(ratio*window))."""
    if min(h, w) >= window:
        return h, w
    return (window, int(w / h * window)) if h < w else (int(h / w * window), window)


def scaled_size(h: int, w: int, scale: float):
    return max(int(h * scale + 0.5), 1), max(int(w * scale + 0.5), 1)


def _runs(flip: bool, scales) -> list[tuple[float, bool]]:
    return [(scale, flipped) for scale in scales for flipped in ((False, True) if flip else (False,))]


def run_sizes(h: int, w: int, window: int, flip: bool, scales) -> list[tuple[int, int]]:
    """The working (canvas) size of every run over an h x w image."""
    return [upscaled_size(*scaled_size(h, w, scale), window) for scale, _ in _runs(flip, scales)]


def anchor_count(size: int, window: int, stride: int) -> int:
    """len(window_anchors(size, window, stride)) for size >= window, by arithmetic (no list: any size)."""
    return -(-(size - window) // stride) + 1


def count_windows(h: int, w: int, window: int, stride: int, flip: bool = False, scales=(1.0,)) -> int:
    """Window forwards needed for an h x w image (for progress and cost estimates)."""
    return sum(anchor_count(rh, window, stride) * anchor_count(rw, window, stride)
               for rh, rw in run_sizes(h, w, window, flip, scales))


def _softmax(x: np.ndarray) -> np.ndarray:
    """Softmax over axis 0, computed in place in `x` (a band's own array or a canvas's rows): no
    temporaries of x's size, which is most of the host time on a 19 x 1024 x 2048 band."""
    x -= x.max(axis=0, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=0, keepdims=True)
    return x


def _coverage(size: int, window: int, anchors) -> np.ndarray:
    """How many windows cover each index along one axis."""
    cover = np.zeros(size, np.float32)
    for a in anchors:
        cover[a:a + window] += 1
    return cover


def run_windows(net, crops: np.ndarray) -> np.ndarray:
    """Logits (B, n_cls, win, win) of a batch of window crops: `net` is a MindSpore Cell, or any
    callable from a float32 NumPy batch to NumPy logits (the ONNX Runtime session,
    deploy/onnx_runtime.py)."""
    import mindspore as ms  # here: sizes and counts (evaluate/cost.py, `info`) need no MindSpore

    if isinstance(net, ms.nn.Cell):
        return net(ms.Tensor(crops)).asnumpy()
    return net(crops)


def window_logits(net, image: np.ndarray, n_cls: int, window: int, stride: int, batch_windows: int,
                  on_windows=None) -> np.ndarray:
    """Mean of the window logits per pixel over an image at least `window` on each side.

    `on_windows(n)` is called after each batch of n windows (progress)."""
    _, h, w = image.shape
    rows, cols = window_anchors(h, window, stride), window_anchors(w, window, stride)
    anchors = [(a, b) for a in rows for b in cols]
    logit = np.zeros((n_cls, h, w), np.float32)
    for i in range(0, len(anchors), batch_windows):
        chunk = anchors[i:i + batch_windows]
        crops = np.stack([image[:, a:a + window, b:b + window] for a, b in chunk])
        out = run_windows(net, np.ascontiguousarray(crops, dtype=np.float32))
        del crops
        if out.shape[1] != n_cls:
            raise ValueError(f"the network returns {out.shape[1]} classes, expected {n_cls}")
        for seg, (a, b) in zip(out, chunk):
            logit[:, a:a + window, b:b + window] += seg
        del out
        if on_windows is not None:
            on_windows(len(chunk))
    # The window grid is a product of row and column anchors, so the per-pixel window count is
    # the outer product of the per-axis counts (small integers: exact in float32).
    logit /= np.outer(_coverage(h, window, rows), _coverage(w, window, cols))[None]
    return logit


def _canvas(net, image, n_cls, window, stride, batch_windows, scale, flipped, on_windows):
    """One run's mean window logits at its working size (image scaled, flipped, upscaled)."""
    _, h, w = image.shape
    im = image if scale == 1.0 else resize_bilinear(image, scaled_size(h, w, scale))
    if flipped:
        im = im[:, :, ::-1]
    size = upscaled_size(im.shape[1], im.shape[2], window)
    if size != im.shape[1:]:
        im = resize_bilinear(im, size)
    return window_logits(net, im, n_cls, window, stride, batch_windows, on_windows)


def _band(canvas: np.ndarray, flipped: bool, out_h: int, out_w: int, r0: int, r1: int) -> np.ndarray:
    """Softmax of the canvas resized to the output, rows r0..r1-1 only, flipped back.

    An identity resize returns a view of the canvas, and the softmax is then computed in the
    canvas's own rows: each canvas is read band by band, once, and dropped after, so no fresh
    copy of the whole map is made (its page faults cost time; docs/benchmarks.md)."""
    s0, s1 = source_rows(canvas.shape[1], out_h, r0, r1)
    logit = resize_bilinear(canvas[:, s0:s1], (out_h, out_w), rows=(r0, r1), source_height=canvas.shape[1],
                            row_offset=s0)
    return _softmax(logit[:, :, ::-1] if flipped else logit)


def output_bands(n_cls: int, out_h: int, out_w: int) -> list[tuple[int, int]]:
    rows = max(1, TILE_BYTES // (4 * n_cls * out_w))
    return [(r, min(r + rows, out_h)) for r in range(0, out_h, rows)]


def probability_bands(net, image: np.ndarray, n_cls: int, window: int, stride: int, batch_windows: int = 4,
                      flip: bool = False, scales=(1.0,), out_size=None, on_windows=None):
    """Yield (r0, r1, probs) bands, top to bottom, of the averaged softmax (n_cls, H, W) float32 of
    `net` over a normalized float32 CHW image (see the module doc for the memory this holds).

    `out_size` (h, w): resize the merged logits to this size instead of the image's, as the
    official evaluation does for an image resized to the inference size (logits, not
    probabilities, are resized).
    """
    if image.ndim != 3:
        raise ValueError(f"image must be (C,H,W), got shape {image.shape}")
    if batch_windows <= 0:
        raise ValueError(f"batch_windows ({batch_windows}) must be positive")
    window_anchors(window, window, stride)  # validates window and stride before any work
    _, h, w = image.shape
    out_h, out_w = out_size if out_size is not None else (h, w)
    runs = _runs(flip, scales)
    bands = output_bands(n_cls, out_h, out_w)
    canvas_bytes = [4 * n_cls * rh * rw for rh, rw in run_sizes(h, w, window, flip, scales)]
    accumulate = len(runs) > 1 and 4 * n_cls * out_h * out_w + max(canvas_bytes) < sum(canvas_bytes)
    args = (net, image, n_cls, window, stride, batch_windows)
    if accumulate:  # one canvas at a time, summed into an output-size accumulator
        total = np.zeros((n_cls, out_h, out_w), np.float32)
        for scale, flipped in runs:
            canvas = _canvas(*args, scale, flipped, on_windows)
            for r0, r1 in bands:
                total[:, r0:r1] += _band(canvas, flipped, out_h, out_w, r0, r1)
            del canvas
        for r0, r1 in bands:
            yield r0, r1, total[:, r0:r1] / len(runs)
        return
    canvases = [(_canvas(*args, scale, flipped, on_windows), flipped) for scale, flipped in runs]
    for r0, r1 in bands:
        # Summed in place into the first run's band (0 + p is p exactly: same result as a zero start).
        band = _band(canvases[0][0], canvases[0][1], out_h, out_w, r0, r1)
        for canvas, flipped in canvases[1:]:
            band += _band(canvas, flipped, out_h, out_w, r0, r1)
        if len(runs) > 1:
            band /= len(runs)
        yield r0, r1, band


def argmax_classes(probs: np.ndarray) -> np.ndarray:
    """(n_cls, H, W) scores -> (H, W) uint8 index of the first maximum (same as np.argmax)."""
    out = np.empty(probs.shape[1:], dtype=np.uint8)
    # Row blocks keep the class-axis argmax in cache (faster than one call over the whole band).
    for row in range(0, out.shape[0], 32):
        out[row:row + 32] = np.argmax(probs[:, row:row + 32], axis=0)
    return out


def sliding_window_predict(net, image: np.ndarray, n_cls: int, window: int, stride: int, batch_windows: int = 4,
                           flip: bool = False, scales=(1.0,), out_size=None, on_windows=None, on_band=None):
    """(H, W) uint8 class map; `on_band(r0, r1, probs)` receives each band of probabilities (e.g. to
    stream them to a file) before it is dropped."""
    _, h, w = image.shape
    out_h, out_w = out_size if out_size is not None else (h, w)
    pred = np.empty((out_h, out_w), np.uint8)
    for r0, r1, band in probability_bands(net, image, n_cls, window, stride, batch_windows, flip, scales,
                                          out_size, on_windows):
        pred[r0:r1] = argmax_classes(band)
        if on_band is not None:
            on_band(r0, r1, band)
    return pred


def sliding_window_probs(net, image: np.ndarray, n_cls: int, window: int, stride: int, batch_windows: int = 4,
                         flip: bool = False, scales=(1.0,), out_size=None) -> np.ndarray:
    """The whole averaged softmax (n_cls, H, W) float32 (small images, tests, benchmarks)."""
    _, h, w = image.shape
    out_h, out_w = out_size if out_size is not None else (h, w)
    probs = np.empty((n_cls, out_h, out_w), np.float32)
    for r0, r1, band in probability_bands(net, image, n_cls, window, stride, batch_windows, flip, scales, out_size):
        probs[:, r0:r1] = band
    return probs

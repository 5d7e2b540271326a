"""`predict`: official sliding-window prediction for images and videos -> trainId / colour PNGs
(+ overlays, probabilities), and colour-overlay videos (+ per-frame trainId PNGs).

Memory is bounded for large images: the input is normalized and resized to the inference size
band by band from the uint8 pixels, the class maps are made in bands of rows
(evaluate/sliding_window.py), and `--save-probs` streams each band of float32 probabilities
into its `.npy` file; nothing of size n_cls x H x W is held.

Every output is written through OUT's ownership log (base/ownership.py's WrittenFiles): it
replaces only a file predict wrote, and is logged before it is renamed into place.
"""
from __future__ import annotations

import errno
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from base.images import decode_image, read_info
from base.network_input import network_input
from evaluate.cost import image_cost, slow_warning, too_costly
from base.overlay import overlay
from evaluate.predict_inputs import KIND, Inputs, Item, PredictError, frame_path, output_paths
from evaluate.sliding_window import sliding_window_predict
from base.atomic import check_can_create_dir, png_bytes
from base.ownership import WrittenFiles
from base.labels import check_n_cls, colorize
from base.progress import Progress

WINDOW_PROGRESS = 16  # an image with more windows than this shows a bar of its own
VIDEO_OVERLAY = 0.5  # a video's frames are always overlays: this opacity unless --overlay says


def check_output(cfg, out_dir) -> None:
    """Before the model loads: the classes must be Cityscapes' and OUT must be a writable folder."""
    check_n_cls(cfg.model.n_cls)
    try:
        check_can_create_dir(out_dir)
    except OSError as err:
        raise PredictError(f"{err.filename}: cannot write predictions here ({err.strerror})") from None


def check_sizes(cfg, inputs: Inputs, warn) -> None:
    """Before the model loads: every image's sliding window must fit this machine's memory
    (PredictError naming the first that cannot); `warn(line)` for each that needs far more windows
    than a Cityscapes frame (evaluate/cost.py). Only headers are read."""
    for item in inputs.items:
        if item.kind == "image":
            info = read_info(item.path)
            problem = too_costly(cfg, info.height, info.width, item.path)
            if problem:
                raise PredictError(problem)
            line = slow_warning(cfg, info.height, info.width, item.path)
            if line:
                warn(line)


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


def predict_rgb(net, cfg, rgb: np.ndarray, label: str, on_band=None) -> np.ndarray:
    """(H, W) uint8 trainIds of one RGB image or frame; a bar of its windows if it has many."""
    e = cfg.eval
    h, w = rgb.shape[:2]
    problem = too_costly(cfg, h, w, label)  # a video's frames are seen only here
    if problem:
        raise PredictError(problem)
    image = network_input(rgb, cfg.model.mean, cfg.model.std, e.infer_size)
    windows = image_cost(cfg, h, w).windows
    bar = Progress(windows, f"predict {label}", "win") if windows > WINDOW_PROGRESS else None
    try:
        return sliding_window_predict(net, image, cfg.model.n_cls, e.window_size, e.window_stride, e.batch_windows,
                                      e.flip, tuple(e.scales), (h, w), bar.update if bar else None, on_band)
    finally:
        if bar:
            bar.close()


def predict_image(net, cfg, item, out_dir: Path, save_probs: bool, alpha: float | None = None,
                  written: WrittenFiles | None = None, rgb: np.ndarray | None = None) -> None:
    """Write one image's outputs (`item`: an Item, or an image path written as OUT/{stem}).
    `alpha`: also an overlay at that opacity. `written`: OUT's log (read here if not given);
    `rgb`: the image already read."""
    if not isinstance(item, Item):
        item = Item(Path(item), Path(item).stem, "image")
    written = written or WrittenFiles(out_dir, KIND)
    if rgb is None:
        rgb = decode_image(item.path)
    h, w = rgb.shape[:2]
    label_png, color_png, *extra = output_paths(out_dir, item, save_probs, alpha is not None, False)
    label_png.parent.mkdir(parents=True, exist_ok=True)
    if save_probs:
        with written.atomic(extra[-1]) as tmp, open(tmp, "wb") as fh:
            train_ids = predict_rgb(net, cfg, rgb, item.path.name, _ProbsFile(fh, cfg.model.n_cls, h, w).write)
    else:
        train_ids = predict_rgb(net, cfg, rgb, item.path.name)
    written.write_bytes(label_png, png_bytes(train_ids))
    written.write_bytes(color_png, png_bytes(colorize(train_ids)))
    if alpha is not None:
        written.write_bytes(extra[0], png_bytes(overlay(rgb, train_ids, alpha=alpha)))


def predict_video(net, cfg, item: Item, out_dir, alpha: float, frames: bool, progress: Progress,
                  written: WrittenFiles) -> int:
    """`{stem}.mp4` (`.avi` for an .avi) of colour overlays at the source frame rate; with `frames`,
    `{stem}_frames/frame_NNNNNN.png` trainIds too. Written to a temporary name, renamed at the end
    once it reads back with every frame. Returns the number of frames."""
    video, *frame_dir = output_paths(out_dir, item, False, True, frames)
    video.parent.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(item.path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0  # some containers carry no rate: a common default
    codec = "MJPG" if video.suffix == ".avi" else "mp4v"
    n = 0
    try:
        with written.atomic(video) as tmp:
            writer = None
            try:
                while True:
                    ok, bgr = cap.read()
                    if not ok:
                        break
                    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
                    train_ids = predict_rgb(net, cfg, rgb, f"{item.path.name} frame {n}")
                    if writer is None:
                        writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*codec), fps,
                                                 (rgb.shape[1], rgb.shape[0]))
                        if not writer.isOpened():
                            raise OSError(5, f"OpenCV cannot write a {codec} video", str(video))
                    writer.write(np.ascontiguousarray(overlay(rgb, train_ids, alpha=alpha)[:, :, ::-1]))
                    if frame_dir:
                        frame_dir[0].mkdir(exist_ok=True)
                        written.write_bytes(frame_path(frame_dir[0], n), png_bytes(train_ids))
                    n += 1
                    progress.update(1, postfix=f"{item.path.name} frame {n}")
            finally:
                if writer is not None:
                    writer.release()
            _check_video(tmp, n, video)
    finally:
        cap.release()
    return n


def _check_video(path: Path, frames: int, name: Path) -> None:
    """OpenCV's video writer reports no error (a full disk included): read the count back."""
    cap = cv2.VideoCapture(str(path))
    try:
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    finally:
        cap.release()
    if count != frames:
        raise OSError(errno.EIO, f"the video written holds {count} of its {frames} frames "
                                 "(is the disk full?)", str(name))


def predict_inputs(net, cfg, inputs: Inputs, out_dir, save_probs: bool = False, alpha: float | None = None,
                   frames: bool = False) -> dict:
    """Predict every resolved input (evaluate/predict_inputs.py); one progress bar over images and
    video frames. The caller holds OUT's lock (base/ownership.py's output_folder) and has run
    `check_outputs` and `check_output` before loading the model. An image found in a folder that
    fails to decode is listed (`skipped: PATH: reason`), added to `inputs.skipped` and passed over."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = WrittenFiles(out_dir, KIND)
    total = inputs.images + sum(_frame_count(i.path) for i in inputs.items if i.kind == "video")
    progress = Progress(total, "predict", "img")
    start = time.time()
    counts = {"images": 0, "frames": 0}
    try:
        for item in inputs.items:
            if item.kind == "video":
                counts["frames"] += predict_video(net, cfg, item, out_dir, VIDEO_OVERLAY if alpha is None else alpha,
                                                  frames, progress, written)
                continue
            rgb = _read_found(item, inputs)
            if rgb is not None:
                predict_image(net, cfg, item, out_dir, save_probs, alpha, written, rgb)
                counts["images"] += 1
            progress.update(1, postfix=item.path.name)
    except FileExistsError as err:  # changed since check_outputs: still never replaced
        raise PredictError(f"{err.filename}: {err.strerror}") from None
    except OSError as err:  # a full disk while writing: name the file, keep what was written
        raise PredictError(f"{err.filename or out_dir}: cannot write ({err.strerror or err})") from None
    finally:
        progress.close()
    counts["seconds"] = time.time() - start
    return counts


def _read_found(item: Item, inputs: Inputs) -> np.ndarray | None:
    """The image's RGB; None for an image found in a folder or by a glob that does not decode (a
    truncated JPEG passes the header check before the model loads): listed and skipped."""
    try:
        return decode_image(item.path)
    except ValueError as err:  # PredictError, or base/images.py's ImageError: `PATH: reason`
        if not item.found:
            raise
        reason = getattr(err, "reason", None) or str(err).removeprefix(f"{item.path}: ")
        inputs.skipped.append((item.path, reason))
        newline = "\n" if sys.stderr.isatty() else ""  # off the progress bar's line
        print(f"{newline}skipped: {item.path}: {reason}", file=sys.stderr)
        return None


def _frame_count(path: Path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        cap.release()


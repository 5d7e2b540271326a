"""`predict`: official sliding-window prediction for images and videos -> class-index / colour PNGs
(+ overlays, probabilities), and colour-overlay videos (+ per-frame class-index PNGs). The classes
and colours are the checkpoint's class table (weights/checkpoint.py): on Cityscapes the indices
are trainIds and the colours the official palette.

Memory is bounded for large images: the input is normalized and resized to the inference size
band by band from the uint8 pixels, the class maps are made in bands of rows
(evaluate/sliding_window.py), and `--save-probs` streams each band of float32 probabilities
into its `.npy` file; nothing of size n_cls x H x W is held.

Every output is written through OUT's ownership log (base/ownership.py's WrittenFiles): it
replaces only a file predict wrote, and is logged before it is renamed into place.
"""
from __future__ import annotations

import errno
import io
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
from base.checksums import crc32_concat, crc32_text, crc32_update
from base.ownership import WrittenFiles
from base.class_table import CITYSCAPES, ClassTable
from base.progress import Progress

WINDOW_PROGRESS = 16  # an image with more windows than this shows a bar of its own
VIDEO_OVERLAY = 0.5  # a video's frames are always overlays: this opacity unless --overlay says


def check_output(cfg, checkpoint, out_dir) -> ClassTable:
    """Before the model loads: the class table CKPT predicts, which must have the config's classes;
    OUT must be a writable folder."""
    from weights.checkpoint import checkpoint_classes

    table = checkpoint_classes(checkpoint)
    if cfg.model.n_cls != table.n_cls:
        raise PredictError(f"{checkpoint}: the model predicts {cfg.model.n_cls} classes, its class table "
                           f"({table.dataset}) has {table.n_cls}; a checkpoint written before checkpoints carried "
                           "their classes is read as Cityscapes: convert or train it again")
    try:
        check_can_create_dir(out_dir)
    except OSError as err:
        raise PredictError(f"{err.filename}: cannot write predictions here ({err.strerror})") from None
    return table


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
    """A float32 (n_cls, H, W) .npy written band by band, top to bottom (one seek per class and
    band). Its CRC-32 is computed from the bytes written: one running CRC per class plane, joined
    at the end, so logging the file never reads it back."""

    def __init__(self, handle, n_cls: int, h: int, w: int):
        self.fh, self.h, self.w = handle, h, w
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False,
                                                     "shape": (n_cls, h, w)})
        self.header = header.getvalue()
        handle.write(self.header)
        self.plane = 4 * h * w
        handle.truncate(len(self.header) + n_cls * self.plane)
        self.crcs = [0] * n_cls
        self.rows = 0  # rows written so far: bands arrive in order

    def write(self, r0: int, r1: int, band: np.ndarray) -> None:
        if r0 != self.rows:
            raise ValueError(f"probability band {r0}..{r1} after rows 0..{self.rows}: bands must come in order")
        for c in range(band.shape[0]):
            data = np.ascontiguousarray(band[c], "<f4").tobytes()
            self.fh.seek(len(self.header) + c * self.plane + 4 * r0 * self.w)
            self.fh.write(data)
            self.crcs[c] = crc32_update(data, self.crcs[c])
        self.rows = r1

    def proof(self) -> tuple[int, str]:
        """(size, CRC-32) of the whole file once every row is written."""
        if self.rows != self.h:
            raise ValueError(f"probabilities written for {self.rows} of {self.h} rows")
        crc = crc32_update(self.header)
        for plane in self.crcs:
            crc = crc32_concat(crc, plane, self.plane)
        return len(self.header) + len(self.crcs) * self.plane, crc32_text(crc)


def predict_rgb(net, cfg, rgb: np.ndarray, label: str, on_band=None) -> np.ndarray:
    """(H, W) uint8 class indices of one RGB image or frame; a bar of its windows if it has many."""
    e = cfg.eval
    h, w = rgb.shape[:2]
    problem = too_costly(cfg, h, w, label)  # a video's frames are seen only here
    if problem:
        raise PredictError(problem)
    image = network_input(rgb, cfg.model.mean, cfg.model.std, e.infer_size, e.max_long_side)
    windows = image_cost(cfg, h, w).windows
    bar = Progress(windows, f"predict {label}", "win") if windows > WINDOW_PROGRESS else None
    try:
        return sliding_window_predict(net, image, cfg.model.n_cls, e.window_size, e.window_stride, e.batch_windows,
                                      e.flip, tuple(e.scales), (h, w), bar.update if bar else None, on_band)
    finally:
        if bar:
            bar.close()


def predict_image(net, cfg, item, out_dir: Path, save_probs: bool, alpha: float | None = None,
                  written: WrittenFiles | None = None, rgb: np.ndarray | None = None,
                  table: ClassTable = CITYSCAPES) -> None:
    """Write one image's outputs (`item`: an Item, or an image path written as OUT/{stem}): class
    indices, and their colours in `table`'s palette. `alpha`: also an overlay at that opacity.
    `written`: OUT's log (read here if not given); `rgb`: the image already read."""
    if not isinstance(item, Item):
        item = Item(Path(item), Path(item).stem, "image")
    written = written or WrittenFiles(out_dir, KIND)
    if rgb is None:
        rgb = decode_image(item.path)
    h, w = rgb.shape[:2]
    label_png, color_png, *extra = output_paths(out_dir, item, save_probs, alpha is not None, False)
    label_png.parent.mkdir(parents=True, exist_ok=True)
    if save_probs:
        with written.atomic(extra[-1]) as staged, open(staged.tmp, "wb") as fh:
            probs = _ProbsFile(fh, cfg.model.n_cls, h, w)
            train_ids = predict_rgb(net, cfg, rgb, item.path.name, probs.write)
            staged.size, staged.crc = probs.proof()
    else:
        train_ids = predict_rgb(net, cfg, rgb, item.path.name)
    written.write_bytes(label_png, png_bytes(train_ids))
    written.write_bytes(color_png, png_bytes(table.colorize(train_ids)))
    if alpha is not None:
        written.write_bytes(extra[0], png_bytes(overlay(rgb, train_ids, table.ignore_index, alpha, table)))


def predict_video(net, cfg, item: Item, out_dir, alpha: float, frames: bool, progress: Progress,
                  written: WrittenFiles, table: ClassTable = CITYSCAPES) -> int:
    """`{stem}.mp4` (`.avi` for an .avi) of overlays in `table`'s palette at the source frame rate;
    with `frames`, `{stem}_frames/frame_NNNNNN.png` class indices too. Written to a temporary name, renamed at the end
    once it reads back with every frame. Returns the number of frames."""
    video, *frame_dir = output_paths(out_dir, item, False, True, frames)
    video.parent.mkdir(parents=True, exist_ok=True)
    cap = cv2.VideoCapture(str(item.path))
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0  # some containers carry no rate: a common default
    codec = "MJPG" if video.suffix == ".avi" else "mp4v"
    n = 0
    try:
        with written.atomic(video) as staged:  # OpenCV writes it: logged from one read-back
            tmp = staged.tmp
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
                    writer.write(np.ascontiguousarray(overlay(rgb, train_ids, table.ignore_index, alpha, table)
                                                      [:, :, ::-1]))
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
                   frames: bool = False, written: WrittenFiles | None = None,
                   table: ClassTable = CITYSCAPES) -> dict:
    """Predict every resolved input (evaluate/predict_inputs.py); one progress bar over images and
    video frames. The caller holds OUT's lock (base/ownership.py's output_folder) and has run
    `check_outputs` (with `written`, OUT's log, whose proofs then hold) and `check_output` before
    loading the model; `table` is the class table `check_output` returned. An image found in a
    folder that fails to decode is listed (`skipped: PATH: reason`), added to `inputs.skipped`
    and passed over."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = written or WrittenFiles(out_dir, KIND)
    total = inputs.images + sum(_frame_count(i.path) for i in inputs.items if i.kind == "video")
    progress = Progress(total, "predict", "img")
    start = time.time()
    counts = {"images": 0, "frames": 0}
    try:
        for item in inputs.items:
            if item.kind == "video":
                counts["frames"] += predict_video(net, cfg, item, out_dir, VIDEO_OVERLAY if alpha is None else alpha,
                                                  frames, progress, written, table)
                continue
            rgb = _read_found(item, inputs)
            if rgb is not None:
                predict_image(net, cfg, item, out_dir, save_probs, alpha, written, rgb, table)
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


def bf16_agreement(runner, cfg, found: Inputs) -> str:
    """predict --precision bf16: the share of the first image's pixels given the class f32 gives
    them, so the cost of bf16 is seen (one more prediction at each precision)."""
    image = next((item.path for item in found.items if item.kind == "image" and item.path not in
                  {path for path, _ in found.skipped}), None)
    if image is None:
        return "bf16 vs f32: no image among the inputs to compare on (videos only)"
    rgb = decode_image(image)
    agree = np.mean(predict_rgb(runner, cfg, rgb, image.name) == predict_rgb(runner.with_precision("f32"), cfg,
                                                                             rgb, image.name))
    return f"bf16 vs f32 on {image}: {100 * agree:.2f}% of pixels get the same class"

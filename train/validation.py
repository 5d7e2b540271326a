"""Periodic validation during training: the evaluator's scores on the val split, logged to RUN.

The evaluator scores it as `eval` does: the val split's class table and metric (Cityscapes' or
mmseg's), its protocol for the eval keys the config leaves open. Rank 0 logs its progress (images
done, rate, ETA) through the run's log and ends with the summary; TensorBoard (`train.events`)
gets the scores and a few image | prediction | ground truth panels."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

import numpy as np

from evaluate.evaluator import evaluate_split
from evaluate.predict import predict_rgb
from mindrecords.manifest import data_classes, data_eval_protocol, manifest_rows
from mindrecords.reader import read_batches
from pipelines.eval_pipeline import eval_dataset
from settings.schema import Config, with_eval_protocol
from train.events import TrainEvents, panel
from train.run_folder import Run

PANEL_IMAGES = 3  # val images shown in TensorBoard at each validation


class _LogLines:
    """A text stream whose lines go to `log` (base.progress.Progress writes plain lines to a non-terminal)."""

    def __init__(self, log):
        self.log = log

    def write(self, text: str) -> None:
        for line in text.splitlines():
            if line.strip():
                self.log(line)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def validate(net, cfg: Config, data_root, step: int, run: Run, log, rank: int = 0,
             group_size: int = 1, events: TrainEvents | None = None) -> float | None:
    """Evaluate on `data.val_split` (at most `data.val_max_images`), log it; returns the mIoU.

    Every rank takes part (its share of the images, the counts summed), so none idles in the next
    all-reduce; every rank gets the same scores, rank 0 writes and logs them."""
    metrics = evaluate_split(net, cfg, data_root, cfg.data.val_split, max_images=cfg.data.val_max_images,
                             show_progress=run.writer, rank=rank, group_size=group_size,
                             progress_stream=_LogLines(log))
    miou = metrics["mIoU"]
    run.log({"type": "val", "step": step, "mIoU": miou, "pixel_accuracy": metrics.get("pixel_accuracy"),
             "per_class": metrics.get("per_class"), "images": metrics.get("images"),
             "seconds": metrics.get("seconds"), "aAcc": metrics.get("aAcc"), "mAcc": metrics.get("mAcc"),
             "Acc": metrics.get("Acc")})
    if run.writer:
        shown = "n/a (no labelled pixels)" if miou is None else f"{100 * miou:.2f}"
        log(f"step {step}: val mIoU {shown} on {metrics.get('images')} images, mAcc {_pct(metrics.get('mAcc'))}, "
            f"aAcc {_pct(metrics.get('aAcc'))} ({metrics.get('seconds', 0):.1f}s)")
    if events is not None and events.on:
        events.validation(step, metrics, panels(net, cfg, data_root))
    return miou


def panel_rows(cfg: Config, data_root) -> list[dict]:
    """The val images TensorBoard shows, the same at every validation: PANEL_IMAGES evenly spread
    over the validated ones from an offset drawn from `seed`; eval_dataset's rows (with `raw`)."""
    split = cfg.data.val_split
    n = manifest_rows(data_root, split)
    if cfg.data.val_max_images > 0:
        n = min(n, cfg.data.val_max_images)
    stride = max(n // PANEL_IMAGES, 1)
    offset = int(np.random.default_rng(cfg.seed).integers(stride))
    # The share of "rank" `offset` of `stride`: rows offset, offset + stride, ... (eval_indices).
    data = eval_dataset(cfg, data_root, split, with_raw=True, max_images=n, rank=offset, group_size=stride)
    rows = read_batches(data, data_root, split, "validation images", output_numpy=True, as_dict=True)
    return list(islice(rows, PANEL_IMAGES))


def panels(net, cfg: Config, data_root) -> dict:
    """Image id -> image | prediction | ground truth (`train.events.panel`) of `panel_rows`."""
    split = cfg.data.val_split
    cfg = with_eval_protocol(cfg, data_eval_protocol(data_root, split), str(Path(data_root) / split))
    table = data_classes(data_root, split)
    was_training = net.training
    net.set_train(False)
    try:
        return {str(row["id"]): panel(row["raw"], predict_rgb(net, cfg, row["raw"], str(row["id"])), row["label"],
                                      table)
                for row in panel_rows(cfg, data_root)}
    finally:
        net.set_train(was_training)

"""Periodic validation during training: the evaluator's mIoU on the val split, logged to RUN.

The evaluator scores it as `eval` does: the val split's class table and metric (Cityscapes' or
mmseg's), its protocol for the eval keys the config leaves open."""
from __future__ import annotations

from evaluate.evaluator import evaluate_split
from settings.schema import Config
from train.run_folder import Run


def validate(net, cfg: Config, data_root, step: int, run: Run, log, rank: int = 0,
             group_size: int = 1) -> float | None:
    """Evaluate on `data.val_split` (at most `data.val_max_images`), log it; returns the mIoU.

    Every rank takes part (its share of the images, the counts summed), so none idles in the next
    all-reduce; every rank gets the same mIoU, rank 0 writes it."""
    metrics = evaluate_split(net, cfg, data_root, cfg.data.val_split, max_images=cfg.data.val_max_images,
                             show_progress=False, rank=rank, group_size=group_size)
    miou = metrics["mIoU"]
    run.log({"type": "val", "step": step, "mIoU": miou, "pixel_accuracy": metrics.get("pixel_accuracy"),
             "per_class": metrics.get("per_class"), "images": metrics.get("images"),
             "seconds": metrics.get("seconds")})
    if run.writer:
        shown = "n/a (no labelled pixels)" if miou is None else f"{100 * miou:.2f}"
        log(f"step {step}: val mIoU {shown} on {metrics.get('images')} images")
    return miou

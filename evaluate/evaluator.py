"""Evaluate a network on a built split: sliding-window inference, confusion matrix, scores.

The data set the split was built from decides how (its manifest, `mindrecords.manifest`): its
class table names the classes and picks the scores (Cityscapes' official ones, mmseg's otherwise,
`evaluate.metrics`), its protocol fills the eval keys the config leaves open
(`settings.schema.with_eval_protocol`).

Images stream from the shards one at a time (decode/normalize run ahead in the dataset's C
threads) and only the confusion matrix is kept, so memory does not depend on the number of
images. `evaluate_split` is what both `cli.py eval` and training's periodic validation call.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from settings.schema import Config, with_eval_protocol
from evaluate.metrics import ConfusionMatrix, compute_metrics
from evaluate.prediction_sets import prediction_set
from evaluate.sliding_window import sliding_window_predict
from pipelines.eval_pipeline import eval_dataset
from mindrecords.manifest import data_classes, data_eval_protocol, data_label_offset, split_shard_files
from mindrecords.reader import read_batches
from base.class_table import ClassTable, check_classes
from base.errors import UserError
from base.atomic import write_text_atomic
from base.device import all_reduce_counts
from base.progress import Progress

# Splits whose labels are all void (the benchmark keeps the test ground truth private).
NO_GROUND_TRUTH_SPLITS = ("test",)


class EvalError(UserError, ValueError):
    """Evaluation cannot proceed; the message names the file or setting at fault."""


def _no_metrics() -> dict:
    return {"mIoU": None, "per_class": {}, "categories": {}, "pixel_accuracy": None, "aAcc": None, "mAcc": None,
            "IoU": {}, "Acc": {}}


def evaluate_split(net, cfg: Config, data_root, split: str, max_images: int = 0,
                   save_predictions=None, checkpoint: str | None = None,
                   timings: dict | None = None, show_progress: bool = True, rank: int = 0,
                   group_size: int = 1, progress_stream=None) -> dict:
    """Run `net` over `split` with the settings in `cfg.eval` (those left open: the data set's
    protocol); return the metrics dict.

    Keys: those of `evaluate.metrics.compute_metrics` (mIoU in [0, 1], per_class / IoU / Acc
    {class name: score or None}, categories (Cityscapes only), pixel_accuracy = aAcc, mAcc),
    confusion (pixel counts, rows the ground-truth classes, columns the predicted ones: a list of
    n_cls lists of n_cls ints; None without ground truth), images, seconds. A split without ground
    truth (test) yields None scores. `save_predictions` (a folder) receives the predictions in the data set's label
    encoding and colour PNGs (`evaluate.prediction_sets`), complete or not at all.
    `timings`, if given, is filled with seconds spent waiting for input, in sliding-window
    inference (the argmax included: it runs band by band there; the `argmax` entry stays 0, kept
    for bench/bench_eval.py's side-by-side table), in metric accumulation and in writing predictions.
    `progress_stream`: where the progress goes (default stderr; `base.progress.Progress`).
    """
    table = data_classes(data_root, split)
    check_classes(cfg.model.n_cls, table, checkpoint or "the config", Path(data_root) / split, trained=True)
    if save_predictions is not None and group_size > 1:
        raise EvalError(f"{save_predictions}: --save-predictions writes one prediction set from one process; "
                        "run it without msrun")
    cfg = with_eval_protocol(cfg, data_eval_protocol(data_root, split), str(Path(data_root) / split))
    split_dir = Path(split_shard_files(data_root, split)[0]).parent
    data = eval_dataset(cfg, data_root, split, with_raw=save_predictions is not None, max_images=max_images,
                        rank=rank, group_size=group_size)
    total = data.get_dataset_size()
    with prediction_set(save_predictions, split=split, checkpoint=checkpoint, table=table,
                        label_offset=data_label_offset(data_root, split)) as writer:
        scoring = _Scoring(net, cfg, table, split, split_dir, writer)
        progress = Progress(total, f"eval {split}", "img", stream=progress_stream) if show_progress else None
        was_training = net.training
        net.set_train(False)
        start = time.perf_counter()
        try:
            scoring.run(read_batches(data, data_root, split, f"eval {split}", output_numpy=True, as_dict=True,
                                     in_manifest_order=group_size == 1), progress)
        finally:
            net.set_train(was_training)
            if progress is not None:
                progress.close()
    if timings is not None:
        timings.update(scoring.spent)
    # The image count rides along with the matrix: one exact reduction for both.
    counts = all_reduce_counts(np.append(scoring.cm.matrix.ravel(), scoring.done), group_size)
    matrix, images = counts[:-1].reshape(scoring.cm.matrix.shape), int(counts[-1])
    result = compute_metrics(matrix, table) if scoring.has_gt else _no_metrics()
    # Predictions are argmax class indices: the matrix's void column (evaluate.metrics) stays empty.
    result.update(confusion=matrix[:, :table.n_cls].tolist() if scoring.has_gt else None, images=images,
                  seconds=time.perf_counter() - start)
    return result


class _Scoring:
    """The per-image work of an evaluation: predict, accumulate the confusion matrix, export."""

    def __init__(self, net, cfg: Config, table: ClassTable, split: str, split_dir: Path, writer):
        self.net, self.e, self.table, self.split_dir, self.writer = net, cfg.eval, table, split_dir, writer
        self.has_gt = split not in NO_GROUND_TRUTH_SPLITS
        self.cm = ConfusionMatrix(table.n_cls, table.ignore_index)
        self.spent = dict.fromkeys(("input", "inference", "argmax", "metric", "write"), 0.0)
        self.done = 0

    def run(self, rows, progress) -> None:
        while True:
            t0 = time.perf_counter()
            row = next(rows, None)
            if row is None:
                break
            self.spent["input"] += time.perf_counter() - t0
            self.image(row)
            if progress is not None:
                running = compute_metrics(self.cm.matrix, self.table)["mIoU"] if self.has_gt else None
                progress.update(1, postfix=f"mIoU so far {100 * running:.2f}" if running is not None else None)
        if self.writer is not None:
            t0 = time.perf_counter()
            self.writer.commit(images=self.done)
            self.spent["write"] += time.perf_counter() - t0

    def image(self, row: dict) -> None:
        e, label = self.e, row["label"]
        t1 = time.perf_counter()
        # Logits are resized straight to the label size (out_size), as the official evaluation does.
        pred = sliding_window_predict(self.net, row["image"], self.table.n_cls, e.window_size, e.window_stride,
                                      batch_windows=e.batch_windows, flip=e.flip, scales=tuple(e.scales),
                                      out_size=label.shape)
        t2 = time.perf_counter()
        if self.has_gt:
            try:
                self.cm.update(label, pred)
            except ValueError as err:
                raise EvalError(f"{self.split_dir}: image {row['id']}: {err}") from None
        t3 = time.perf_counter()
        if self.writer is not None:
            self.writer.add(str(row["city"]), str(row["id"]), pred, row["raw"])
        t4 = time.perf_counter()
        for key, dt in zip(("inference", "metric", "write"), (t2 - t1, t3 - t2, t4 - t3)):
            self.spent[key] += dt
        self.done += 1


METRICS_TOOL = "segmenter-mindspore eval"  # the `written_by` of every metrics file: our proof of ownership
_MAX_METRICS_BYTES = 1 << 22  # well above a 255-class metrics file with its confusion counts


def write_metrics_json(metrics: dict, path) -> None:
    """Write the metrics dict atomically (temp file + rename): never a half-written file."""
    write_text_atomic(path, json.dumps({"written_by": METRICS_TOOL, **metrics}, indent=2) + "\n")


def why_not_metrics_file(path) -> str | None:
    """Why an existing `path` may not be replaced by `eval --json`: only an earlier metrics file of
    eval's (its `written_by`) is; None if it may (or does not exist)."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return None
    try:
        with open(path, "rb") as fh:
            doc = json.loads(fh.read(_MAX_METRICS_BYTES + 1)) if path.stat().st_size <= _MAX_METRICS_BYTES else None
    except (OSError, ValueError):
        doc = None
    if path.is_symlink() or not isinstance(doc, dict) or doc.get("written_by") != METRICS_TOOL:
        return "exists and is not an earlier eval --json file (move it, or name another file)"
    return None

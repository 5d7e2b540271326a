"""`train`: the training run — data per epoch, the step, logging, validation, checkpoints, resume.

Layout of RUN (written by rank 0 only):
    config.yaml            the resolved config the run uses (resume checks against it)
    metrics.jsonl          one JSON record per log interval / validation / skipped step
    curves.png             loss, lr and validation mIoU against the step
    checkpoints/step_NNNNNNN.ckpt (+ .yaml)   the last `train.keep_checkpoints`
    checkpoints/best.ckpt (+ .yaml)           best validation mIoU so far

Data order: epoch e reads `train_dataset(..., epoch_seed=e)`; a run resumed at step s
rebuilds epoch s // steps_per_epoch and skips its first s % steps_per_epoch batches, so it
sees the same batches, with the same augmentation, as an uninterrupted run. The learning rate
is `lr_at(step)`; a skipped (overflowing) step still consumes its batch and its lr position.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from configs.schema import Config, ConfigError, config_to_dict, load_config, save_config
from prep.atomic import write_text_atomic
from train.checkpoint import (BEST, TrainError, list_step_checkpoints, read_checkpoint, restore, rotate,
                              save_training_checkpoint, step_checkpoint_name)
from train.schedule import lr_at

# Keys that may differ between a run's config.yaml and the config given with --resume:
# they change logging, checkpoint cadence or evaluation, not the optimization itself.
RESUME_MUTABLE = ("train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.log_every",
                  "data.num_parallel_workers", "data.val_max_images", "eval.")


@dataclass
class TrainResult:
    steps: int
    last_checkpoint: str | None
    best_miou: float | None
    seconds: float
    rank: int = 0
    group_size: int = 1
    losses: list = field(default_factory=list)  # (step, loss) of every step this session ran
    batch_digests: list = field(default_factory=list)  # filled when record_batches=True
    net: object = None


def init_distributed(cfg: Config) -> tuple[int, int]:
    """(rank, group_size); under msrun (MS_WORKER_NUM set) joins the group for data parallel."""
    if int(os.environ.get("MS_WORKER_NUM", "1")) <= 1:
        return 0, 1
    import mindspore as ms
    from mindspore.communication import get_group_size, get_rank, init

    init()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True)
    return get_rank(), get_group_size()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def check_resume_config(saved: Config, given: Config, saved_path: Path) -> None:
    a, b = _flat(config_to_dict(saved)), _flat(config_to_dict(given))
    for key in sorted(a):
        if a[key] != b.get(key) and not any(key == m or (m.endswith(".") and key.startswith(m))
                                            for m in RESUME_MUTABLE):
            raise TrainError(f"{saved_path}: the run was started with {key}={a[key]!r}, the given config has "
                             f"{b.get(key)!r}; resume with the run's own config (omit --config) or start a new --out")


def read_metrics(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Run:
    """RUN's files; every write is a no-op on ranks other than 0."""

    def __init__(self, root: Path, writer: bool):
        self.root = Path(root)
        self.ckpt_dir = self.root / "checkpoints"
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.curves = self.root / "curves.png"
        self.writer = writer

    def start(self, cfg: Config, resume_step: int | None) -> None:
        if not self.writer:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            save_config(cfg, self.config)
            write_text_atomic(self.metrics, "")
        else:
            # Records past the resumed step belong to the interrupted tail; the rerun writes them again.
            kept = [r for r in read_metrics(self.metrics) if r.get("step", 0) <= resume_step]
            write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        if self.writer:
            with open(self.metrics, "a") as fh:
                fh.write(json.dumps(record) + "\n")

    def draw(self) -> None:
        if self.writer:
            from train.curves import draw_curves

            draw_curves(read_metrics(self.metrics), self.curves)


def _prepare(cfg: Config | None, run: Run, resume: bool, given_config: bool):
    """Check RUN before anything is written to it; return (config to use, checkpoint or None).

    `cfg` may be None only with `resume` (then RUN/config.yaml is used)."""
    existing = list_step_checkpoints(run.ckpt_dir)
    if not resume:
        if existing or (run.ckpt_dir / BEST).exists():
            raise TrainError(f"{run.ckpt_dir}: the run already has checkpoints; pass --resume to continue it "
                             "or choose a new --out")
        if run.root.exists() and not run.root.is_dir():
            raise TrainError(f"{run.root}: exists and is not a folder")
        # Every rank checks before the collective init, so no rank has written anything yet.
        held = sorted(p.name for p in run.root.iterdir()) if run.root.is_dir() else []
        if held:
            raise TrainError(f"{run.root}: not empty ({', '.join(held[:5])}{' ...' if len(held) > 5 else ''}); "
                             "a new run needs a new or empty folder, and nothing in it is overwritten")
        return cfg, None
    if not existing:
        raise TrainError(f"{run.ckpt_dir}: no checkpoint to resume from (step_*.ckpt); "
                         "drop --resume to start a new run")
    if not run.config.is_file():
        raise TrainError(f"{run.config}: missing; cannot tell which config the run used")
    try:
        saved = load_config(run.config)
    except ConfigError as err:
        raise TrainError(str(err)) from None
    if given_config:
        check_resume_config(saved, cfg, run.config)
    else:
        cfg = saved
    return cfg, existing[-1][1]


def initial_net(cfg: Config, log):
    """A fresh network, or one initialized from `model.pretrained` (converted .ckpt or Google ViT .npz)."""
    from model.checkpoint import load_model
    from model.convert import init_from_npz
    from model.segmenter import build_segmenter

    source = cfg.model.pretrained
    if not source:
        return build_segmenter(cfg.model)
    if not Path(source).is_file():
        raise TrainError(f"model.pretrained: {source}: file not found")
    try:
        net = init_from_npz(source, cfg) if source.endswith(".npz") else load_model(source, cfg)
    except ValueError as err:  # CheckpointError / ConfigError name the file and the mismatch
        raise TrainError(f"model.pretrained: {err}") from None
    log(f"initialized from {source}")
    return net


def train(cfg: Config, data_root, out_dir, resume: bool = False, given_config: bool = True,
          record_batches: bool = False, log=print) -> TrainResult:
    """Run (or resume) training as configured; see the module docstring for RUN's layout."""
    from mindspore import nn

    from mindrecords.train_pipeline import read_batches, train_dataset
    from model.runtime import setup_context
    from prep.progress import Progress
    from train.loss import SegCrossEntropy
    from train.optim import build_optimizer, optimizer_state
    from train.step import apply_amp, build_loss_scaler, build_train_step, lr_tensor

    start_time = time.perf_counter()
    run = Run(out_dir, writer=False)
    cfg, resume_from = _prepare(cfg, run, resume, given_config)
    setup_context(cfg.device_target, cfg.mode, cfg.seed)
    rank, group_size = init_distributed(cfg)
    run.writer = rank == 0
    t = cfg.train

    # Building epoch 0's dataset validates the shards, the split and the batch/rank fit.
    steps_per_epoch = train_dataset(cfg, data_root, rank, group_size, epoch_seed=0).get_dataset_size()
    total = t.iterations if t.iterations > 0 else t.epochs * steps_per_epoch
    if total <= 0:
        raise TrainError("train.epochs / train.iterations: the run has no steps")

    entries = read_checkpoint(resume_from) if resume_from is not None else None
    if entries is not None:
        from model.segmenter import build_segmenter

        net = build_segmenter(cfg.model)  # every weight comes from the checkpoint
    else:
        net = initial_net(cfg, log)
    net = apply_amp(net, t.amp_level)
    optimizer = build_optimizer(net, t.optimizer)
    opt_params = optimizer_state(optimizer, net)
    scaler = build_loss_scaler(t)
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=group_size) \
        if group_size > 1 else None
    step_fn = build_train_step(cfg, net, SegCrossEntropy(cfg.data.ignore_index), optimizer, scaler, reducer, rank)

    step, best_miou, best_step = 0, -1.0, -1
    if entries is not None:
        state = restore(entries, resume_from, net, opt_params, scaler)
        if state["steps_per_epoch"] != steps_per_epoch or state["group_size"] != group_size:
            raise TrainError(f"{resume_from}: the run had {state['steps_per_epoch']} steps per epoch on "
                             f"{state['group_size']} rank(s), now {steps_per_epoch} on {group_size}: the data or the "
                             "number of workers changed, so the data order cannot be continued")
        step, best_miou, best_step = int(state["step"]), float(state["best_miou"]), int(state["best_step"])
        log(f"resumed from {resume_from} at step {step}/{total}")
    run.start(cfg, step if entries is not None else None)

    global_batch = t.batch_size * group_size
    log(f"rank {rank}/{group_size}: {steps_per_epoch} steps/epoch of batch {t.batch_size} "
        f"(global batch {global_batch}), {total} steps, amp {t.amp_level}, {cfg.mode} mode, "
        f"{t.step_graph.replace('_', '-')} step graph")

    def checkpoint(path: Path) -> None:
        if run.writer:
            save_training_checkpoint(path, net, cfg, opt_params, scaler, {
                "step": step, "epoch": step // steps_per_epoch, "steps_per_epoch": steps_per_epoch,
                "group_size": group_size, "best_miou": float(best_miou), "best_step": best_step})

    def validate() -> None:
        nonlocal best_miou, best_step
        if not run.writer:
            return
        from evaluate.evaluator import evaluate_split

        metrics = evaluate_split(net, cfg, data_root, cfg.data.val_split, max_images=cfg.data.val_max_images,
                                 show_progress=False)
        miou = metrics["mIoU"]
        run.log({"type": "val", "step": step, "mIoU": miou, "pixel_accuracy": metrics.get("pixel_accuracy"),
                 "per_class": metrics.get("per_class"), "images": metrics.get("images"),
                 "seconds": metrics.get("seconds")})
        log(f"step {step}: val mIoU {100 * miou:.2f} on {metrics.get('images')} images")
        if miou is not None and miou > best_miou:
            best_miou, best_step = miou, step
            checkpoint(run.ckpt_dir / BEST)
        run.draw()

    result = TrainResult(steps=total, last_checkpoint=None, best_miou=None, seconds=0.0, rank=rank,
                         group_size=group_size)
    progress = Progress(total - step, "train", "step") if run.writer else None
    window, window_time, nonfinite = [], 0.0, 0
    while step < total:
        epoch, skip = divmod(step, steps_per_epoch)
        data = train_dataset(cfg, data_root, rank, group_size, epoch_seed=epoch)
        batches = read_batches(data, data_root, cfg.data.train_split, f"epoch {epoch}")
        epoch_start = step
        for index, (image, label, valid) in enumerate(batches):
            if index < skip:
                continue  # consumed before the interruption: same augmentation stream, not trained again
            if step >= total:
                break
            lr = lr_at(step, total, t.optimizer.lr, t.schedule)
            t0 = time.perf_counter()
            loss_t, finite_t, scale_t = step_fn(image, label, valid, lr_tensor(lr), step)
            loss, finite, scale = float(loss_t.asnumpy()), bool(finite_t.asnumpy()), float(scale_t.asnumpy())
            dt = time.perf_counter() - t0
            step += 1
            window_time += dt
            result.losses.append((step, loss))
            if record_batches:
                result.batch_digests.append(hashlib.sha1(label.asnumpy().tobytes()).hexdigest())
            if not math.isfinite(loss):
                nonfinite += 1
                if nonfinite >= t.nonfinite_patience:
                    raise TrainError(
                        f"step {step}: the loss is {loss} for {nonfinite} consecutive steps even after the loss "
                        f"scaler lowered the scale to {float(scaler.scale_value.asnumpy()):g}; stopping "
                        f"(last checkpoint: {result.last_checkpoint or 'none'}). Lower train.optimizer.lr, "
                        "use train.amp_level=O0 or check the data")
            else:
                nonfinite = 0
                window.append(loss)
            if not finite:
                log(f"step {step}: gradients overflowed at loss scale {scale:g}; update skipped")
                run.log({"type": "skip", "step": step, "loss_scale": scale, "loss": loss if math.isfinite(loss) else None})
            if progress is not None:
                progress.update(1, postfix=f"step {step}/{total} loss {loss:.4f} lr {lr:.3e} "
                                           f"{dt * 1000:.0f} ms/step {global_batch / dt:.2f} samples/s")
            if step % t.log_every == 0 or step == total:
                run.log({"type": "train", "step": step, "epoch": epoch, "loss": float(np.mean(window)) if window else None,
                         "lr": lr, "loss_scale": scale, "step_time": window_time / max(len(window), 1),
                         "samples_per_s": global_batch * max(len(window), 1) / max(window_time, 1e-9)})
                window, window_time = [], 0.0
            last = step == total
            if t.eval_every > 0 and (step % t.eval_every == 0 or last):
                validate()
            if step % t.checkpoint_every == 0 or last:
                path = run.ckpt_dir / step_checkpoint_name(step)
                checkpoint(path)
                result.last_checkpoint = str(path)
                if run.writer:
                    rotate(run.ckpt_dir, t.keep_checkpoints)
                    run.draw()
        if step == epoch_start:
            raise TrainError(f"{data_root}/{cfg.data.train_split}: epoch {epoch} yielded no batch after skipping {skip}")
    if progress is not None:
        progress.close()
    if result.last_checkpoint is None and resume_from is not None:
        result.last_checkpoint = str(resume_from)  # resumed a finished run: nothing left to do
        log(f"the run had already finished: {resume_from} is at step {step}/{total}")
    result.seconds = time.perf_counter() - start_time
    result.best_miou = best_miou if best_miou >= 0 else None
    result.net = net
    return result

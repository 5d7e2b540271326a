"""`train`: the training loop — data per epoch, the step, logging, validation, checkpoints.

Data order: epoch e reads `train_dataset(..., epoch_seed=e)`; a step (one update) takes
`train.accumulate` batches. A run resumed at step s rebuilds epoch s // steps_per_epoch and skips
the batches of its first s % steps_per_epoch steps, so it sees the same batches, with the same
augmentation, as an uninterrupted run. The learning rate is `lr_at(step)`; a skipped
(overflowing) step still consumes its batches and its lr position. A resume that extends the run
(train.iterations / train.epochs) recomputes the schedule over the new length from the resumed step.
SIGINT/SIGTERM end the run after the step in flight with that step's checkpoint (`train.stop`).
RUN's layout and the checks before a run starts are in `train.run_folder`.
"""
from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from base.device import init_distributed, setup_context
from base.class_table import check_classes
from base.progress import Progress
from evaluate.cost import check_split
from mindrecords.manifest import MindRecordError, data_classes, data_eval_protocol, split_shard_files
from mindrecords.reader import read_batches
from pipelines.train_pipeline import train_dataset
from settings.schema import Config, resolved_step_graph, with_eval_protocol
from train.checkpoint import BEST, TrainError, TrainingCheckpoint, read_checkpoint, restore, rotate, \
    save_training_checkpoint, step_checkpoint_name
from train.events import TrainEvents
from train.initial_weights import check_initial_weights, initial_net
from train.run_folder import RESUME_LENGTH, Run, config_differences
from train.schedule import lr_at
from train.stop import StopRequest
from train.validation import validate


def _run_length(t, steps_per_epoch: int) -> int:
    """Steps of a run: train.iterations if set, else train.epochs x steps per epoch."""
    return t.iterations if t.iterations > 0 else t.epochs * steps_per_epoch


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
    stopped_by: int | None = None  # the signal that ended the run before its last step
    finished_before: bool = False  # resumed a run that had already finished: nothing trained
    at_step: int = 0  # the step the run ended at
    length: tuple = ()  # (the key that sets the run's length, its value), e.g. ("train.iterations", 200)


def with_data(cfg: Config, data_root, source="the config") -> Config:
    """`cfg` with the classes and eval protocol of the data's train split: a null model.n_cls
    takes the data's, any other count must equal it, and data.ignore_index the data's ignore
    index (UserError naming both and `source`, the config file); null eval keys take the
    protocol's, so the run's config and checkpoints hold the numbers validation used."""
    table = data_classes(data_root, cfg.data.train_split)
    where = f"{data_root}/{cfg.data.train_split}"
    n_cls = check_classes(cfg.model.n_cls, table, source, where)
    if cfg.data.ignore_index != table.ignore_index:
        raise TrainError(f"data.ignore_index is {cfg.data.ignore_index} in {source}, the data at {where} marks "
                         f"unlabelled pixels {table.ignore_index} ({table.dataset}); set data.ignore_index to "
                         f"{table.ignore_index}")
    cfg = copy.deepcopy(cfg)
    cfg.model.n_cls = n_cls
    return with_eval_protocol(cfg, data_eval_protocol(data_root, cfg.data.train_split), where)


def check_data(cfg: Config, data_root, log) -> None:
    """What would otherwise fail hours into the run: the classes the model predicts against the
    data's, and the val split periodic validation reads (built, every record size within this
    machine's memory at the eval settings; `log` gets a warning for a size that takes long)."""
    with_data(cfg, data_root)
    if cfg.train.eval_every > 0:
        try:
            split_shard_files(data_root, cfg.data.val_split)
        except MindRecordError as err:
            raise TrainError(f"{err} (train.eval_every={cfg.train.eval_every} validates on data.val_split; "
                             "build it or set train.eval_every=0)") from None
        check_split(cfg, data_root, cfg.data.val_split, cfg.data.val_max_images, log)


def _build_step(cfg: Config, net, group_size: int, rank: int):
    """(step function, optimizer state to checkpoint, loss scaler) for `net`, precision applied."""
    from mindspore import nn

    from train.loss import SegCrossEntropy
    from train.loss_scale import build_loss_scaler
    from train.optim import build_optimizer, optimizer_state
    from train.precision import apply_amp
    from train.step import TrainStepFn

    t = cfg.train
    net = apply_amp(net, t.amp_level)
    optimizer = build_optimizer(net, t.optimizer)
    scaler = build_loss_scaler(t)
    reducer = nn.DistributedGradReducer(optimizer.parameters, mean=True, degree=group_size) \
        if group_size > 1 else None
    step_fn = TrainStepFn(cfg, net, SegCrossEntropy(cfg.data.ignore_index), optimizer, scaler, reducer, rank)
    return step_fn, optimizer_state(optimizer, net), scaler


class _Session:
    """One process's part of a run, from the first step it takes to the last."""

    def __init__(self, cfg: Config, data_root, run: Run, resume_from: Path | None, rank: int, group_size: int, log):
        self.cfg, self.data_root, self.run, self.log = cfg, data_root, run, log
        self.rank, self.group_size = rank, group_size
        self.resume_from = resume_from
        checkpoint = read_checkpoint(resume_from) if resume_from is not None else None
        if checkpoint is not None:
            run.check_unchanged(checkpoint, log)
        t = cfg.train
        check_data(cfg, data_root, log)
        # Every checkpoint carries the data's classes and eval protocol (weights/checkpoint.py).
        split = cfg.data.train_split
        self.dataset = (data_classes(data_root, split), data_eval_protocol(data_root, split))
        # Building epoch 0's dataset validates the shards, the split and the batch/rank fit.
        batches = train_dataset(cfg, data_root, rank, group_size, epoch_seed=0).get_dataset_size()
        # An update takes train.accumulate batches; an epoch's last incomplete group is dropped.
        self.steps_per_epoch = batches // t.accumulate
        if self.steps_per_epoch == 0:
            raise TrainError(f"train.accumulate: {batches} batch(es) per epoch and rank cannot make one update of "
                             f"{t.accumulate} micro-batches")
        self.total = _run_length(t, self.steps_per_epoch)
        if self.total <= 0:
            raise TrainError("train.epochs / train.iterations: the run has no steps")
        if checkpoint is not None:
            from model.segmenter import build_segmenter

            net = build_segmenter(cfg.model)  # every weight comes from the checkpoint
        else:
            net = initial_net(cfg, log)
        self.net = net
        self.step_fn, self.opt_params, self.scaler = _build_step(cfg, net, group_size, rank)
        self.step, self.best_miou, self.best_step = 0, -1.0, -1
        if checkpoint is not None:
            self._restore(checkpoint)
        run.start(cfg, self.step if checkpoint is not None else None, log)
        self.result = TrainResult(steps=self.total, last_checkpoint=None, best_miou=None, seconds=0.0, rank=rank,
                                  group_size=group_size)
        self.window, self.window_time, self.nonfinite = [], 0.0, 0
        self.events = TrainEvents(run, cfg, self.step)

    def _restore(self, checkpoint: TrainingCheckpoint) -> None:
        state = restore(checkpoint, self.net, self.opt_params, self.scaler)
        if state["steps_per_epoch"] != self.steps_per_epoch or state["group_size"] != self.group_size:
            raise TrainError(f"{self.resume_from}: the run had {state['steps_per_epoch']} steps per epoch on "
                             f"{state['group_size']} rank(s), now {self.steps_per_epoch} on {self.group_size}: the "
                             "data or the number of workers changed, so the data order cannot be continued")
        self.step, self.best_miou, self.best_step = state["step"], state["best_miou"], state["best_step"]
        self.log(f"resumed from {self.resume_from} at step {self.step}/{self.total}")
        if checkpoint.config is not None:
            self._check_length(checkpoint.config)

    def _check_length(self, saved: Config) -> None:
        """A resume that changed the run's length (RESUME_LENGTH) from `saved`, the checkpoint's
        config: it must move the end beyond the resumed step; the schedule follows the new length."""
        t = self.cfg.train
        changed = [key for key, _, _ in config_differences(saved, self.cfg) if key in RESUME_LENGTH]
        if not changed:
            return
        was = _run_length(saved.train, self.steps_per_epoch)
        setting = "train.iterations" if t.iterations > 0 else "train.epochs"
        if was == self.total:
            raise TrainError(f"{', '.join(changed)}: the run stays {self.total} steps long ({setting} decides its "
                             f"length); to extend it, --set {setting}=N with N beyond the current value")
        if self.total <= self.step:
            raise TrainError(f"{setting}: the run would end at step {self.total}, but {self.resume_from} is at step "
                             f"{self.step} already; give a length beyond step {self.step}")
        lr_was, lr_now = (lr_at(self.step, total, t.optimizer.lr, t.schedule) for total in (was, self.total))
        self.log(f"run length {was} -> {self.total} steps ({setting}): the {t.schedule.name} schedule is recomputed "
                 f"over {self.total} steps from step {self.step} (lr there {lr_was:.3e} -> {lr_now:.3e})")

    @property
    def global_batch(self) -> int:
        return self.cfg.train.batch_size * self.group_size * self.cfg.train.accumulate

    def checkpoint(self, path: Path) -> None:
        if self.run.writer:
            save_training_checkpoint(path, self.net, self.cfg, self.opt_params, self.scaler, {
                "step": self.step, "epoch": self.step // self.steps_per_epoch,
                "steps_per_epoch": self.steps_per_epoch, "group_size": self.group_size,
                "best_miou": float(self.best_miou), "best_step": self.best_step}, self.dataset)

    def _global_batch_note(self) -> str | None:
        """What to change when the run's global batch is not the recipe's (train.global_batch)."""
        t, want = self.cfg.train, self.cfg.train.global_batch
        if want is None or want == self.global_batch:
            return None
        fixes = []
        if want % (t.batch_size * self.group_size) == 0:
            fixes.append(f"set train.accumulate={want // (t.batch_size * self.group_size)}")
        if want % (t.batch_size * t.accumulate) == 0:
            fixes.append(f"run {want // (t.batch_size * t.accumulate)} ranks with msrun")
        fix = " or ".join(fixes) or f"make train.batch_size x ranks x train.accumulate equal {want}"
        return (f"note: global batch {self.global_batch} ({self.group_size} rank(s) x batch {t.batch_size} x accumulate "
                f"{t.accumulate}) differs from the recipe's train.global_batch {want}: {fix} (docs/training.md)")

    def run_all(self, record_batches: bool) -> TrainResult:
        self.progress = None
        # From before the run's first line: once it is printed, a signal is a stop request.
        with StopRequest(self.say) as self.stop:
            return self._run_all(record_batches)

    def _run_all(self, record_batches: bool) -> TrainResult:
        t = self.cfg.train
        graph = resolved_step_graph(self.cfg) + (" + recompute" if t.recompute else "")
        self.log(f"rank {self.rank}/{self.group_size}: {self.steps_per_epoch} steps/epoch of {t.accumulate} x batch "
                 f"{t.batch_size} (global batch {self.global_batch}), {self.total} steps, amp {t.amp_level}, "
                 f"{self.cfg.mode} mode on {self.cfg.device_target}, {graph.replace('_', '-')} step graph")
        note = self._global_batch_note()
        if note and self.run.writer:
            self.log(note)
        if self.step >= self.total:  # resumed a finished run: nothing left to do
            self.result.last_checkpoint, self.result.finished_before = str(self.resume_from), True
        self.progress = Progress(self.total - self.step, "train", "step") if self.run.writer else None
        while self.step < self.total and self.result.stopped_by is None:
            epoch, skip = divmod(self.step, self.steps_per_epoch)
            if not self._epoch(epoch, skip, record_batches):
                raise TrainError(f"{self.data_root}/{self.cfg.data.train_split}: epoch {epoch} yielded no batch "
                                 f"after skipping {skip}")
        if self.progress is not None:
            self.progress.close()
        self.events.close()
        self.result.at_step = self.step
        self.result.length = ("train.iterations", t.iterations) if t.iterations > 0 else ("train.epochs", t.epochs)
        self.result.best_miou = self.best_miou if self.best_miou >= 0 else None
        self.result.net = self.net
        return self.result

    def say(self, line: str) -> None:
        """`log` a line; on a terminal the step bar's line is cleared first (it is redrawn at the next step)."""
        if self.progress is not None and self.progress.tty:
            self.progress.stream.write("\r\033[K")
            self.progress.stream.flush()
        self.log(line)

    def _epoch(self, epoch: int, skip: int, record_batches: bool) -> bool:
        """Train on epoch `epoch` from batch `skip` on; False if it yielded no batch to train."""
        data = train_dataset(self.cfg, self.data_root, self.rank, self.group_size, epoch_seed=epoch)
        batches = read_batches(data, self.data_root, self.cfg.data.train_split, f"epoch {epoch}")
        start, k = self.step, self.cfg.train.accumulate
        group = []
        for index, batch in enumerate(batches):
            if index < skip * k:
                continue  # consumed before the interruption: same augmentation stream, not trained again
            if self.step >= self.total or index >= self.steps_per_epoch * k:
                break
            group.append(batch)
            if len(group) < k:
                continue
            lr = lr_at(self.step, self.total, self.cfg.train.optimizer.lr, self.cfg.train.schedule)
            loss, finite, scale, seconds = self._take_step(group, lr)
            if record_batches:
                self.result.batch_digests.extend(hashlib.sha1(label.asnumpy().tobytes()).hexdigest()
                                                 for _, label, _ in group)
            group = []
            self._record(epoch, loss, finite, scale, lr, seconds)
            signum = self.stop.agreed(self.group_size)  # a collective: every rank, every step
            if signum is not None and self.step < self.total:
                self._stop(signum)
                break
        return self.step > start

    def _stop(self, signum: int) -> None:
        """End the run after this step on `signum`: this step's ordinary checkpoint (written now if
        the cadence did not), from which a resume continues exactly as if never stopped."""
        path = self.run.ckpt_dir / step_checkpoint_name(self.step)
        if self.result.last_checkpoint != str(path):
            self._write_step_checkpoint(path)
        self.result.stopped_by = signum

    def _take_step(self, group: list, lr: float):
        from train.step import lr_tensor

        t0 = time.perf_counter()
        loss_t, finite_t, scale_t = self.step_fn(group, lr_tensor(lr), self.step)
        loss, finite, scale = float(loss_t.asnumpy()), bool(finite_t.asnumpy()), float(scale_t.asnumpy())
        seconds = time.perf_counter() - t0
        self.step += 1
        self.result.losses.append((self.step, loss))
        return loss, finite, scale, seconds

    def _check_finite(self, loss: float) -> None:
        if math.isfinite(loss):
            self.nonfinite = 0
            self.window.append(loss)
            return
        self.nonfinite += 1
        if self.nonfinite >= self.cfg.train.nonfinite_patience:
            raise TrainError(
                f"step {self.step}: the loss is {loss} for {self.nonfinite} consecutive steps even after the loss "
                f"scaler lowered the scale to {float(self.scaler.scale_value.asnumpy()):g}; stopping "
                f"(last checkpoint: {self.result.last_checkpoint or 'none'}). Lower train.optimizer.lr, "
                "use train.amp_level=O0 or check the data")

    def _record(self, epoch: int, loss: float, finite: bool, scale: float, lr: float, seconds: float) -> None:
        """Log the step just taken; validate and checkpoint when due."""
        t, step = self.cfg.train, self.step
        self.window_time += seconds
        self._check_finite(loss)
        if not finite:
            self.say(f"step {step}: gradients overflowed at loss scale {scale:g}; update skipped")
            self.run.log({"type": "skip", "step": step, "loss_scale": scale,
                          "loss": loss if math.isfinite(loss) else None})
        if self.progress is not None:
            self.progress.update(1, postfix=f"step {step}/{self.total} loss {loss:.4f} lr {lr:.3e} "
                                       f"{seconds * 1000:.0f} ms/step {self.global_batch / seconds:.2f} samples/s")
        last = step == self.total
        if step % t.log_every == 0 or last:
            n = max(len(self.window), 1)
            record = {"type": "train", "step": step, "epoch": epoch,
                      "loss": float(np.mean(self.window)) if self.window else None, "lr": lr,
                      "loss_scale": scale, "step_time": self.window_time / n,
                      "samples_per_s": self.global_batch * n / max(self.window_time, 1e-9)}
            self.run.log(record)
            self.events.train(record)
            self.window, self.window_time = [], 0.0
        # The step's checkpoint comes first: a validation that fails (or is killed) cannot cost it.
        path = None
        if step % t.checkpoint_every == 0 or last:
            path = self.run.ckpt_dir / step_checkpoint_name(step)
            self._write_step_checkpoint(path)
        if t.eval_every > 0 and (step % t.eval_every == 0 or last):
            self._validate(path)

    def _write_step_checkpoint(self, path: Path) -> None:
        self.checkpoint(path)
        self.result.last_checkpoint = str(path)
        if self.run.writer:
            rotate(self.run.ckpt_dir, self.cfg.train.keep_checkpoints)
            self.run.draw()

    def _validate(self, step_checkpoint: Path | None) -> None:
        if self.progress is not None and self.progress.tty:
            self.progress.stream.write("\n")  # the step bar's line stays; validation's progress goes below it
        miou = validate(self.net, self.cfg, self.data_root, self.step, self.run, self.say, self.rank, self.group_size,
                        self.events)
        if miou is not None and miou > self.best_miou:
            self.best_miou, self.best_step = miou, self.step
            self.checkpoint(self.run.ckpt_dir / BEST)
            if step_checkpoint is not None:  # written before this score: a resume must know the new best
                self.checkpoint(step_checkpoint)
        self.run.draw()


def train(cfg: Config, data_root, out_dir, resume: bool = False, given_config: bool = True,
          record_batches: bool = False, log=print, config_source="the config", overrides=(),
          device: str | None = None) -> TrainResult:
    """Run (or resume) training as configured; see `train.run_folder` for RUN's layout.
    `config_source` names the config in a refusal; `overrides` (KEY=VALUE) apply to RUN/config.yaml
    when resuming without a config (e.g. a longer train.iterations extends the run). A run ended by
    SIGINT/SIGTERM returns with `stopped_by` set. `device` (--device) replaces the config's
    device_target for this invocation, new run or resume."""
    start_time = time.perf_counter()
    if cfg is not None:  # before RUN exists: a config the data refuses leaves nothing behind
        cfg = with_data(cfg, data_root, config_source)
    if not resume:
        check_initial_weights(cfg)
    run = Run(out_dir, writer=False)
    with run.hold():  # from before the first check of RUN to the last write
        cfg, resume_from = run.prepare(cfg, resume, given_config, log, overrides)
        if device is not None:  # where it runs, not what it computes: RUN/config.yaml keeps its own
            cfg.device_target = device
        setup_context(cfg.device_target, cfg.mode, cfg.seed)
        rank, group_size = init_distributed()
        run.writer = rank == 0
        result = _Session(cfg, data_root, run, resume_from, rank, group_size, log).run_all(record_batches)
    result.seconds = time.perf_counter() - start_time
    return result

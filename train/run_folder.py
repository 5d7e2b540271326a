"""RUN, the training run's folder: its files, its lock, the checks before anything is written, resume.

Layout of RUN (written by rank 0 only):
    config.yaml            the resolved config the run started with (a resume checks it is unchanged)
    metrics.jsonl          one JSON record per log interval / validation / skipped step
    curves.png             loss, lr and validation mIoU against the step
    tensorboard/           TensorBoard event files (`train.events`; train.tensorboard: false turns them off)
    checkpoints/step_NNNNNNN.ckpt (+ .yaml)   the last `train.keep_checkpoints`
    checkpoints/best.ckpt (+ .yaml)           best validation mIoU so far
    .segmenter.lock        held by the run's processes while it runs (`base.locks`)
"""
from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from pathlib import Path

from base.atomic import write_text_atomic
from base.locks import LOCK_NAME, folder_lock
from settings.files import apply_overrides, load_config, save_config
from settings.schema import Config, ConfigError, config_to_dict
from train.checkpoint import BEST, TrainError, TrainingCheckpoint, list_step_checkpoints

# Keys that may differ between a run's config.yaml and the config given with --resume: they
# change logging, checkpoint cadence or evaluation, not the optimization itself ...
RESUME_MUTABLE = ("train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.log_every",
                  "train.tensorboard", "data.num_parallel_workers", "data.val_max_images", "eval.")
# ... and the run's length: a resume may extend the run (the schedule is then recomputed over the
# new length from the resumed step, `train.loop`).
RESUME_LENGTH = ("train.iterations", "train.epochs")
# metrics.jsonl fields the curves plot: each a number or null.
PLOTTED = ("loss", "lr", "mIoU")


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_differences(a: Config, b: Config) -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) of every key whose values differ."""
    fa, fb = _flat(config_to_dict(a)), _flat(config_to_dict(b))
    return [(key, fa.get(key), fb.get(key)) for key in sorted(set(fa) | set(fb)) if fa.get(key) != fb.get(key)]


def _mutable(key: str) -> bool:
    """Whether a resume may change the dotted config `key` (RESUME_MUTABLE, RESUME_LENGTH)."""
    return key in RESUME_LENGTH or any(key == m or (m.endswith(".") and key.startswith(m)) for m in RESUME_MUTABLE)


def check_resume_config(saved: Config, given: Config, saved_path: Path, given_by: str) -> None:
    """`given` (from `given_by`: --config or --set) may differ from the run's config only in the
    keys a resume may change."""
    for key, was, now in config_differences(saved, given):
        if not _mutable(key):
            raise TrainError(f"{saved_path}: the run was started with {key}={was!r}, {given_by} has {now!r}; a "
                             f"resume may change only the run's length ({', '.join(RESUME_LENGTH)}) and its logging, "
                             "checkpoint and evaluation settings: resume with the run's own config or start a new --out")


def _record(line: bytes) -> dict:
    """One metrics.jsonl line as a record; ValueError saying what is wrong with it."""
    record = json.loads(line.decode("utf-8"))
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    step = record.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"'step' must be a non-negative integer, got {step!r}")
    if not isinstance(record.get("type"), str):
        raise ValueError(f"'type' must be a string, got {record.get('type')!r}")
    for key in PLOTTED:
        value = record.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{key!r} must be a number or null, got {value!r}")
    return record


def read_metrics(path: Path, log=None) -> list[dict]:
    """metrics.jsonl's records. With `log` (a resume), a last line cut short (no newline and not a
    record: a write interrupted by kill -9) is dropped, saying so; any other bad line is a
    TrainError naming the file and line."""
    if not path.is_file():
        return []
    records = []
    with open(path, "rb") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                records.append(_record(line))
            except ValueError as err:  # json's and unicode's errors are ValueErrors too
                if log is not None and not line.endswith(b"\n"):
                    log(f"{path}: line {number} was cut short by an interrupted write ({len(line)} bytes); dropped")
                    break
                raise TrainError(f"{path}: line {number}: not a metrics record: {err}") from None
    return records


def _make_folders(folder: Path) -> list[Path]:
    """Create `folder` and its missing parents; those this call created, outermost first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:  # another rank of the launch was first
            continue
        made.append(path)
    return made


class Run:
    """RUN's files; every write is a no-op on ranks other than 0."""

    def __init__(self, root: Path, writer: bool):
        self.root = Path(root)
        self.ckpt_dir = self.root / "checkpoints"
        self.config = self.root / "config.yaml"
        self.metrics = self.root / "metrics.jsonl"
        self.curves = self.root / "curves.png"
        self.writer = writer
        self.started: Config | None = None  # the config the run started with, set by `prepare`
        self.continued: Config | None = None  # a resume's config (--config or --set applied), set by `prepare`
        self.records: list[dict] = []  # metrics.jsonl's records when resuming, read by `prepare`

    @contextmanager
    def hold(self):
        """Create RUN if needed and hold its lock for the block: one run writes RUN at a time (the
        ranks of one msrun launch share the lock). If the block fails with nothing written in RUN,
        the folders this call created are removed again."""
        if self.root.exists() and not self.root.is_dir():
            raise TrainError(f"{self.root}: exists and is not a folder")
        made = _make_folders(self.root)
        with folder_lock(self.root, "train"):
            try:
                yield
            except BaseException:
                if made and not self._held():
                    (self.root / LOCK_NAME).unlink(missing_ok=True)  # while held: see base.locks
                    for folder in reversed(made):
                        try:
                            folder.rmdir()
                        except OSError:  # something appeared in it meanwhile: not ours to remove
                            break
                raise

    def _held(self) -> list[str]:
        """The names in RUN, its lock file excepted."""
        return sorted(name for name in os.listdir(self.root) if name != LOCK_NAME) if self.root.is_dir() else []

    def start(self, cfg: Config, resume_step: int | None, log) -> None:
        """Write config.yaml (a new run's `cfg`, or the config a resume changed: e.g. extended the
        run) and metrics.jsonl's kept records."""
        if not self.writer:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        if resume_step is None:
            save_config(cfg, self.config)
            write_text_atomic(self.metrics, "")
        else:
            changed = config_differences(self.started, self.continued)
            if changed:
                save_config(self.continued, self.config)
                log(f"{self.config}: rewritten for the resumed run (" + ", ".join(
                    f"{key} {json.dumps(was)} -> {json.dumps(now)}" for key, was, now in changed) + ")")
            # Records past the resumed step belong to the interrupted tail; the rerun writes them again.
            kept = [r for r in self.records if r["step"] <= resume_step]
            write_text_atomic(self.metrics, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        """Append one record; a failed write (a full disk) is undone, so the file stays whole."""
        if not self.writer:
            return
        data = memoryview((json.dumps(record) + "\n").encode())
        fd = os.open(self.metrics, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            size = os.fstat(fd).st_size
            try:
                while data:
                    data = data[os.write(fd, data):]
            except OSError as err:
                os.ftruncate(fd, size)
                raise OSError(err.errno, err.strerror, str(self.metrics)) from None
        finally:
            os.close(fd)

    def draw(self) -> None:
        if self.writer:
            from train.curves import draw_curves

            draw_curves(read_metrics(self.metrics), self.curves)

    def prepare(self, cfg: Config | None, resume: bool, given_config: bool, log, overrides=()):
        """Check RUN (held) before anything is written to it; return (config to use, the
        checkpoint to resume from or None).

        `cfg` may be None only with `resume` (then RUN/config.yaml is used, with `overrides`,
        --set's KEY=VALUE, applied)."""
        existing = list_step_checkpoints(self.ckpt_dir)
        if not resume:
            self._check_new(existing)
            self.started = cfg
            return cfg, None
        if not existing:
            raise TrainError(f"{self.ckpt_dir}: no checkpoint to resume from (step_*.ckpt); "
                             "drop --resume to start a new run")
        if not self.config.is_file():
            raise TrainError(f"{self.config}: missing; cannot tell which config the run used")
        try:
            self.started = load_config(self.config)
        except ConfigError as err:
            raise TrainError(str(err)) from None
        if not given_config:
            cfg = apply_overrides(self.started, list(overrides), "--set")
        check_resume_config(self.started, cfg, self.config, "--config" if given_config else "--set")
        self.continued = copy.deepcopy(cfg)  # what the run was told, before the invocation's own settings (--device)
        self.records = read_metrics(self.metrics, log)
        return cfg, existing[-1][1]

    def check_unchanged(self, checkpoint: TrainingCheckpoint, log) -> None:
        """RUN/config.yaml must still be the config the run started with: the one `checkpoint` was
        saved with, but for the keys a resume may change (RESUME_MUTABLE)."""
        if checkpoint.config is None:
            log(f"{checkpoint.path}: written before checkpoints held their config; "
                f"{self.config} cannot be checked against it")
            return
        changed = [d for d in config_differences(checkpoint.config, self.started) if not _mutable(d[0])]
        if changed:
            shown = ", ".join(f"{key} {json.dumps(was)} -> {json.dumps(now)}" for key, was, now in changed[:3])
            more = f" (+{len(changed) - 3} more)" if len(changed) > 3 else ""
            raise TrainError(f"{self.config}: changed since the run started ({shown}{more}); a resumed run keeps "
                             f"its config (recorded in {checkpoint.path}): put those values back, or start a new "
                             "run in another --out")

    def _check_new(self, existing: list) -> None:
        if existing or (self.ckpt_dir / BEST).exists():
            raise TrainError(f"{self.ckpt_dir}: the run already has checkpoints; pass --resume to continue it "
                             "or choose a new --out")
        held = self._held()
        if held:
            raise TrainError(f"{self.root}: not empty ({', '.join(held[:5])}{' ...' if len(held) > 5 else ''}); "
                             "a new run needs a new or empty folder, and nothing in it is overwritten")

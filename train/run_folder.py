"""RUN, the training run's folder: its files, the checks before anything is written, resume.

Layout of RUN (written by rank 0 only):
    config.yaml            the resolved config the run uses (resume checks against it)
    metrics.jsonl          one JSON record per log interval / validation / skipped step
    curves.png             loss, lr and validation mIoU against the step
    checkpoints/step_NNNNNNN.ckpt (+ .yaml)   the last `train.keep_checkpoints`
    checkpoints/best.ckpt (+ .yaml)           best validation mIoU so far
"""
from __future__ import annotations

import json
from pathlib import Path

from base.atomic import write_text_atomic
from settings.files import load_config, save_config
from settings.schema import Config, ConfigError, config_to_dict
from train.checkpoint import BEST, TrainError, list_step_checkpoints

# Keys that may differ between a run's config.yaml and the config given with --resume:
# they change logging, checkpoint cadence or evaluation, not the optimization itself.
RESUME_MUTABLE = ("train.checkpoint_every", "train.keep_checkpoints", "train.eval_every", "train.log_every",
                  "data.num_parallel_workers", "data.val_max_images", "eval.")


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

    def prepare(self, cfg: Config | None, resume: bool, given_config: bool):
        """Check RUN before anything is written to it; return (config to use, checkpoint or None).

        `cfg` may be None only with `resume` (then RUN/config.yaml is used)."""
        existing = list_step_checkpoints(self.ckpt_dir)
        if not resume:
            self._check_new(existing)
            return cfg, None
        if not existing:
            raise TrainError(f"{self.ckpt_dir}: no checkpoint to resume from (step_*.ckpt); "
                             "drop --resume to start a new run")
        if not self.config.is_file():
            raise TrainError(f"{self.config}: missing; cannot tell which config the run used")
        try:
            saved = load_config(self.config)
        except ConfigError as err:
            raise TrainError(str(err)) from None
        if given_config:
            check_resume_config(saved, cfg, self.config)
        else:
            cfg = saved
        return cfg, existing[-1][1]

    def _check_new(self, existing: list) -> None:
        if existing or (self.ckpt_dir / BEST).exists():
            raise TrainError(f"{self.ckpt_dir}: the run already has checkpoints; pass --resume to continue it "
                             "or choose a new --out")
        if self.root.exists() and not self.root.is_dir():
            raise TrainError(f"{self.root}: exists and is not a folder")
        # Every rank checks before the collective init, so no rank has written anything yet.
        held = sorted(p.name for p in self.root.iterdir()) if self.root.is_dir() else []
        if held:
            raise TrainError(f"{self.root}: not empty ({', '.join(held[:5])}{' ...' if len(held) > 5 else ''}); "
                             "a new run needs a new or empty folder, and nothing in it is overwritten")

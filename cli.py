"""Segmenter for MindSpore on Cityscapes: one command group, thin over the packages.

Each command parses options, calls into the packages (prep/, pipelines/, weights/, deploy/,
analysis/, train/, evaluate/) and prints results. Errors the user can fix are `base.errors.UserError`,
printed once by the group as `error: PATH: what` (exit 2).
"""
from __future__ import annotations


import click

from base.errors import UserError


class _Failure(click.ClickException):
    """What the user sees of an error: `error: PATH: what`, exit code 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True)


def os_error_message(err: OSError, path=None) -> str:
    """`PATH: reason` for an OSError (the file it names, else `path`)."""
    where = err.filename or path
    reason = err.strerror or str(err)
    return f"{where}: {reason}" if where and str(where) not in reason else reason


class _Commands(click.Group):
    """Every error reaches the user in one form, caught here once: a package's `UserError`, an
    option value click refuses, and an OSError no command anticipated (a read-only or full disk, a
    file where a folder should be) print `error: PATH: what` and exit 2, never a traceback. Every
    writer is atomic, so nothing half-written is left behind. SIGTERM ends a command as Ctrl-C
    does, so its `finally` blocks remove its temporary files (exit 143)."""

    def invoke(self, ctx):
        _end_on_sigterm()
        try:
            return super().invoke(ctx)
        except UserError as err:
            raise _Failure(str(err)) from None
        except click.BadParameter as err:
            raise _Failure(err.format_message()) from None
        except OSError as err:
            raise _Failure(os_error_message(err)) from None


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--verbose", is_flag=True,
              help="Show MindSpore's own warnings (quiet by default: GLOG_v=3; an exported GLOG_v is kept).")
def main(verbose):
    """Segmenter (ViT + Mask Transformer) on Cityscapes with MindSpore."""
    import os

    # Read by MindSpore when it is imported (every command imports it later, lazily); under msrun
    # each worker's log otherwise carries some 50 of its warnings.
    os.environ.setdefault("GLOG_v", "2" if verbose else "3")


def _parse_scales(ctx, param, value):
    import math

    if value is None:
        return None
    try:
        scales = [float(s) for s in value.split(",") if s.strip()]
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a comma-separated list of numbers") from None
    if not scales or not all(math.isfinite(s) and s > 0 for s in scales):
        raise click.BadParameter(f"{value!r}: give one or more positive factors, e.g. 0.5,1.0,1.5")
    return scales


@main.command("make-sample")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Folder for the Cityscapes-format tree.")
@click.option("--train", "n_train", default=24, show_default=True, type=click.IntRange(min=0), help="Train frames.")
@click.option("--val", "n_val", default=8, show_default=True, type=click.IntRange(min=0), help="Val frames.")
@click.option("--height", default=256, show_default=True, type=click.IntRange(min=32), help="Frame height.")
@click.option("--width", default=512, show_default=True, type=click.IntRange(min=32), help="Frame width.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed: same seed, same files.")
def make_sample_cmd(out, n_train, n_val, height, width, seed):
    """Write a small synthetic Cityscapes tree (images, polygons, labelIds/instanceIds/color)."""
    import time

    from base.progress import Progress
    from prep.sample import make_sample

    start = time.perf_counter()
    progress = Progress(n_train + n_val, "make-sample", "img")
    try:
        counts = make_sample(out, n_train, n_val, height, width, seed, progress=progress)
    except OSError as err:
        raise UserError(os_error_message(err, out)) from None
    finally:
        progress.close()
    seconds = time.perf_counter() - start
    click.echo(f"make-sample: {counts['train']} train + {counts['val']} val frames of {height}x{width} "
               f"in {out} ({seconds:.1f}s, {(n_train + n_val) / max(seconds, 1e-9):.1f} images/s)")


def _check_forward_fits(cfg, height: int, width: int, batch: int, option: str, advice: str = "") -> None:
    """A forward that cannot fit this machine's memory is refused before any work."""
    from analysis.memory import too_large

    reason = too_large(cfg.model, height, width, batch)
    if reason is not None:
        raise UserError(f"{option}: {reason}{advice}")


def _check_window_fits(cfg, given: bool) -> None:
    e = cfg.eval
    _check_forward_fits(cfg, e.window_size, e.window_size, e.batch_windows,
                        f"{'--window' if given else 'eval.window_size'} {e.window_size}",
                        "; use a smaller window (or --batch-windows)")


_WINDOW_OPTIONS = (
    click.option("--window", type=click.IntRange(min=1), help="Sliding-window size [eval.window_size]."),
    click.option("--stride", type=click.IntRange(min=1), help="Sliding-window stride, 1..window [eval.window_stride]."),
    click.option("--infer-size", type=click.IntRange(min=0), help="Short side at inference, 0 = keep [eval.infer_size]."),
    click.option("--flip/--no-flip", default=None, help="Average with the horizontally flipped image [eval.flip]."),
    click.option("--scales", callback=_parse_scales, help="Multi-scale factors, e.g. 0.5,0.75,1.0 [eval.scales]."),
    click.option("--batch-windows", type=click.IntRange(min=1), help="Windows per forward pass [eval.batch_windows]."),
)


def _window_options(command):
    """The sliding-window options `eval` and `predict` share; each overrides its eval.* key."""
    for option in reversed(_WINDOW_OPTIONS):
        command = option(command)
    return command


def _inference_config(checkpoint, config, window, stride, infer_size, flip, scales, batch_windows, protocol=None):
    """The checkpoint's config (or --config) with the window options applied, the eval keys it
    leaves null from `protocol` (eval: the data's; predict: None, the checkpoint's); refused before
    any work if the checkpoint is missing or a window cannot fit in memory."""
    from settings.files import apply_overrides
    from weights.checkpoint import checkpoint_config

    cfg = checkpoint_config(checkpoint, config, protocol)
    if stride is not None and stride > (window or cfg.eval.window_size):
        raise UserError(f"--stride {stride}: must be in 1..window ({window or cfg.eval.window_size})")
    settings = {"window_size": window, "window_stride": stride, "infer_size": infer_size, "flip": flip,
                "scales": scales, "batch_windows": batch_windows}
    cfg = apply_overrides(cfg, [f"eval.{k}={v}" for k, v in settings.items() if v is not None], "window options")
    _check_window_fits(cfg, window is not None)
    _check_settings_fit(cfg, settings)
    return cfg


def _check_settings_fit(cfg, given: dict) -> None:
    """Infer size and scales that no image could run with in this machine's memory are refused
    before the model loads, naming the option (or config key); each image is checked later."""
    from evaluate.cost import settings_problem

    problem = settings_problem(cfg)
    if problem is not None:
        key, reason = problem
        value = getattr(cfg.eval, key)
        shown = ",".join(f"{s:g}" for s in value) if key == "scales" else value
        option = f"--{key.replace('_', '-')} {shown}" if given[key] is not None else f"eval.{key} {value}"
        raise UserError(f"{option}: {reason}")


def _load_net(cfg, checkpoint, mode: str | None = None):
    """The device context from the config (device_target: --device applied), then the model with
    every weight from CKPT."""
    from base.device import setup_context
    from weights.checkpoint import load_model

    setup_context(cfg.device_target, mode or cfg.mode, cfg.seed)
    return load_model(checkpoint, cfg)


_device_option = click.option(
    "--device", type=click.Choice(["CPU", "GPU", "Ascend"], case_sensitive=False),
    help="Where MindSpore computes [device_target]; GPU and Ascend need MindSpore's build for them.")


def _on_device(cfg, device):
    """`cfg` with --device as its device_target (None: the config's own)."""
    if device is not None:
        cfg.device_target = device
    return cfg


_RUNTIME_OPTION = click.option(
    "--runtime", type=click.Choice(["mindspore", "onnxruntime", "openvino"]), default="mindspore",
    show_default=True, help="Run the windows in MindSpore, or on the CPU in ONNX Runtime (the optional onnx extra) "
                            "or OpenVINO (the optional openvino extra) from the same weights (docs/inference.md).")
_PRECISION_OPTION = click.option(
    "--precision", type=click.Choice(["f32", "bf16"]), default="f32", show_default=True,
    help="--runtime openvino: f32 (checked against MindSpore to 1e-4), or bf16 on CPUs with bfloat16 units "
         "(faster, lossy: its agreement with f32 is reported).")


def _check_runtime(runtime: str, device: str | None = None, precision: str = "f32") -> None:
    """Refuse a runtime before any work: its optional packages missing, a --device it cannot run
    on (ONNX Runtime and OpenVINO run here on the CPU only), --precision bf16 outside OpenVINO."""
    if precision != "f32" and runtime != "openvino":
        raise UserError(f"--precision {precision}: only --runtime openvino runs below f32")
    if runtime == "mindspore":
        return
    if device not in (None, "CPU"):
        raise UserError(f"--device {device}: --runtime {runtime} runs on the CPU only; "
                        f"use --runtime mindspore on {device}")
    if runtime == "onnxruntime":
        from deploy.onnx_runtime import require_onnx

        require_onnx("--runtime onnxruntime")
    else:
        from deploy.openvino_runtime import require_openvino

        require_openvino("--runtime openvino")


def _window_runner(cfg, checkpoint, runtime: str, precision: str = "f32"):
    """What runs the windows: the MindSpore network, or an ONNX Runtime session or OpenVINO model
    of it at the window size (`precision`: OpenVINO's, f32 checked against MindSpore)."""
    # The CPU runtimes read the network only to build their graph: on the CPU, whatever the config says.
    net = _load_net(cfg if runtime == "mindspore" else _on_device(cfg, "CPU"), checkpoint)
    if runtime == "mindspore":
        return net
    if runtime == "onnxruntime":
        from deploy.onnx_runtime import onnx_runner

        return onnx_runner(net, cfg.eval.window_size)
    from deploy.openvino_runtime import openvino_runner

    return openvino_runner(net, cfg.eval.window_size, precision)


def _runtime_words(cfg, runtime: str, runner) -> str:
    """What ran the windows, for a summary: `runtime openvino f32 on CPU (...difference...)`."""
    if runtime != "openvino":
        return f"runtime {runtime} on {cfg.device_target}"
    checked = (f" (max probability difference vs MindSpore {runner.max_difference:.1e})"
               if runner.max_difference is not None else "")
    return f"runtime openvino {runner.precision} on CPU{checked}"


def _parse_splits(ctx, param, value):
    splits = [s.strip() for s in value.split(",") if s.strip()]
    if not splits or len(set(splits)) != len(splits):
        raise click.BadParameter(f"{value!r}: give distinct split names, e.g. train,val")
    for split in splits:
        _parse_split(ctx, param, split)
    return splits


def _parse_split(ctx, param, value):
    """A split names a folder (OUT/{split}/) and its shards: a plain name only."""
    from mindrecords.schema import check_split_name

    try:
        check_split_name(value)
    except ValueError as err:
        raise click.BadParameter(str(err)) from None
    return value


@main.command("build-mindrecord")
@click.option("--dataset", default="cityscapes", show_default=True,
              help="A built-in data set (cityscapes, ade20k, pascal_context, pascal_context_59) or a dataset file "
                   "(docs/datasets.md).")
@click.option("--root", required=True, type=click.Path(),
              help="The data set's root (Cityscapes: leftImg8bit/, gtFine/ or gtCoarse/; docs/datasets.md).")
@click.option("--out", required=True, type=click.Path(), help="Output folder: OUT/{split}/{split}.mindrecordNNN.")
@click.option("--splits", default="train,val", show_default=True, callback=_parse_splits, help="Comma-separated splits.")
@click.option("--workers", default=0, type=click.IntRange(min=0), help="Parallel shard writers (0 = all cores).")
@click.option("--shard-size", default=64, show_default=True, type=click.IntRange(min=1), help="Samples per shard.")
@click.option("--image-format", default="png", show_default=True, type=click.Choice(["png", "jpeg"]),
              help="png stores RGB PNG and JPEG sources as found; jpeg re-encodes PNGs (quality 95), faster "
                   "to decode.")
@click.option("--labels", default="fine", show_default=True, type=click.Choice(["fine", "coarse"]),
              help="Cityscapes: gtFine or gtCoarse annotations.")
@click.option("--force", is_flag=True, help="Rebuild every shard even if it is up to date.")
def build_mindrecord_cmd(dataset, root, out, splits, workers, shard_size, image_format, labels, force):
    """Convert a data set's splits to sharded MindRecord (parallel, resumable, verified reruns)."""
    from prep.build import build

    build(root, out, splits, workers=workers, shard_size=shard_size, image_format=image_format,
          labels=labels, force=force, echo=click.echo, dataset=dataset)


@main.command("verify")
@click.argument("out", type=click.Path())
@click.option("--splits", callback=lambda c, p, v: _parse_splits(c, p, v) if v else None,
              help="Comma-separated splits (default: every split under OUT).")
def verify_cmd(out, splits):
    """Read every record of a build back and check it against the manifest."""
    import time


    from mindrecords.verify import verify_output
    from base.progress import Progress

    start = time.perf_counter()
    reports = verify_output(out, splits, progress_factory=lambda n, label: Progress(n, label, "rec"))
    problems = 0
    for r in reports:
        click.echo(f"{r.split}: {r.records} records in {r.shards} shards, {len(r.problems)} problems")
        for path, message in r.problems:
            click.echo(f"  {path}: {message}")
        for path, message in r.notes:
            click.echo(f"  note: {path}: {message}")
        problems += len(r.problems)
    records = sum(r.records for r in reports)
    seconds = time.perf_counter() - start
    click.echo(f"verify: {records} records, {problems} problems, {seconds:.1f}s "
               f"({records / max(seconds, 1e-9):.1f} records/s)")
    if problems:
        raise UserError(f"{out}: {problems} problems found (listed above)")


@main.command("eval")
@click.option("--checkpoint", required=True, type=click.Path(), help="Model checkpoint (.ckpt).")
@click.option("--config", type=click.Path(dir_okay=False), help="Config YAML (default: the one beside CKPT).")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="build-mindrecord output folder.")
@click.option("--split", default="val", show_default=True, callback=_parse_split,
              help="Split to evaluate (test: export only).")
@_window_options
@click.option("--max-images", type=click.IntRange(min=0), default=0, help="Evaluate the first N images (0 = all).")
@click.option("--save-predictions", type=click.Path(),
              help="Write the predictions into this folder: labelIds/ on Cityscapes, else {id}.png in the data's "
                   "label encoding (ADE20K: class + 1); color/ (the palette) and overlay/ (blended over the image).")
@click.option("--json", "json_path", type=click.Path(dir_okay=False),
              help="Write the metrics (mmseg's aAcc, mIoU, mAcc, per-class IoU and Acc) and the confusion counts "
                   "as JSON here.")
@click.option("--confusion", "confusion_path", type=click.Path(dir_okay=False),
              help="Draw the row-normalised confusion matrix with the class names into this PNG.")
@_RUNTIME_OPTION
@_PRECISION_OPTION
@_device_option
def eval_cmd(checkpoint, config, data, split, window, stride, infer_size, flip, scales, batch_windows,
             max_images, save_predictions, json_path, confusion_path, runtime, precision, device):
    """Sliding-window evaluation of CKPT on a built split, as the official code evaluates its data
    set (window, stride, resize: the data's protocol unless the config or an option sets them):
    Cityscapes' official mIoU, mmseg's mean_iou for any other data set."""
    from pathlib import Path

    from base.atomic import check_writable_dir
    from base.class_table import check_classes
    from base.device import init_distributed
    from evaluate.cost import check_split
    from evaluate.evaluator import NO_GROUND_TRUTH_SPLITS, evaluate_split, write_metrics_json
    from evaluate.prediction_sets import check_prediction_dir
    from mindrecords.manifest import data_classes, data_eval_protocol, split_shard_files

    if split in NO_GROUND_TRUTH_SPLITS and not save_predictions:
        raise UserError(f"--split {split} has no ground truth to score: pass --save-predictions DIR to export")
    if split in NO_GROUND_TRUTH_SPLITS and confusion_path:
        raise UserError(f"--confusion {confusion_path}: --split {split} has no ground truth to count")
    _check_runtime(runtime, device, precision)
    _check_eval_outputs(checkpoint, config, data, save_predictions, json_path, confusion_path)
    for path in filter(None, (json_path, confusion_path)):
        if not Path(path).parent.is_dir():
            raise UserError(f"{path}: folder {Path(path).parent} does not exist")
        check_writable_dir(Path(path).parent)  # an OSError here becomes `error: FOLDER: ...`
    split_shard_files(data, split)  # fail on a missing split before reading its data set
    cfg = _inference_config(checkpoint, config, window, stride, infer_size, flip, scales, batch_windows,
                            protocol=data_eval_protocol(data, split))
    cfg = _on_device(cfg, device)
    table = data_classes(data, split)
    check_classes(cfg.model.n_cls, table, checkpoint, Path(data) / split, trained=True)
    if save_predictions:
        check_prediction_dir(save_predictions)
    check_split(cfg, data, split, max_images, lambda line: click.echo(line, err=True))
    net = _window_runner(cfg, checkpoint, runtime, precision)
    rank, group_size = init_distributed()  # under msrun: each rank evaluates its share
    result = evaluate_split(net, cfg, data, split, max_images=max_images, save_predictions=save_predictions,
                            checkpoint=str(checkpoint), show_progress=rank == 0, rank=rank,
                            group_size=group_size)
    if rank > 0:
        return
    click.echo(f"eval: {_runtime_words(cfg, runtime, net)}")
    _print_eval(result, cfg, table, split, save_predictions)
    if json_path:
        try:
            write_metrics_json(result, json_path)
        except OSError as err:
            raise UserError(f"{json_path}: cannot write the metrics ({err.strerror or err})") from None
        click.echo(f"metrics: {json_path}")
    if confusion_path:
        from evaluate.confusion import write_confusion

        try:
            write_confusion(confusion_path, result["confusion"], table.names,
                            f"{table.dataset} {split}: confusion, each row normalised (%)")
        except OSError as err:
            raise UserError(f"{confusion_path}: cannot write the confusion matrix ({err.strerror or err})") from None
        click.echo(f"confusion matrix: {confusion_path}")


def _end_on_sigterm() -> None:
    """SIGTERM (kill, a timeout, a job scheduler) ends the command as Ctrl-C does: its `finally`
    blocks run, so temporary files and half-built folders go with it. Exit status 143, the signal's."""
    import signal
    import sys

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def _check_eval_outputs(checkpoint, config, data, save_predictions, json_path, confusion_path=None) -> None:
    """No output may be, or lie inside, what the run reads; --json and --confusion not inside the
    prediction folder either (that folder is replaced whole), nor one another. Paths compared as files."""
    from base.ownership import why_not_output
    from settings.files import config_beside

    reads = [("the checkpoint (--checkpoint)", checkpoint), ("the config (--config)", config),
             ("the checkpoint's config", config_beside(checkpoint)), ("the data folder (--data)", data)]
    if save_predictions:
        reason = why_not_output(save_predictions, reads)
        if reason is not None:
            raise UserError(f"{save_predictions}: {reason}; choose another --save-predictions folder")
    if json_path:
        reason = why_not_output(json_path, reads + [("the prediction folder (--save-predictions)", save_predictions)])
        if reason is None:
            from evaluate.evaluator import why_not_metrics_file

            reason = why_not_metrics_file(json_path)
        if reason is not None:
            raise UserError(f"{json_path}: {reason}; --json must name a file of its own")
    if confusion_path:
        from evaluate.confusion import why_not_confusion_file

        reason = why_not_output(confusion_path, reads + [
            ("the prediction folder (--save-predictions)", save_predictions), ("the metrics file (--json)", json_path)])
        if reason is None:
            reason = why_not_confusion_file(confusion_path)
        if reason is not None:
            raise UserError(f"{confusion_path}: {reason}; --confusion must name a file of its own")


def _print_eval(result: dict, cfg, table, split: str, save_predictions) -> None:
    from base.class_table import CITYSCAPES
    from evaluate.evaluator import NO_GROUND_TRUTH_SPLITS
    from evaluate.metrics import format_table

    e = cfg.eval
    long_side = f" (long side at most {e.max_long_side})" if e.max_long_side and e.infer_size else ""
    click.echo(f"{split}: {result['images']} images in {result['seconds']:.1f}s "
               f"({result['images'] / max(result['seconds'], 1e-9):.2f} img/s); window {e.window_size}, "
               f"stride {e.window_stride}, infer size {e.infer_size or 'original'}{long_side}, flip {e.flip}, "
               f"scales {e.scales}")
    if split in NO_GROUND_TRUTH_SPLITS:
        click.echo(f"note: split {split!r} has no ground truth; metrics skipped, predictions exported only")
    else:
        if table != CITYSCAPES:
            click.echo(f"{table.dataset}: {table.n_cls} classes, mmseg's mean_iou")
        click.echo(format_table(result))
    pictures = f"{save_predictions}/color (palette), {save_predictions}/overlay (over the image)"
    if save_predictions and table == CITYSCAPES:
        click.echo(f"predictions: {save_predictions}/labelIds (submission labelIds), {pictures}")
    elif save_predictions:
        click.echo(f"predictions: {save_predictions} (label PNGs in the data's encoding), {pictures}")


@main.command("train")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Config YAML (required for a new run; with --resume, default: RUN/config.yaml).")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="build-mindrecord output folder.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="Run folder RUN.")
@click.option("--resume", is_flag=True, help="Continue RUN from its last checkpoint (same lr position, data order).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set train.iterations=200 (repeatable); with --resume and no "
                   "--config, RUN/config.yaml's: a larger train.iterations or train.epochs extends the run.")
@_device_option
def train_cmd(config, data, out, resume, overrides, device):
    """Train Segmenter on the built train split; validate, checkpoint, resume; msrun for data parallel.
    Ctrl-C or SIGTERM: the step in flight finishes, its checkpoint is written, and the resume
    command is printed (exit 130 / 143); a second one stops at once."""
    import shlex
    import signal

    from settings.files import apply_overrides, load_config

    if config is None and not resume:
        raise UserError("--config is required for a new run (only --resume can reuse RUN/config.yaml)")
    cfg = apply_overrides(load_config(config), list(overrides)) if config is not None else None
    from train.loop import train

    result = train(cfg, data, out, resume=resume, given_config=config is not None, log=click.echo,
                   config_source=f"{config} with --set" if overrides else config,
                   overrides=() if config is not None else overrides, device=device)
    resume_line = f"python cli.py train --data {shlex.quote(str(data))} --out {shlex.quote(str(out))} --resume"
    if result.rank == 0 and result.finished_before:
        key, value = result.length
        click.echo(f"{out}: the run had already finished at step {result.at_step}/{result.steps}; last checkpoint "
                   f"{result.last_checkpoint}. To train longer: {resume_line} --set {key}=N (N > {value})")
    elif result.rank == 0:
        best = "n/a" if result.best_miou is None else f"{100 * result.best_miou:.2f}"
        done = f"trained {result.steps} steps" if result.stopped_by is None else \
            f"stopped by {signal.Signals(result.stopped_by).name} at step {result.at_step}/{result.steps}"
        if result.losses and result.losses[0][0] > 1:  # resumed: the time below is this session's
            done += f" (steps {result.losses[0][0]}-{result.losses[-1][0]} in this session)"
        click.echo(f"{done} in {result.seconds:.1f}s on {result.group_size} rank(s); best val mIoU {best}; "
                   f"last checkpoint {result.last_checkpoint}")
    if result.stopped_by is not None:
        if result.rank == 0:
            click.echo(f"resume with: {resume_line}")
        raise click.exceptions.Exit(128 + result.stopped_by)


@main.command("inspect-pipeline")
@click.option("--config", required=True, type=click.Path(dir_okay=False), help="Config YAML (data.* and model.mean/std).")
@click.option("--data", required=True, type=click.Path(file_okay=False), help="build-mindrecord output folder.")
@click.option("--n", "n", default=8, show_default=True, type=click.IntRange(min=1), help="Samples to save.")
@click.option("--out", "out", type=click.Path(file_okay=False), help="Folder for the PNGs (not with --list-ids).")
@click.option("--list-ids", is_flag=True, help="Print the sample ids one epoch feeds to one rank, in reading order.")
@click.option("--epoch", default=0, show_default=True, type=click.IntRange(min=0), help="With --list-ids: the epoch.")
@click.option("--rank", default=0, show_default=True, type=click.IntRange(min=0), help="With --list-ids: the rank.")
@click.option("--ranks", default=1, show_default=True, type=click.IntRange(min=1),
              help="With --list-ids: the number of data-parallel ranks.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key, e.g. --set data.photometric.enabled=false (repeatable).")
def inspect_pipeline_cmd(config, data, n, out, list_ids, epoch, rank, ranks, overrides):
    """Save N augmented training samples as image | image+label overlay PNGs, or (--list-ids) print
    which samples an epoch feeds to a rank."""
    import time

    from base.progress import Progress
    from pipelines.inspection import save_inspection
    from pipelines.train_pipeline import epoch_ids
    from settings.files import apply_overrides, load_config
    from train.loop import with_data

    if list_ids == (out is not None):
        raise UserError("give --out FOLDER to save samples, or --list-ids to print an epoch's sample ids")
    if rank >= ranks:
        raise UserError(f"--rank {rank}: must be below --ranks {ranks}")
    start = time.perf_counter()
    cfg = apply_overrides(load_config(config), list(overrides))
    if list_ids:
        for sample_id in epoch_ids(cfg, data, epoch, rank, ranks):
            click.echo(sample_id)
        return
    cfg = with_data(cfg, data, config)  # the data's classes and ignore index, checked as train checks them
    progress = Progress(n, "inspect-pipeline", "sample")
    written = save_inspection(cfg, data, n, out, progress)
    progress.close()
    seconds = time.perf_counter() - start
    short = f" (the {cfg.data.train_split} split has only {len(written)} per pass)" if len(written) < n else ""
    click.echo(f"saved {len(written)} samples{short} to {out} in {seconds:.1f}s "
               f"(crop {cfg.data.crop_size}; left: augmented image, right: 50% label overlay, "
               "checkerboard = ignore/padding)")


@main.command("convert-weights")
@click.argument("src", type=click.Path())
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Output checkpoint (.ckpt); its config is written beside it (.yaml).")
@click.option("--config", type=click.Path(dir_okay=False),
              help="Model config: required for a .npz; for a release, the base for non-model settings.")
@click.option("--dataset", "dataset", metavar="NAME|FILE",
              help="A .npz only: the data set (built-in name or dataset file) whose classes the decoder gets.")
def convert_weights_cmd(src, out, config, dataset):
    """Import SRC: an official Segmenter release (checkpoint.pth + variant.yml, or its folder; its
    data set's classes come with it) or a Google ViT .npz (the classes of --dataset or --config)."""
    from pathlib import Path

    from settings.files import config_beside


    if not Path(src).exists():
        raise UserError(f"{src}: not found")
    if Path(out).suffix != ".ckpt":
        raise UserError(f"--out {out}: the checkpoint name must end in .ckpt")
    from weights.convert import convert_weights

    cfg, kind, data = convert_weights(src, out, config, dataset)
    m = cfg.model
    classes = f"{m.n_cls} classes" + (f" ({data.name})" if data is not None else "")
    click.echo(f"{src}: {kind} -> {out} (+ {config_beside(out)}); {m.backbone} d_model {m.d_model}, "
               f"{m.n_layers} layers, patch {m.patch_size}, decoder {m.decoder.name} ({m.decoder.n_layers} layers), "
               f"{classes}; device_target {cfg.device_target} (each command's --device overrides it)")


def _opacity(ctx, param, value):
    if value is not None and not 0.0 <= value <= 1.0:
        raise click.BadParameter(f"{value}: an opacity in 0..1")
    return value


@main.command("predict")
@click.argument("inputs", nargs=-1, required=True, type=click.Path())
@click.option("--checkpoint", required=True, type=click.Path(), help="Model checkpoint (.ckpt).")
@click.option("--config", type=click.Path(dir_okay=False), help="Config YAML (default: the one beside CKPT).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@_window_options
@click.option("--save-probs", is_flag=True, help="Also write {stem}_probs.npy (float32 classes x H x W softmax).")
@click.option("--overlay", "alpha", type=float, callback=_opacity, metavar="ALPHA",
              help="Also write {stem}_overlay.png: the palette over the image at opacity ALPHA (0..1); "
                   "for videos the overlay opacity (default 0.5).")
@click.option("--frames", is_flag=True, help="Videos: also write {stem}_frames/frame_NNNNNN.png (class indices).")
@_RUNTIME_OPTION
@_PRECISION_OPTION
@_device_option
def predict_cmd(inputs, checkpoint, config, out, window, stride, infer_size, flip, scales, batch_windows, save_probs,
                alpha, frames, runtime, precision, device):
    """Sliding-window prediction of INPUTS: image files, folders (recursive), globs, videos.

    Per image OUT/{stem}.png (class indices: trainIds on Cityscapes), OUT/{stem}_color.png in the
    checkpoint's palette [, _overlay.png, _probs.npy]; per video OUT/{stem}.mp4 (.avi for .avi) of
    overlays at its frame rate [, {stem}_frames/]."""
    from base.ownership import WrittenFiles, output_folder
    from evaluate.predict import check_output, check_sizes, predict_inputs
    from evaluate.predict_inputs import KIND, check_outputs, resolve_inputs

    cfg = _on_device(_inference_config(checkpoint, config, window, stride, infer_size, flip, scales, batch_windows),
                     device)
    table = check_output(cfg, checkpoint, out)
    _check_runtime(runtime, device, precision)
    with output_folder(out, KIND):  # one predict per --out, from the checks to the last write
        written = WrittenFiles(out, KIND)  # every earlier output in OUT is proven once, here
        found = resolve_inputs(inputs, written)
        for path, reason in found.skipped:
            click.echo(f"skipped: {path}: {reason}", err=True)
        check_sizes(cfg, found, lambda line: click.echo(line, err=True))
        check_outputs(found, out, save_probs, alpha is not None, frames, written)
        net = _window_runner(cfg, checkpoint, runtime, precision)
        result = predict_inputs(net, cfg, found, out, save_probs=save_probs, alpha=alpha, frames=frames,
                                written=written, table=table)
    if precision == "bf16":
        from evaluate.predict import bf16_agreement

        click.echo(bf16_agreement(net, cfg, found))
    e = cfg.eval
    done = result["images"] + result["frames"]
    what = f"{result['images']} images" + (f" + {result['frames']} video frames ({found.videos} videos)"
                                           if found.videos else "")
    skipped = f", {len(found.skipped)} unreadable skipped" if found.skipped else ""
    click.echo(f"{what} in {result['seconds']:.1f}s ({done / max(result['seconds'], 1e-9):.2f} images/s){skipped}; "
               f"window {e.window_size}, stride {e.window_stride}, flip {e.flip}, scales {e.scales}, "
               f"{_runtime_words(cfg, runtime, net)}, {table.n_cls} classes ({table.dataset}) -> {out}")


@main.command("attention")
@click.argument("image", type=click.Path(dir_okay=False))
@click.option("--checkpoint", required=True, type=click.Path(), help="Model checkpoint (.ckpt).")
@click.option("--config", type=click.Path(dir_okay=False), help="Config YAML (default: the one beside CKPT).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--layer", required=True, metavar="enc:N|dec:N",
              help="Encoder or decoder block N, from 0 (negative: from the last), e.g. dec:-1.")
@click.option("--pixel", "pixels", multiple=True, metavar="Y,X", help="Query: the patch of IMAGE's pixel Y,X "
              "(row, column); repeatable.")
@click.option("--class", "classes", multiple=True, metavar="NAME",
              help="Query (decoder layers): the embedding of class NAME; repeatable.")
@click.option("--class-token", is_flag=True, help="Query (encoder layers): the class token.")
@click.option("--infer-size", type=click.IntRange(min=0), help="Short side IMAGE is resized to [eval.infer_size].")
@_device_option
def attention_cmd(image, checkpoint, config, out, layer, pixels, classes, class_token, infer_size, device):
    """Each head's attention at one encoder or decoder layer, per query: OUT/{stem}_{layer}_{query}.png
    (the network's input, then one tile per head) and .npy (float32 heads x patch rows x columns)."""
    import time
    from pathlib import Path

    from analysis.attention_maps import KIND, output_names, prepare, write_attention_maps
    from base.images import decode_image
    from base.ownership import WrittenFiles, output_folder
    from evaluate.predict import check_output

    cfg = _on_device(_inference_config(checkpoint, config, None, None, infer_size, None, None, None), device)
    table = check_output(cfg, checkpoint, out)
    chosen, queries = prepare(cfg, table, image, layer, pixels, classes, class_token)
    stem = Path(image).stem
    with output_folder(out, KIND):
        written = WrittenFiles(out, KIND)
        for name in (n for pair in output_names(stem, chosen, queries) for n in pair):
            reason = written.why_not_ours(Path(out) / name)
            if reason:
                raise UserError(f"{reason}; choose another --out", Path(out) / name)
        start = time.perf_counter()
        net = _load_net(cfg, checkpoint, mode="pynative")  # the hook that reads the weights needs PyNative
        paths = write_attention_maps(net, cfg, decode_image(image), stem, chosen, queries, out, written, image,
                                     table)
    for path in paths:
        click.echo(f"wrote {path}")
    click.echo(f"{len(queries)} {'query' if len(queries) == 1 else 'queries'} at {chosen.title} in "
               f"{time.perf_counter() - start:.1f}s -> {out}")


def _parse_size(option: str, value: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in value.lower().split("x"))
        if h <= 0 or w <= 0:
            raise ValueError
    except ValueError:
        raise UserError(f"{option} {value!r}: expected HxW with positive integers, e.g. 768x768") from None
    return h, w


def _info_net(cfg, checkpoint, parameters: int):
    """The network `info` measures, or loads to check CKPT against its config: built only once its
    weights are known to fit this machine's memory (the counts need no network)."""
    from analysis.memory import weights_too_large

    reason = weights_too_large(parameters)
    if reason is not None:
        raise UserError(f"{f'--checkpoint {checkpoint}' if checkpoint else '--measure'}: {reason}")
    if checkpoint:
        return _load_net(cfg, checkpoint, mode="graph")
    from base.device import setup_context
    from model.segmenter import build_segmenter

    setup_context(cfg.device_target, "graph", cfg.seed)
    net = build_segmenter(cfg.model)
    net.set_train(False)
    return net


@main.command("info")
@click.option("--config", type=click.Path(dir_okay=False), help="Config YAML (the model described by model.*).")
@click.option("--checkpoint", type=click.Path(), help="Or a checkpoint (its config beside it).")
@click.option("--size", default=None, help="Forward input HxW [model.image_size].")
@click.option("--image-size", default="1024x2048", show_default=True,
              help="Image HxW for the sliding-window cost (a Cityscapes frame).")
@click.option("--measure", is_flag=True, help="Also run one forward at --size and report its time and peak memory.")
@click.option("--dataset", default="cityscapes", show_default=True,
              help="With --config: the data set (NAME or FILE.yaml) whose classes and evaluation protocol fill the "
                   "config's open keys (model.n_cls, eval.*: null); a set model.n_cls must equal its classes. "
                   "The default is Cityscapes' classes and protocol.")
@_device_option
def info_cmd(config, checkpoint, size, image_size, measure, dataset, device):
    """Parameters per part, FLOPs of one forward, the sliding window's windows and FLOPs per image."""
    from base.network_input import inference_size
    from evaluate.sliding_window import count_windows
    from analysis.info import info_report, measure_forward, model_parameter_counts
    from base.class_table import check_classes
    from settings.datasets import load_dataset
    from settings.files import load_config
    from settings.schema import with_eval_protocol
    from weights.checkpoint import checkpoint_config

    if (config is None) == (checkpoint is None):
        raise UserError("give --config CFG or --checkpoint CKPT (one of them)")
    if config:
        spec = load_dataset(dataset)
        cfg = load_config(config)
        cfg.model.n_cls = check_classes(cfg.model.n_cls, spec.class_table(), config, f"--dataset {dataset}")
        cfg = with_eval_protocol(cfg, spec.eval, f"--dataset {dataset}")
    else:
        cfg = checkpoint_config(checkpoint)
    cfg = _on_device(cfg, device)
    m, e = cfg.model, cfg.eval
    h, w = _parse_size("--size", size) if size else tuple(m.image_size)
    ih, iw = _parse_size("--image-size", image_size)
    if measure:
        _check_forward_fits(cfg, h, w, 1, f"--size {h}x{w}")
    net = _info_net(cfg, checkpoint, model_parameter_counts(m)["total"]) if measure or checkpoint else None
    rh, rw = inference_size(ih, iw, e.infer_size, e.max_long_side)
    windows = count_windows(rh, rw, e.window_size, e.window_stride, e.flip, tuple(e.scales))
    for line in info_report(cfg, (h, w), (ih, iw), (rh, rw), windows, measure_forward(net, h, w) if measure else None):
        click.echo(line)


EXPORT_FORMATS = {".mindir": "mindir", ".onnx": "onnx"}


EXPORT_KIND = "export"  # what the written-files log of --out's folder calls export's files


def _export_format(out, fmt: str | None) -> str:
    """The format --out's suffix names; --format, if given, must name the same."""
    from pathlib import Path

    suffix = Path(out).suffix.lower()
    named = EXPORT_FORMATS.get(suffix)
    if named is None:
        raise UserError(f"--out {out}: the file name must end in {' or '.join(EXPORT_FORMATS)}")
    if fmt is not None and fmt != named:
        raise UserError(f"--out {out}: the file name must end in .{fmt} for --format {fmt}")
    return named


@main.command("export")
@click.option("--checkpoint", required=True, type=click.Path(), help="Model checkpoint (.ckpt).")
@click.option("--config", type=click.Path(dir_okay=False), help="Config YAML (default: the one beside CKPT).")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Output file: .mindir (MindIR) or .onnx (ONNX); the suffix picks the format.")
@click.option("--size", default=None, help="Fixed input size HxW, e.g. 768x768 [eval.window_size, square].")
@click.option("--format", "fmt", type=click.Choice(sorted(EXPORT_FORMATS.values())), default=None,
              help="MindIR (batch 1), or ONNX opset 17 (any batch; needs the onnx extra), checked against MindSpore "
                   "[the --out suffix]; must agree with it.")
@_device_option
def export_cmd(checkpoint, config, out, size, fmt, device):
    """Export CKPT for deployment: input (N,3,H,W) normalized float32, output logits (N,n_cls,H,W).
    The ONNX file carries what a deployment needs beside the graph (mean, std, class names,
    palette, patch and input size) as metadata."""
    from weights.checkpoint import checkpoint_classes, checkpoint_config

    from pathlib import Path

    from base.ownership import WrittenFiles, output_folder, why_not_output
    from settings.files import config_beside

    fmt = _export_format(out, fmt)
    reason = why_not_output(out, [("the checkpoint (--checkpoint)", checkpoint), ("the config (--config)", config),
                                  ("the checkpoint's config", config_beside(checkpoint))]) \
        or WrittenFiles(Path(out).parent, EXPORT_KIND).why_not_ours(out)
    if reason is not None:
        raise UserError(f"{out}: {reason}; --out must name a file of its own")
    given = _parse_size("--size", size) if size else None
    if fmt == "onnx":
        _check_runtime("onnxruntime")
    cfg = _on_device(checkpoint_config(checkpoint, config), device)
    h, w = given or (cfg.eval.window_size, cfg.eval.window_size)  # the windows sliding-window inference feeds
    _check_forward_fits(cfg, h, w, 1, f"--size {size}" if size else f"eval.window_size {h}")
    table = checkpoint_classes(checkpoint)

    net = _load_net(cfg, checkpoint, mode="graph")
    n_cls = cfg.model.n_cls
    if fmt == "mindir":
        from deploy.mindir import export_mindir

        with output_folder(Path(out).parent, EXPORT_KIND) as folder:
            export_mindir(net, out, h, w, WrittenFiles(folder, EXPORT_KIND))
        click.echo(f"{checkpoint} -> {out}: input (1,3,{h},{w}) float32 normalized, output (1,{n_cls},{h},{w}) "
                   f"logits of the {table.dataset} classes; traced on {cfg.device_target}")
        return
    from deploy.onnx_file import deployment_metadata, export_onnx

    with output_folder(Path(out).parent, EXPORT_KIND) as folder:
        diff = export_onnx(net, out, h, w, WrittenFiles(folder, EXPORT_KIND),
                           deployment_metadata(cfg.model, table, h, w))
    click.echo(f"{checkpoint} -> {out}: ONNX opset 17, input (N,3,{h},{w}) float32 normalized, output "
               f"(N,{n_cls},{h},{w}) logits of the {table.dataset} classes; ONNX Runtime vs MindSpore on {cfg.device_target}: max probability "
               f"difference {diff:.1e}; metadata: mean, std, class names, palette, patch and input size")


if __name__ == "__main__":
    main()

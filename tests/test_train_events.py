"""What a run leaves to look at: TensorBoard events (scalars, per-class scores, image panels; a
resumed run hides the interrupted tail), curves.png drawn by matplotlib, validation's progress."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("mindspore")

import cli  # noqa: E402
from settings.schema import config_from_dict  # noqa: E402

# One encoder block, a linear decoder, one compiled graph: the cheapest run that trains and validates.
TINY = {
    "seed": 3,
    "model": {"d_model": 32, "n_heads": 2, "n_layers": 1, "patch_size": 8, "image_size": [64, 64],
              "drop_path_rate": 0.0, "pretrained": "none",
              "decoder": {"name": "linear", "n_layers": 0, "dropout": 0.0}},
    "data": {"crop_size": 64, "base_size": [128, 64], "ratio_range": [0.5, 1.0], "num_parallel_workers": 1},
    "train": {"iterations": 3, "batch_size": 2, "checkpoint_every": 2, "eval_every": 2, "log_every": 1,
              "step_graph": "whole", "optimizer": {"lr": 0.05}},
    "eval": {"window_size": 64, "window_stride": 64, "infer_size": 64, "batch_windows": 2},
}


def _cli(*args) -> None:
    result = CliRunner().invoke(cli.main, list(map(str, args)), catch_exceptions=False)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 3-step run (validations at steps 2 and 3), and a copy of it cut back to step 2 and
    resumed: its folder still holds the events the cut steps wrote."""
    import yaml

    from settings.files import load_config
    from train.loop import train

    base = tmp_path_factory.mktemp("events")
    _cli("make-sample", "--out", base / "cs", "--train", 4, "--val", 2, "--height", 64, "--width", 128)
    _cli("build-mindrecord", "--root", base / "cs", "--out", base / "mr", "--shard-size", 4, "--workers", 1)
    config_from_dict(json.loads(json.dumps(TINY)))
    (base / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    lines = []
    train(load_config(base / "tiny.yaml"), base / "mr", base / "run", log=lines.append)
    cut = base / "cut"
    shutil.copytree(base / "run", cut)
    for name in ("step_0000003.ckpt", "step_0000003.yaml"):
        (cut / "checkpoints" / name).unlink()
    train(None, base / "mr", cut, resume=True, given_config=False, log=lambda *_: None)
    return base, lines


def read_events(folder: Path):
    """Every event of the folder's event files in TensorBoard's order (file name, then position),
    from the TFRecord framing: length (u64), its CRC, the Event proto, its CRC."""
    from tensorboardX.proto import event_pb2

    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            yield event
            pos += 12 + length + 4


def summaries(folder: Path) -> dict:
    """tag -> [(step, value)] as TensorBoard shows them: a session START at step s hides what
    earlier events logged at s and after (tensorboardX's purge_step)."""
    from tensorboardX.proto import event_pb2

    shown: dict = {}
    for event in read_events(folder):
        if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
            shown = {tag: [(s, v) for s, v in points if s < event.step] for tag, points in shown.items()}
        for value in event.summary.value:
            shown.setdefault(value.tag, []).append((event.step, value.image if value.HasField("image")
                                                    else value.simple_value))
    return shown


def test_run_logs_losses_scores_per_class_and_fixed_image_panels(runs):
    from mindrecords.manifest import data_classes
    from train.events import PANEL_GAP, PANEL_HEIGHT, class_tag

    base, _ = runs
    shown = summaries(base / "run" / "tensorboard")
    records = [json.loads(line) for line in (base / "run" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    for key in ("loss", "lr", "loss_scale", "step_time"):
        assert shown[f"train/{key}"] == [(r["step"], pytest.approx(r[key], rel=1e-6)) for r in train]
    val = [r for r in records if r["type"] == "val"]
    assert [s for s, _ in shown["val/mIoU"]] == [2, 3]
    assert [v for _, v in shown["val/mIoU"]] == [pytest.approx(100 * r["mIoU"], rel=1e-5) for r in val]
    assert [v for _, v in shown["val/mAcc"]] == [pytest.approx(100 * r["mAcc"], rel=1e-5) for r in val]
    assert [s for s, _ in shown["val/aAcc"]] == [2, 3]
    table = data_classes(base / "mr", "val")
    scored = [name for name, iou in val[-1]["per_class"].items() if iou is not None]
    assert scored and all(shown[f"val/IoU/{class_tag(name)}"][-1][1] == pytest.approx(100 * val[-1]["per_class"][name],
                                                                                       rel=1e-5) for name in scored)
    panels = {tag: points for tag, points in shown.items() if tag.startswith("val/images/")}
    assert len(panels) == 2  # both val images (fewer than PANEL_IMAGES), the same ones at each validation
    palette = {tuple(c) for c in table.palette} | {(0, 0, 0)}
    width = round(128 * PANEL_HEIGHT / 64)
    for points in panels.values():
        assert [s for s, _ in points] == [2, 3]
        image = points[-1][1]
        assert (image.height, image.width) == (PANEL_HEIGHT, 3 * width + 2 * PANEL_GAP)
        rgb = cv2.cvtColor(cv2.imdecode(np.frombuffer(image.encoded_image_string, np.uint8), cv2.IMREAD_COLOR),
                           cv2.COLOR_BGR2RGB)
        assert rgb.shape == (PANEL_HEIGHT, 3 * width + 2 * PANEL_GAP, 3)
        for third in (1, 2):  # prediction and ground truth: palette colours only
            part = rgb[:, third * (width + PANEL_GAP):third * (width + PANEL_GAP) + width]
            assert {tuple(c) for c in part.reshape(-1, 3)} <= palette
        truth = rgb[:, 2 * (width + PANEL_GAP):]
        assert len({tuple(c) for c in truth.reshape(-1, 3)}) > 1


def test_resumed_run_hides_the_steps_its_interrupted_session_logged(runs):
    base, _ = runs
    folder = base / "cut" / "tensorboard"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 2
    raw = [(v.tag, e.step) for e in read_events(folder) for v in e.summary.value]
    assert raw.count(("train/loss", 3)) == 2  # logged by both sessions ...
    shown = summaries(folder)
    assert [s for s, _ in shown["train/loss"]] == [1, 2, 3]  # ... shown once
    assert [s for s, _ in shown["val/mIoU"]] == [2, 3]
    uninterrupted = summaries(base / "run" / "tensorboard")
    assert shown["train/loss"] == pytest.approx(uninterrupted["train/loss"], rel=1e-5)


def test_tensorboard_off_or_another_rank_writes_no_events(tmp_path):
    from train.events import TrainEvents
    from train.run_folder import Run

    off = config_from_dict({**TINY, "train": {**TINY["train"], "tensorboard": False}})
    for cfg, writer in ((off, True), (config_from_dict(TINY), False)):
        events = TrainEvents(Run(tmp_path, writer=writer), cfg, 0)
        events.train({"step": 1, "loss": 1.0})
        events.validation(1, {"mIoU": 0.5}, {})
        events.close()
    assert list(tmp_path.iterdir()) == []


def test_curves_png_is_a_matplotlib_figure_of_the_run(runs):
    base, _ = runs
    data = (base / "run" / "curves.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"tEXtSoftware\x00Matplotlib" in data  # savefig's stamp: not drawn by hand
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape[1] > 2 * image.shape[0] > 500  # three panels side by side
    packed = image.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1])
    assert len(np.unique(packed)) > 20  # curves, text, grid: not a blank canvas


def test_validation_logs_its_progress_then_the_summary(runs):
    _, lines = runs
    progress = [i for i, line in enumerate(lines) if line.startswith("eval val: 2/2 img") and "ETA" in line]
    summary = [i for i, line in enumerate(lines) if line.startswith("step 2: val mIoU ")]
    assert len(summary) == 1 and " mAcc " in lines[summary[0]] and " aAcc " in lines[summary[0]]
    assert progress and progress[0] < summary[0]

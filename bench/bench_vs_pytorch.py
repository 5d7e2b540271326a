"""Side by side with the official Segmenter code on this CPU, the same release weights on both sides.

    .venv/bin/python bench/bench_vs_pytorch.py --official ../official [--rounds 3] [--repeats 3]
        [--rows predict,forward,train,predict_onnxruntime,predict_openvino_f32,predict_openvino_bf16]

`--official PATH` is a checkout of https://github.com/rstrudel/segmenter: its `segm` package is
imported from PATH at run time (never copied here) by an interpreter that has torch, torchvision,
timm and einops (`requirements-bench.txt`; `--official-python`, default this one). Setup, once
per run: the official `create_segmenter` makes a seg_tiny_mask model (Cityscapes, 19 classes,
random weights, seed 0) and writes it as an official release (variant.yml + checkpoint.pth);
our `convert-weights` turns that release into our checkpoint, so both sides hold the same weights.

Rows (ours | the official code's own functions):
  predict      sliding window over one 3x1024x2048 image, window 768 stride 512, batches of 4:
               `evaluate.sliding_window.sliding_window_probs` | `segm.model.utils.inference`
  predict_onnxruntime, predict_openvino_f32, predict_openvino_bf16
               our predict with the windows run by `cli._window_runner(cfg, ckpt, runtime,
               precision)` (ONNX Runtime / OpenVINO from our ONNX export) | `inference` as above
  forward      one forward of 1x3x768x768 | the official model's `forward`
               (`--profile-official`: that forward under torch.profiler, per aten op)
  train        one train step, batch 2 x 768x768, cross-entropy ignoring 255, SGD momentum 0.9,
               global-norm clip 5 (our default recipe): our `train.step.TrainStepFn` as
               bench/bench_train.py runs it | the official model, `loss.backward()`,
               `clip_grad_norm_`, `optimizer.step()`; time and the process's peak RSS
The predict rows also report the largest probability difference against the official output and
the argmax agreement (the cost of bf16 shown, never hidden).

Every measurement runs in its own fresh process (so peak RSS is its own); in each round the two
sides alternate (ours first in even rounds); a measurement is the median of `--repeats` calls
after one warm-up call (which compiles). Printed: per row the median over rounds of each side's
seconds and of the per-round ratio (official / ours: > 1 means we are faster; for train, ours /
official: the fraction of its time). Without `--official` only our side is timed and no ratio
is printed. torch uses `--threads` (default: one per core, as ONNX Runtime and OpenVINO do);
MindSpore its default kernel pool unless `--ms-threads`.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_train import _peak_gib  # noqa: E402  (bench/ is on the path)

ROWS = ("predict", "forward", "train", "predict_onnxruntime", "predict_openvino_f32", "predict_openvino_bf16")
IMAGE_HW, WINDOW, STRIDE, BATCH_WINDOWS, CROP, TRAIN_BATCH = (1024, 2048), 768, 512, 4, 768, 2
# seg_tiny_mask as an official variant (configs/seg_tiny_mask.yaml; our default recipe's rates).
NET_KWARGS = dict(backbone="vit_tiny_bench_patch16", image_size=[CROP, CROP], patch_size=16, d_model=192,
                  n_heads=3, n_layers=12, normalization="vit", distilled=False, dropout=0.0, drop_path_rate=0.1,
                  n_cls=19, decoder=dict(name="mask_transformer", n_layers=2, drop_path_rate=0.0, dropout=0.1))


def _task(row: str) -> str:
    return row.split("_", 1)[0]


def _timed(call, repeats: int) -> float:
    call()  # warm-up (graph compilation, allocator)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _inputs():
    """The predict image and the forward input (normalized float32), identical on both sides."""
    import numpy as np

    rng = np.random.RandomState(0)
    return (rng.randn(3, *IMAGE_HW).astype(np.float32), rng.randn(1, 3, CROP, CROP).astype(np.float32))


def _save_probs(probs, work: Path, row: str) -> None:
    """The first round's predict output, for the parent's agreement check."""
    import numpy as np

    path = work / f"probs_{row}.npy"
    if not path.exists():
        np.save(path, probs)


# ------------------------------------------------------------------------------------------ official
def _import_official(official: Path):
    sys.path.insert(0, str(official))
    import segm.utils.torch as ptu
    from segm.model import factory, utils

    ptu.set_gpu_mode(False)
    return factory, utils


def make_release(official: Path, out: Path) -> None:
    """An official release of seg_tiny_mask written by the official code (variant.yml + checkpoint.pth)."""
    import torch
    import yaml

    factory, _ = _import_official(official)
    torch.manual_seed(0)
    model = factory.create_segmenter(copy.deepcopy(NET_KWARGS))  # it pops and adds keys
    variant = dict(net_kwargs=NET_KWARGS,
                   dataset_kwargs=dict(dataset="cityscapes", image_size=IMAGE_HW[0], crop_size=CROP,
                                       normalization="vit"),
                   optimizer_kwargs=dict(opt="sgd", lr=0.01, momentum=0.9, weight_decay=0.0),
                   inference_kwargs=dict(im_size=IMAGE_HW[0], window_size=WINDOW, window_stride=STRIDE))
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model.state_dict()}, out / "checkpoint.pth")
    (out / "variant.yml").write_text(yaml.dump(variant))


def _official(row: str, repeats: int, threads: int, official: Path, work: Path) -> float:
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    factory, utils = _import_official(official)
    model, _ = factory.load_model(str(work / "release" / "checkpoint.pth"))
    image, x = _inputs()
    if row == "train":
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=0.0)
        criterion = torch.nn.CrossEntropyLoss(ignore_index=255)
        rng = np.random.default_rng(0)
        batch = torch.from_numpy(rng.standard_normal((TRAIN_BATCH, 3, CROP, CROP), np.float32))
        label = rng.integers(0, NET_KWARGS["n_cls"], size=(TRAIN_BATCH, CROP, CROP))
        label[:, :8] = 255
        label = torch.from_numpy(label)

        def step():
            optimizer.zero_grad()
            loss = criterion(model.forward(batch), label)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            return loss.item()

        return _timed(step, repeats)
    model.eval()
    if row == "forward":
        with torch.no_grad():
            tensor = torch.from_numpy(x)
            return _timed(lambda: model.forward(tensor), repeats)
    ims = [torch.from_numpy(image)[None]]
    run = lambda: utils.inference(model, ims, [{"flip": False}], IMAGE_HW, WINDOW, STRIDE,  # noqa: E731
                                  BATCH_WINDOWS).numpy()
    seconds = _timed(run, repeats)
    _save_probs(run(), work, "official")
    return seconds


def profile_official(official: Path, threads: int, repeats: int, work: Path) -> None:
    """torch.profiler over the official forward at 1x3x768x768 (the shapes of bench/profile_ops.py):
    self CPU ms per forward of each aten op, largest first."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(threads)
    make_release(official, work / "release")
    factory, _ = _import_official(official)
    model, _ = factory.load_model(str(work / "release" / "checkpoint.pth"))
    model.eval()
    x = torch.from_numpy(_inputs()[1])
    with torch.no_grad():
        model.forward(x)  # warm-up
        start = time.perf_counter()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(repeats):
                model.forward(x)
        wall = (time.perf_counter() - start) / repeats
    events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    print(f"official forward 1x3x{CROP}x{CROP}, torch {torch.__version__}, {threads} threads; "
          f"{1e3 * wall:.0f} ms per forward under the profiler (mean of {repeats})")
    print("| aten op | calls per forward | self CPU ms per forward | share |\n|---|---|---|---|")
    total = sum(e.self_cpu_time_total for e in events)
    for e in events[:15]:
        print(f"| {e.key} | {e.count // repeats} | {e.self_cpu_time_total / 1e3 / repeats:.0f} | "
              f"{100 * e.self_cpu_time_total / total:.0f} % |")


# ------------------------------------------------------------------------------------------ ours
def _ours(row: str, repeats: int, ms_threads: int | None, work: Path) -> float:
    import mindspore as ms

    import cli
    from base.device import setup_context
    from evaluate.sliding_window import sliding_window_probs
    from weights.checkpoint import checkpoint_config

    ckpt = work / "ours.ckpt"
    cfg = checkpoint_config(ckpt)
    setup_context("CPU", "graph", 0, threads=ms_threads)
    image, x = _inputs()
    runtime, _, precision = row.partition("_")[2].partition("_")
    net = cli._window_runner(cfg, ckpt, runtime or "mindspore", precision=precision or "f32")
    if row == "forward":
        tensor = ms.Tensor(x)
        return _timed(lambda: net(tensor).asnumpy(), repeats)
    run = lambda: sliding_window_probs(net, image, cfg.model.n_cls, WINDOW, STRIDE, BATCH_WINDOWS)  # noqa: E731
    seconds = _timed(run, repeats)
    _save_probs(run(), work, row)
    return seconds


# ------------------------------------------------------------------------------------------ driver
def _child_cmd(row: str, side: str, args, work: Path) -> list:
    if side == "ours" and row == "train":  # our default step graph on CPU, as bench_train measures it
        return [sys.executable, str(ROOT / "bench" / "bench_train.py"), "--variant", "per_block", "--batch",
                str(TRAIN_BATCH), "--crop", str(CROP), "--steps", str(args.repeats)] + \
            (["--threads", str(args.ms_threads)] if args.ms_threads else [])
    python = args.official_python if side == "official" else sys.executable
    cmd = [python, __file__, "--child", row, side, "--work", str(work), "--repeats", str(args.repeats),
           "--threads", str(args.threads)]
    if args.official:
        cmd += ["--official", str(args.official)]
    return cmd + (["--ms-threads", str(args.ms_threads)] if args.ms_threads else [])


def _measure(row: str, side: str, args, work: Path) -> dict:
    """{seconds, peak_rss_gib}, or {error} (a row that fails, e.g. bf16 on a CPU without bf16 units,
    is reported in the table and not retried; the other rows go on)."""
    proc = subprocess.run(_child_cmd(row, side, args, work), capture_output=True, text=True, cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    result = json.loads(lines[-1]) if lines else {}
    if proc.returncode or not lines or "error" in result:
        return {"error": result.get("error") or (proc.stderr.strip().splitlines() or ["no output"])[-1]}
    return {"seconds": result.get("seconds", result.get("step_s")), "peak_rss_gib": result["peak_rss_gib"]}


def _agreement(work: Path, row: str) -> str:
    import numpy as np

    ours, theirs = work / f"probs_{row}.npy", work / "probs_official.npy"
    if not (ours.exists() and theirs.exists()):
        return ""
    a, b = np.load(ours), np.load(theirs)
    same = float((a.argmax(0) == b.argmax(0)).mean())
    return (f"probabilities within {float(np.abs(a - b).max()):.1e} of the official, "
            f"argmax agreement {100 * same:.2f} %")


def _setup(args, work: Path) -> None:
    """The official release (official code) and our checkpoint from it (our convert-weights)."""
    release = work / "release"
    if not args.official:  # our side alone, on our default seg_tiny_mask's random weights
        from base.device import setup_context
        from model.segmenter import build_segmenter
        from settings.files import load_config
        from weights.checkpoint import save_model

        setup_context("CPU", "graph", 0)
        cfg = load_config(ROOT / "configs" / "seg_tiny_mask.yaml")
        cfg.eval.window_size, cfg.eval.window_stride = WINDOW, STRIDE
        save_model(build_segmenter(cfg.model), work / "ours.ckpt", cfg)
        return
    subprocess.run([args.official_python, __file__, "--make-release", str(release), "--official",
                    str(args.official)], check=True, cwd=ROOT)
    subprocess.run([sys.executable, str(ROOT / "cli.py"), "convert-weights", str(release), "--out",
                    str(work / "ours.ckpt")], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, help="checkout of the official Segmenter repository")
    parser.add_argument("--official-python", default=sys.executable,
                        help="interpreter with torch, timm, einops for the official side (default: this one)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rows", default=",".join(ROWS[:4]))
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--ms-threads", type=int, default=None, help="MindSpore CPU kernel threads")
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("ROW", "SIDE"), help=argparse.SUPPRESS)
    parser.add_argument("--make-release", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--profile-official", action="store_true",
                        help="only profile the official forward (torch.profiler; ours: bench/profile_ops.py)")
    args = parser.parse_args()
    if args.official is not None and not (args.official / "segm" / "model" / "factory.py").is_file():
        raise SystemExit(f"error: --official {args.official}: not a checkout of the official Segmenter "
                         "(no segm.model.factory module there)")
    if args.official is not None:  # the children run in the repository root
        args.official = args.official.resolve()
    if args.profile_official:
        if args.official is None:
            raise SystemExit("error: --profile-official needs --official PATH")
        with tempfile.TemporaryDirectory(prefix="bench_vs_official_") as tmp:
            profile_official(args.official, args.threads, args.repeats, Path(tmp))
        return
    if args.make_release:
        make_release(args.official, args.make_release)
        return
    if args.child:
        row, side = args.child
        if side == "official":
            seconds = _official(row, args.repeats, args.threads, args.official, args.work)
        else:
            seconds = _ours(row, args.repeats, args.ms_threads, args.work)
        print(json.dumps({"seconds": seconds, "peak_rss_gib": _peak_gib()}), flush=True)
        return
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        raise SystemExit(f"error: --rows: unknown {unknown}; choose from {','.join(ROWS)}")
    if args.official is None:
        print("no --official checkout given: timing our side only, on random weights; ratios need the official "
              "code (git clone https://github.com/rstrudel/segmenter, then --official PATH)", flush=True)
    sides = ("ours", "official") if args.official else ("ours",)
    with tempfile.TemporaryDirectory(prefix="bench_vs_official_") as tmp:
        work = Path(tmp)
        _setup(args, work)
        results, failed = _rounds(rows, sides, args, work)
        agreements = {row: _agreement(work, row) for row in rows if _task(row) == "predict"}
    _table(rows, sides, results, agreements, failed, args)


def _rounds(rows, sides, args, work: Path):
    """{(row, side): [measurement per round]} and {row: error} of the rows that failed."""
    results = {(row, side): [] for row in rows for side in sides}
    official_done, failed = set(), {}
    for r in range(args.rounds):
        for row in rows:
            for side in sides if r % 2 == 0 else sides[::-1]:
                key = (_task(row), r)  # the predict rows share one official predict per round
                if side == "official" and key in official_done or row in failed:
                    continue
                result = _measure(row, side, args, work)
                print(json.dumps({"round": r, "row": row, "side": side, **result}), flush=True)
                if "error" in result:
                    failed[row] = f"{side}: {result['error']}"
                    continue
                results[(row, side)].append(result)
                if side == "official":
                    official_done.add(key)
                    for other in rows:
                        if other != row and _task(other) == _task(row):
                            results[(other, side)].append(result)
    return results, failed


def _table(rows, sides, results, agreements, failed, args) -> None:
    import mindspore

    median = lambda xs: statistics.median(xs)  # noqa: E731
    versus = f" vs the official code (torch eager, {args.threads} threads)" if len(sides) == 2 else ""
    threads = args.ms_threads or "its default"
    print(f"\nMindSpore {mindspore.__version__} GRAPH_MODE (kernel threads: {threads}){versus}; "
          f"{os.cpu_count()} cores; median of {args.rounds} rounds x {args.repeats} calls")
    if len(sides) == 1:
        print("no ratios: they need --official PATH")
        print("| row | ours s | ours peak RSS GiB |\n|---|---|---|")
        for row in rows:
            ours = results[(row, "ours")]
            if row in failed:
                print(f"| {row} | error ({failed[row]}) | |")
                continue
            print(f"| {row} | {median(o['seconds'] for o in ours):.3f} | {max(o['peak_rss_gib'] for o in ours):.2f} |")
        return
    print("| row | ours s | official s | ratio | ours peak RSS GiB | official peak RSS GiB | agreement |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        ours, theirs = results[(row, "ours")], results[(row, "official")]
        if row in failed or not ours or not theirs:
            print(f"| {row} | error ({failed.get(row, 'the official side failed')}) | | | | | |")
            continue
        if row == "train":
            ratio = f"{median(o['seconds'] / t['seconds'] for o, t in zip(ours, theirs)):.2f}x its time"
        else:
            ratio = f"{median(t['seconds'] / o['seconds'] for o, t in zip(ours, theirs)):.2f}x its speed"
        print(f"| {row} | {median(o['seconds'] for o in ours):.3f} | {median(t['seconds'] for t in theirs):.3f} | "
              f"{ratio} | {max(o['peak_rss_gib'] for o in ours):.2f} | "
              f"{max(t['peak_rss_gib'] for t in theirs):.2f} | {agreements.get(row, '')} |")


if __name__ == "__main__":
    main()

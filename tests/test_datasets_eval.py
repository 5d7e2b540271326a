"""Each data set evaluated as the official code evaluates it: mmcv's imrescale, the data set's
window protocol (overridden by the config, then by options), mmseg's mean_iou, exports in the
data's label encoding and per-class output under the data set's class names."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

import cli
from base.network_input import inference_size, network_input, normalize, rescale_size
from evaluate.metrics import ConfusionMatrix, compute_metrics, format_table
from settings.datasets import DatasetEval, load_dataset
from settings.files import apply_overrides, load_config
from settings.schema import Config, ConfigError, with_eval_protocol

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
MEAN, STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
TINY = ["model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.decoder.n_layers=1",
        "model.image_size=[32,32]", "model.drop_path_rate=0.0", "mode=pynative", "data.num_parallel_workers=1"]
# (h, w) of the ADE-like images: both orientations, and one whose long side hits the cap below.
ADE_SIZES = [(40, 56), (56, 40), (36, 36), (20, 150)]


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args], catch_exceptions=False)


def mmcv_imrescale_size(h, w, scale):
    """mmcv 1.3.8 `rescale_size((w, h), scale)` as written there, scale = (long, short) edges."""
    max_long_edge, max_short_edge = max(scale), min(scale)
    factor = min(max_long_edge / max(h, w), max_short_edge / min(h, w))
    new_w, new_h = int(w * float(factor) + 0.5), int(h * float(factor) + 0.5)
    return new_h, new_w


@pytest.mark.parametrize("h, w, short, long", [(375, 500, 512, 2048), (512, 683, 512, 2048), (100, 1000, 512, 2048),
                                               (50, 4000, 512, 2048), (20, 150, 32, 64), (333, 500, 520, 4160),
                                               (512, 512, 512, 2048), (7, 3, 3000, 2048)])
def test_rescale_size_is_mmcv_imrescale(h, w, short, long):
    assert rescale_size(h, w, short, long) == mmcv_imrescale_size(h, w, (long, short))
    assert inference_size(h, w, short, long) == rescale_size(h, w, short, long)
    assert inference_size(h, w, 0, long) == (h, w)  # --infer-size 0: the image's own size


@pytest.mark.parametrize("h, w", [(37, 53), (53, 37), (20, 300), (64, 48)])
def test_network_input_resizes_the_uint8_image_with_cv2_then_normalizes(h, w):
    rgb = np.random.default_rng(h * w).integers(0, 256, (h, w, 3), dtype=np.uint8)
    size = rescale_size(h, w, 32, 64)
    if (h, w) == (20, 300):
        assert size == (4, 64)  # the long-side cap decides, not the short side
    resized = cv2.resize(rgb, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    expected = ((resized.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).transpose(2, 0, 1)
    got = network_input(rgb, MEAN, STD, 32, max_long_side=64)
    assert got.shape == (3, *size) and got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)
    # The Cityscapes protocol (no long-side cap) is unchanged: normalize, then resize the floats.
    assert network_input(rgb, MEAN, STD, 0, max_long_side=64).tobytes() == normalize(rgb, MEAN, STD).tobytes()


def test_eval_keys_come_from_the_data_set_unless_the_config_or_an_option_sets_them():
    ade = load_dataset("ade20k").eval
    cfg = with_eval_protocol(Config(), ade, "ade20k")
    e = cfg.eval
    assert (e.window_size, e.window_stride, e.infer_size, e.max_long_side) == (512, 512, 512, 2048)
    # The config's own keys win over the data's; what it leaves open still comes from the data.
    cityscapes = with_eval_protocol(load_config(CONFIGS / "cityscapes.yaml"), ade, "ade20k").eval
    assert (cityscapes.window_size, cityscapes.window_stride, cityscapes.infer_size) == (768, 512, 1024)
    assert cityscapes.max_long_side == 2048
    demo = load_config(CONFIGS / "seg_tiny_demo.yaml").eval
    assert (demo.window_size, demo.window_stride, demo.infer_size) == (128, 128, 256)
    # An option (applied as an override) wins over both.
    opt = with_eval_protocol(apply_overrides(Config(), ["eval.window_stride=480"], "options"), ade, "ade20k").eval
    assert (opt.window_size, opt.window_stride) == (512, 480)
    with pytest.raises(ConfigError, match="window_stride.*from the data set's protocol"):
        with_eval_protocol(apply_overrides(Config(), ["eval.window_stride=600"], "options"), ade, "ade20k")
    # Cityscapes' own data keeps today's protocol whatever the config leaves open.
    cs = with_eval_protocol(Config(), load_dataset("cityscapes").eval, "cityscapes").eval
    assert (cs.window_size, cs.window_stride, cs.infer_size, cs.max_long_side) == (768, 512, 1024, 0)


# (window_size, window_stride, infer_size, max_long_side) each config sets itself: Cityscapes'
# (configs/cityscapes.yaml) unless named here; the ADE20K/Pascal Context recipes leave them to the data.
OWN_EVAL = {"seg_tiny_demo.yaml": (128, 128, 256, None), "seg_large_mask_ade20k.yaml": (640, 640, 640, 2560)}
DATA_DECIDES = {"ade20k.yaml", "pascal_context.yaml", "my_dataset.yaml", "seg_tiny_mask_ade20k.yaml",
                "seg_small_mask_ade20k.yaml", "seg_base_mask_ade20k.yaml", "seg_large_mask_pascal_context.yaml"}


def test_every_config_loads_and_cityscapes_ones_keep_their_eval_keys():
    cityscapes = load_dataset("cityscapes").eval
    for path in sorted(CONFIGS.glob("*.yaml")):
        e = load_config(path).eval
        own = (e.window_size, e.window_stride, e.infer_size, e.max_long_side)
        expected = (None,) * 4 if path.name in DATA_DECIDES else OWN_EVAL.get(path.name, (768, 512, 1024, None))
        assert own == expected, path.name
        resolved = with_eval_protocol(load_config(path), cityscapes, "cityscapes").eval
        assert (resolved.window_size, resolved.window_stride, resolved.infer_size) == \
            tuple(k if k is not None else c for k, c in zip(own, (768, 512, 1024))), path.name


def np_mean_iou(preds, gts, n_cls, ignore=255):
    """mmseg 0.14 `mean_iou` (intersect_and_union per image, totals, IoU, nanmean), in plain NumPy."""
    inter, union, label_area = np.zeros(n_cls), np.zeros(n_cls), np.zeros(n_cls)
    for pred, gt in zip(preds, gts):
        mask = gt != ignore
        p, g = pred[mask].astype(np.int64), gt[mask].astype(np.int64)
        i = np.bincount(p[p == g], minlength=n_cls)[:n_cls]
        a_pred = np.bincount(p, minlength=n_cls)[:n_cls]
        a_label = np.bincount(g, minlength=n_cls)[:n_cls]
        inter, union, label_area = inter + i, union + a_pred + a_label - i, label_area + a_label
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = inter / union
    return iou, np.nanmean(iou), inter.sum() / label_area.sum()


def test_mmseg_scores_from_the_matrix_are_mean_iou():
    rng = np.random.default_rng(3)
    table = load_dataset("ade20k").class_table()
    gts = [rng.integers(0, 151, (9, 13)).astype(np.uint8) for _ in range(4)]
    gts = [np.where(g == 150, 255, g).astype(np.uint8) for g in gts]
    preds = [rng.integers(0, 6, (9, 13)).astype(np.uint8) for _ in range(4)]
    cm = ConfusionMatrix(table.n_cls, table.ignore_index)
    for g, p in zip(gts, preds):
        cm.update(g, p)
    m = compute_metrics(cm.matrix, table)
    iou, miou, acc = np_mean_iou(preds, gts, 150)
    assert m["mIoU"] == pytest.approx(miou, abs=1e-12) and m["pixel_accuracy"] == pytest.approx(acc, abs=1e-12)
    assert list(m["per_class"]) == list(table.names) and m["categories"] == {}
    assert [v is None for v in m["per_class"].values()] == list(np.isnan(iou))
    text = format_table(m)
    assert "wall" in text and "bus, autobus" not in text  # first names, in columns
    assert max(len(line) for line in text.splitlines()) <= 100 and len(text.splitlines()) < 70
    assert f"{'mIoU':<16}{100 * m['mIoU']:7.2f}" in text


def _tiny_checkpoint(folder: Path, table, protocol, extra=()):
    import mindspore as ms  # noqa: F401  (the model is a MindSpore network)

    from base.device import setup_context
    from model.segmenter import build_segmenter
    from weights.checkpoint import save_model

    cfg = apply_overrides(Config(), TINY + [f"model.n_cls={table.n_cls}"] + list(extra), "test")
    setup_context("CPU", "pynative", 0)
    net = build_segmenter(cfg.model)
    ckpt = folder / "tiny.ckpt"
    save_model(net, ckpt, cfg, dataset=(table, protocol))
    return ckpt


def _ade_tree(root: Path) -> dict:
    """ADEChallengeData2016 in small: JPEGs of several sizes, labels 0..150 (0 = other)."""
    rng = np.random.default_rng(5)
    labels = {}
    for i, (h, w) in enumerate(ADE_SIZES):
        stem = f"ADE_val_{i + 1:08d}"
        for sub in ("images", "annotations"):
            (root / sub / "validation").mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cv2.imwrite(str(root / "images" / "validation" / f"{stem}.jpg"), image)
        label = rng.integers(0, 151, (h, w)).astype(np.uint8)
        label[: h // 2, : w // 2] = rng.integers(1, 4)  # a few classes the model may well predict
        cv2.imwrite(str(root / "annotations" / "validation" / f"{stem}.png"), label)
        labels[stem] = label
    return labels


@pytest.fixture(scope="module")
def ade(tmp_path_factory):
    from prep.build import build

    work = tmp_path_factory.mktemp("ade")
    root, out = work / "ADEChallengeData2016", work / "records"
    labels = _ade_tree(root)
    build(root, out, splits=("val",), workers=1, shard_size=2, dataset="ade20k", echo=lambda *a, **k: None)
    spec = load_dataset("ade20k")
    return {"out": out, "labels": labels, "ckpt": _tiny_checkpoint(work, spec.class_table(), spec.eval)}


def test_ade20k_eval_is_mmseg_mean_iou_of_its_own_exports(ade, tmp_path):
    preds, out_json = tmp_path / "preds", tmp_path / "m.json"
    # The data's protocol at a test's scale: imrescale to (2048, 32) (its long-side cap stays), windows 32/24.
    r = run("eval", "--checkpoint", ade["ckpt"], "--data", ade["out"], "--infer-size", 32, "--window", 32,
            "--stride", 24, "--save-predictions", preds, "--json", out_json)
    assert r.exit_code == 0, r.output + r.stderr
    assert "window 32, stride 24, infer size 32 (long side at most 2048)" in r.output
    metrics = json.loads(out_json.read_text())
    names = load_dataset("ade20k").classes
    assert list(metrics["per_class"]) == names and metrics["images"] == len(ADE_SIZES)
    exported, gts = [], []
    for stem, source in ade["labels"].items():
        png = cv2.imread(str(preds / f"{stem}.png"), cv2.IMREAD_UNCHANGED)
        assert png.shape == source.shape and png.dtype == np.uint8 and png.min() >= 1 and png.max() <= 150
        assert cv2.imread(str(preds / "color" / f"{stem}.png")).shape == (*source.shape, 3)
        exported.append(png - 1)  # the challenge's format holds class + 1
        gts.append(np.where(source == 0, 255, source - 1).astype(np.uint8))  # reduce_zero_label
    iou, miou, acc = np_mean_iou(exported, gts, 150)
    assert abs(metrics["mIoU"] - miou) <= 1e-9 and abs(metrics["pixel_accuracy"] - acc) <= 1e-9
    ours = np.array([np.nan if v is None else v for v in metrics["per_class"].values()])
    np.testing.assert_allclose(ours, iou, atol=1e-9, equal_nan=True)
    assert f"{'mIoU':<16}{100 * metrics['mIoU']:7.2f}" in r.output
    assert json.loads((preds / "manifest.json").read_text())["layout"]["label_offset"] == 1


def _folder_dataset(root: Path) -> Path:
    """A 3-class data set in mmseg's folder convention with its own eval block, and its dataset file."""
    rng = np.random.default_rng(8)
    for i, (h, w) in enumerate([(40, 50), (48, 36)]):
        for sub, ext in (("img", ".jpg"), ("ann", ".png")):
            (root / sub / "val" / "sub").mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "img" / "val" / "sub" / f"s{i}.jpg"), rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        cv2.imwrite(str(root / "ann" / "val" / "sub" / f"s{i}.png"), rng.integers(0, 3, (h, w)).astype(np.uint8))
    spec = root / "three.yaml"
    spec.write_text("name: three\nclasses: [sky, tree, rock]\npalette: [[0, 0, 255], [0, 255, 0], [90, 90, 90]]\n"
                    "img_dir: img/{split}\nann_dir: ann/{split}\nimg_suffix: .jpg\nseg_map_suffix: .png\n"
                    "eval: {infer_size: 40, max_long_side: 64, window: 32, stride: 24}\n")
    return spec


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    from prep.build import build
    from settings.datasets import load_dataset as load

    work = tmp_path_factory.mktemp("three")
    root, out = work / "three", work / "records"
    spec_file = _folder_dataset(root)
    build(root, out, splits=("val",), workers=1, shard_size=4, dataset=str(spec_file), echo=lambda *a, **k: None)
    spec = load(str(spec_file))
    return {"out": out, "ckpt": _tiny_checkpoint(work, spec.class_table(), spec.eval), "work": work}


def test_a_dataset_files_eval_block_sets_the_windows_and_options_override_it(three, tmp_path):
    preds = tmp_path / "p"
    r = run("eval", "--checkpoint", three["ckpt"], "--data", three["out"], "--save-predictions", preds)
    assert r.exit_code == 0, r.output + r.stderr
    assert "window 32, stride 24, infer size 40 (long side at most 64)" in r.output
    assert "three: 3 classes" in r.output and "sky" in r.output and "rock" in r.output
    for i, (h, w) in enumerate([(40, 50), (48, 36)]):
        png = cv2.imread(str(preds / "sub" / f"s{i}.png"), cv2.IMREAD_UNCHANGED)  # {id}.png, id = sub/s{i}
        assert png.shape == (h, w) and png.max() <= 2  # class indices, no offset
        assert (preds / "color" / "sub" / f"s{i}.png").is_file()
    r = run("eval", "--checkpoint", three["ckpt"], "--data", three["out"], "--window", 24, "--stride", 16,
            "--infer-size", 0)
    assert r.exit_code == 0, r.output + r.stderr
    assert "window 24, stride 16, infer size original" in r.output


def test_the_configs_eval_keys_win_over_the_data_sets(three, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(f"base: {three['ckpt'].with_suffix('.yaml')}\neval: {{window_size: 24, window_stride: 24}}\n")
    r = run("eval", "--checkpoint", three["ckpt"], "--config", config, "--data", three["out"])
    assert r.exit_code == 0, r.output + r.stderr
    assert "window 24, stride 24, infer size 40 (long side at most 64)" in r.output


def test_validation_scores_with_the_data_sets_metric_and_names(three):
    from base.device import setup_context
    from evaluate.evaluator import evaluate_split
    from weights.checkpoint import checkpoint_config, load_model
    from train.validation import validate

    cfg = checkpoint_config(three["ckpt"])
    setup_context("CPU", "pynative", 0)
    net = load_model(three["ckpt"], cfg)
    logged = []

    class Run:
        writer = True

        def log(self, record):
            logged.append(record)

    miou = validate(net, cfg, three["out"], 7, Run(), lambda line: logged.append(line))
    metrics = evaluate_split(net, cfg, three["out"], "val", show_progress=False)
    records, lines = [x for x in logged if isinstance(x, dict)], [x for x in logged if isinstance(x, str)]
    assert miou == metrics["mIoU"] and list(records[0]["per_class"]) == ["sky", "tree", "rock"]
    assert metrics["categories"] == {} and lines[-1].startswith(f"step 7: val mIoU {100 * miou:.2f} on 2 images, ")
    assert lines[0].startswith("eval val: 1/2 img")  # progress through the run's log, then the summary


GOLDEN = Path(__file__).resolve().parent / "fixtures" / "golden_ade20k"
CASES = {"s24": 24, "s32": 32}


@pytest.fixture(scope="module")
def golden(tmp_path_factory):
    """The official 150-class release converted, its ADE20K tree built (the fixture's own protocol
    sits in the converted config: img_scale (128, 32), window 32)."""
    from prep.build import build

    work = tmp_path_factory.mktemp("golden")
    r = run("convert-weights", GOLDEN / "release", "--out", work / "ade.ckpt")
    assert r.exit_code == 0, r.output + r.stderr
    build(GOLDEN / "tree" / "ADEChallengeData2016", work / "records", splits=("val",), workers=1, shard_size=3,
          dataset="ade20k", echo=lambda *a, **k: None)
    return {"ckpt": work / "ade.ckpt", "out": work / "records", "official": np.load(GOLDEN / "official_preds.npz")}


@pytest.mark.parametrize("case", CASES)
def test_predict_reproduces_the_official_ade20k_probabilities(golden, case, tmp_path):
    ref = np.load(GOLDEN / "probs.npz")
    out = tmp_path / "pred"
    r = run("predict", GOLDEN / "ADE_val_00000001.jpg", "--checkpoint", golden["ckpt"], "--out", out,
            "--stride", CASES[case], "--save-probs")
    assert r.exit_code == 0, r.output + r.stderr
    probs = np.load(out / "ADE_val_00000001_probs.npy")
    assert probs.shape == ref[f"probs_{case}"].shape
    np.testing.assert_allclose(probs, ref[f"probs_{case}"], atol=1e-4, rtol=0)
    assert (probs.argmax(0) == ref[f"labels_{case}"]).mean() >= 0.99


@pytest.mark.parametrize("case", CASES)
def test_eval_agrees_with_the_official_ade20k_evaluation(golden, case, tmp_path):
    official, preds, out_json = golden["official"], tmp_path / "preds", tmp_path / "m.json"
    r = run("eval", "--checkpoint", golden["ckpt"], "--data", golden["out"], "--stride", CASES[case],
            "--save-predictions", preds, "--json", out_json)
    assert r.exit_code == 0, r.output + r.stderr
    assert f"window 32, stride {CASES[case]}, infer size 32 (long side at most 128)" in r.output
    agree = total = 0
    for name in official["names"]:
        ours = cv2.imread(str(preds / f"{name}.png"), cv2.IMREAD_UNCHANGED).astype(np.int64) - 1
        theirs = official[f"pred_{case}_{name}"]
        agree, total = agree + int((ours == theirs).sum()), total + theirs.size
    assert agree / total >= 0.99, f"{agree} of {total} pixels agree"
    metrics = json.loads(out_json.read_text())
    assert abs(metrics["mIoU"] - float(official[f"miou_{case}"])) <= 1e-9
    assert abs(metrics["pixel_accuracy"] - float(official[f"aacc_{case}"])) <= 1e-9

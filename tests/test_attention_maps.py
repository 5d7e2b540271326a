"""`attention`: each head's attention maps equal the official show_attn_map.py's on a golden made
with the official code (tests/fixtures/golden_attention/README.md); the PNG grid has one tile per
head; bad layers, pixels and classes are refused before the model loads."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import cli
from analysis.attention_maps import attention_figure
from base.ownership import WRITTEN

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = FIXTURES / "golden_attention"
IMAGE = GOLDEN / "frankfurt_small_48x48.png"  # 48x48 = the release's image_size: no resize, no crop
STEM = IMAGE.stem
TOL = 1e-5
# The official maps were taken at x_patch 4, y_patch 1 (patch 8): pixel row 13, column 37 lies in it.
PIXEL = "13,37"


def run(*args):
    return CliRunner(mix_stderr=False).invoke(cli.main, [str(a) for a in args])


@pytest.fixture(scope="module")
def official():
    return np.load(GOLDEN / "official_attention.npz")


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    out = tmp_path_factory.mktemp("attention")
    paths = {}
    for name in ("mask", "linear"):
        paths[name] = out / f"{name}.ckpt"
        result = run("convert-weights", FIXTURES / "golden" / f"seg_golden_{name}" / "checkpoint.pth", "--out",
                     paths[name])
        assert result.exit_code == 0, result.output + result.stderr
    return paths


def attention(ckpts, out, *args, image=IMAGE):
    result = run("attention", image, "--checkpoint", ckpts["mask"], "--out", out, *args)
    assert result.exit_code == 0, result.output + result.stderr
    return result


def test_encoder_maps_equal_official(ckpts, official, tmp_path):
    out = tmp_path / "maps"
    result = attention(ckpts, out, "--layer", "enc:-1", "--pixel", PIXEL, "--class-token")
    assert "2 queries at encoder layer 1" in result.output
    np.testing.assert_allclose(np.load(out / f"{STEM}_enc1_y13x37.npy"), official["enc1_patch"][:, 0], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.load(out / f"{STEM}_enc1_cls.npy"), official["enc1_cls"][:, 0], atol=TOL, rtol=0)
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [WRITTEN] + [f"{STEM}_enc1_{q}.{ext}" for q in ("y13x37", "cls") for ext in ("png", "npy")])
    grid = Image.open(out / f"{STEM}_enc1_y13x37.png")
    assert grid.format == "PNG" and grid.width > 200 and grid.height > 200


def test_pixel_is_mapped_through_the_resize(ckpts, official, tmp_path):
    # Every pixel doubled: the bilinear halving back to --infer-size 48 gives the golden's input exactly,
    # and pixel (26, 74) of the large image lies in the same patch as (13, 37) of the small one.
    big = tmp_path / "big.png"
    Image.fromarray(np.asarray(Image.open(IMAGE)).repeat(2, 0).repeat(2, 1)).save(big)
    out = tmp_path / "maps"
    attention(ckpts, out, "--layer", "enc:0", "--pixel", "26,74", "--infer-size", 48, image=big)
    np.testing.assert_allclose(np.load(out / "big_enc0_y26x74.npy"), official["enc0_patch"][:, 0], atol=TOL, rtol=0)


@pytest.mark.parametrize("layer,name", [("dec:1", "dec1"), ("dec:0", "dec0")])
def test_decoder_maps_equal_official(ckpts, official, tmp_path, layer, name):
    out = tmp_path / "maps"
    attention(ckpts, out, "--layer", layer, "--class", "car", "--class", "traffic light", "--pixel", PIXEL)
    cls = official[f"{name}_cls"]  # (heads, 19 classes, 6, 6): car is 13, traffic light 6
    np.testing.assert_allclose(np.load(out / f"{STEM}_{name}_class13-car.npy"), cls[:, 13], atol=TOL, rtol=0)
    np.testing.assert_allclose(np.load(out / f"{STEM}_{name}_class6-traffic-light.npy"), cls[:, 6], atol=TOL, rtol=0)
    if name == "dec1":
        np.testing.assert_allclose(np.load(out / f"{STEM}_dec1_y13x37.npy"), official["dec1_patch"][:, 0], atol=TOL,
                                   rtol=0)


def test_grid_has_the_input_and_one_labelled_tile_per_head():
    maps = np.random.default_rng(0).random((5, 3, 4), dtype=np.float32)
    fig = attention_figure(np.zeros((24, 32, 3), np.uint8), maps, 8, (1, 2), "title")
    assert [ax.get_title() for ax in fig.axes] == ["input"] + [f"head {i}" for i in range(5)]
    shown = fig.axes[3].images[0].get_array()  # head 2, each patch value repeated over its 8x8 pixels
    np.testing.assert_array_equal(shown, maps[2].repeat(8, 0).repeat(8, 1)[:24, :32])


@pytest.mark.parametrize("args,message", [
    (["--layer", "enc:2", "--pixel", PIXEL], "--layer enc:2: the encoder has 2 layers: 0..1"),
    (["--layer", "dec:-3", "--pixel", PIXEL], "--layer dec:-3: the decoder has 2 layers"),
    (["--layer", "encoder", "--pixel", PIXEL], "expected enc:N or dec:N"),
    (["--layer", "enc:0", "--pixel", "48,0"], "--pixel 48,0: outside the image (48x48"),
    (["--layer", "enc:0", "--pixel", "0,-1"], "--pixel 0,-1: outside the image"),
    (["--layer", "enc:0", "--pixel", "3"], "expected Y,X"),
    (["--layer", "enc:0", "--class", "car"], "class embeddings are decoder tokens"),
    (["--layer", "dec:0", "--class", "unicorn"], "--class 'unicorn': not a class of this model (cityscapes"),
    (["--layer", "dec:0", "--class-token"], "the class token is an encoder token"),
    (["--layer", "dec:0"], "give at least one query"),
])
def test_bad_queries_are_refused_before_the_model_loads(ckpts, tmp_path, args, message):
    out = tmp_path / "maps"
    result = run("attention", IMAGE, "--checkpoint", ckpts["mask"], "--out", out, *args)
    assert result.exit_code == 2 and result.stderr.startswith("error: ") and message in result.stderr, result.stderr
    assert not out.exists()


def test_linear_decoder_has_no_decoder_layers(ckpts, tmp_path):
    result = run("attention", IMAGE, "--checkpoint", ckpts["linear"], "--out", tmp_path / "m", "--layer", "dec:0",
                 "--pixel", PIXEL)
    assert result.exit_code == 2 and "the linear decoder has no attention" in result.stderr


def test_a_users_file_is_never_replaced(ckpts, tmp_path):
    out = tmp_path / "maps"
    out.mkdir()
    mine = out / f"{STEM}_enc0_cls.png"
    mine.write_bytes(b"mine")
    result = run("attention", IMAGE, "--checkpoint", ckpts["mask"], "--out", out, "--layer", "enc:0", "--class-token")
    assert result.exit_code == 2 and "exists and was not written by attention" in result.stderr
    assert mine.read_bytes() == b"mine" and sorted(p.name for p in out.iterdir()) == [mine.name]

"""`info`: parameters, FLOPs and sliding-window cost, against counts worked out by hand."""
from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

import cli
from base.device import setup_context
from analysis.info import forward_flops, parameter_counts
from model.segmenter import build_segmenter
from settings.files import apply_overrides, save_config
from settings.schema import Config

# d 32, 2 heads, 2 layers, patch 8, MLP 4 x 32 = 128, mask decoder of 1 layer, 19 classes.
TINY = ["model.d_model=32", "model.n_heads=2", "model.n_layers=2", "model.patch_size=8", "model.image_size=[32,32]",
        "model.decoder.n_layers=1", "eval.window_size=32", "eval.window_stride=24", "eval.infer_size=0",
        "eval.flip=false", "eval.scales=[1.0]"]

# By hand. One block: 2 LayerNorms (2 x 64) + qkv (32*96 + 96) + proj (32*32 + 32)
# + fc1 (32*128 + 128) + fc2 (128*32 + 32) = 128 + 3168 + 1056 + 4224 + 4128 = 12704.
BLOCK = 12704
PATCH_EMBED = 32 * 3 * 8 * 8 + 32  # 6176
TOKENS = 32 + (1 + 16) * 32  # class token + a 4x4 position grid with its class slot: 576
ENCODER = PATCH_EMBED + TOKENS + 2 * BLOCK + 64  # + final norm = 32224
# proj_dec (32*32 + 32) + cls_emb 19*32 + 1 block + proj_patch, proj_classes 2 * 32*32 + decoder_norm 64 + mask_norm 38
DECODER = 1056 + 608 + BLOCK + 2048 + 64 + 38  # 16518


def _flops_by_hand(h: int, w: int) -> tuple[int, int]:
    n = (h // 8) * (w // 8)

    def block(t):  # qkv, q·kᵀ and attn·v, proj, fc1 and fc2; 2 FLOPs per multiply-add
        return 2 * t * 32 * 96 + 2 * 2 * t * t * 32 + 2 * t * 32 * 32 + 2 * 2 * t * 32 * 128

    encoder = 2 * n * 192 * 32 + 2 * block(n + 1)
    decoder = 2 * n * 32 * 32 + block(n + 19) + 2 * n * 32 * 32 + 2 * 19 * 32 * 32 + 2 * n * 19 * 32
    return encoder, decoder


@pytest.fixture(scope="module")
def cfg():
    return apply_overrides(Config(), TINY, "test")


def test_parameter_counts_by_hand(cfg):
    setup_context("CPU", "pynative", 0)
    counts = parameter_counts(build_segmenter(cfg.model))
    assert counts["encoder.patch_embed"] == PATCH_EMBED and counts["encoder.tokens"] == TOKENS
    assert counts["encoder.blocks"] == 2 * BLOCK and counts["encoder.norm"] == 64
    assert (counts["encoder"], counts["decoder"], counts["total"]) == (ENCODER, DECODER, ENCODER + DECODER)


@pytest.mark.parametrize("h,w", [(32, 32), (48, 80), (36, 44)])  # 36x44 is padded to 40x48
def test_forward_flops_by_hand(cfg, h, w):
    ph, pw = -(-h // 8) * 8, -(-w // 8) * 8
    encoder, decoder = _flops_by_hand(ph, pw)
    assert forward_flops(cfg.model, h, w) == {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def test_linear_decoder_flops(cfg):
    lin = apply_overrides(cfg, ["model.decoder.name=linear", "model.decoder.n_layers=0"], "test").model
    assert forward_flops(lin, 32, 32)["decoder"] == 2 * 16 * 32 * 19


def test_info_cli(cfg, tmp_path):
    path = tmp_path / "tiny.yaml"
    save_config(cfg, path)
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["info", "--config", str(path), "--image-size", "48x96",
                                                      "--measure"])
    assert r.exit_code == 0, r.stderr
    encoder, decoder = _flops_by_hand(32, 32)
    assert f"parameters: {ENCODER + DECODER:,} = encoder {ENCODER:,}" in r.stdout
    assert f"decoder {DECODER:,}" in r.stdout
    assert f"forward 1x3x32x32: {(encoder + decoder) / 1e9:.3f} GFLOPs" in r.stdout
    # 48x96 with 32-pixel windows at stride 24: rows at 0 and 16, columns at 0, 24, 48, 64 -> 8.
    assert "8 windows" in r.stdout and f"{8 * (encoder + decoder) / 1e9:.1f} GFLOPs per image" in r.stdout
    assert "measured on this machine (CPU): forward" in r.stdout and "peak memory" in r.stdout


def test_info_needs_exactly_one_source(tmp_path):
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["info"])
    assert r.exit_code == 2 and "give --config CFG or --checkpoint CKPT" in r.stderr
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["info", "--checkpoint", str(tmp_path / "none.ckpt")])
    assert r.exit_code == 2 and "checkpoint not found" in r.stderr


def test_info_from_a_checkpoint_counts_its_model(tmp_path):
    from test_eval_cli import tiny_checkpoint

    ckpt = tiny_checkpoint(tmp_path)
    from settings.files import resolve_config

    setup_context("CPU", "pynative", 0)
    want = parameter_counts(build_segmenter(resolve_config(ckpt, None).model))["total"]
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["info", "--checkpoint", str(ckpt), "--size", "64x64"])
    assert r.exit_code == 0, r.stderr
    assert f"parameters: {want:,} =" in r.stdout and "forward 1x3x64x64:" in r.stdout


def test_info_sizes_as_eval_does_and_checks_the_configs_classes_against_the_data_set():
    configs = Path(__file__).resolve().parents[1] / "configs"
    # ADE20K's protocol: imrescale to (2048, 512), so a 512x2560 image is 410x2048, not 512x2560.
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["info", "--config", str(configs / "ade20k.yaml"),
                                                      "--dataset", "ade20k", "--image-size", "512x2560"])
    assert r.exit_code == 0, r.stderr
    assert "inference size 410x2048, window 512, stride 512" in r.stdout and "; 150 classes" in r.stdout
    r = CliRunner(mix_stderr=False).invoke(cli.main, ["info", "--config", str(configs / "cityscapes.yaml"),
                                                      "--dataset", "ade20k"])
    assert r.exit_code == 2 and "model.n_cls is 19 in" in r.stderr and "150 classes (ade20k)" in r.stderr

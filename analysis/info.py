"""What a model is: parameters per part, FLOPs of a forward, the sliding window's cost per image.

FLOPs are counted from the layer shapes, not traced: 2 per multiply-add of every matrix product
the forward runs (the patch projection, each Dense, the attention's q·kᵀ and attn·v, the Mask
Transformer's projections and class masks). Element-wise work (LayerNorm, softmax, GELU, the
bilinear upsampling, additions) is left out: the largest, softmax at about 5 operations per
attention score, is 1.3 % of a seg_tiny block's matrix FLOPs at 768x768. An image whose sides are
not multiples of the patch is padded, as the network pads it.
"""
from __future__ import annotations

import math

from analysis.memory import forward_attention_bytes


def _block_flops(tokens: int, dim: int, mlp_dim: int) -> int:
    qkv = 2 * tokens * dim * 3 * dim
    attention = 2 * (2 * tokens * tokens * dim)  # q·kᵀ and attn·v, all heads together
    proj = 2 * tokens * dim * dim
    mlp = 2 * (2 * tokens * dim * mlp_dim)
    return qkv + attention + proj + mlp


def forward_flops(model, height: int, width: int) -> dict:
    """FLOPs of one (1, 3, height, width) forward: {"encoder", "decoder", "total"}."""
    p, d = model.patch_size, model.d_model
    patches = math.ceil(height / p) * math.ceil(width / p)
    encoder = 2 * patches * 3 * p * p * d  # patch projection
    encoder += model.n_layers * _block_flops(patches + 1, d, model.mlp_ratio * d)
    dec, n_cls = model.decoder, model.n_cls
    if dec.name == "linear":
        decoder = 2 * patches * d * n_cls
    else:  # width d, d_ff 4d, as the official decoder (model/segmenter.py)
        decoder = 2 * patches * d * d  # proj_dec
        decoder += dec.n_layers * _block_flops(patches + n_cls, d, 4 * d)
        decoder += 2 * patches * d * d + 2 * n_cls * d * d  # proj_patch, proj_classes
        decoder += 2 * patches * n_cls * d  # class masks
    return {"encoder": encoder, "decoder": decoder, "total": encoder + decoder}


def _block_parameters(dim: int, mlp_dim: int) -> int:
    # norm1, norm2; qkv, proj; fc1, fc2 (each Dense with its bias)
    return 4 * dim + (3 * dim * dim + 3 * dim) + (dim * dim + dim) + (dim * mlp_dim + mlp_dim) + (mlp_dim * dim + dim)


def model_parameter_counts(model) -> dict:
    """`parameter_counts` worked out from the config alone (nothing built), layer by layer as
    `model.segmenter.build_segmenter` makes them."""
    p, d, n_cls = model.patch_size, model.d_model, model.n_cls
    grid = (model.image_size[0] // p) * (model.image_size[1] // p)
    counts = {"encoder.patch_embed": d * 3 * p * p + d, "encoder.tokens": d + (1 + grid) * d,
              "encoder.blocks": model.n_layers * _block_parameters(d, model.mlp_ratio * d), "encoder.norm": 2 * d}
    dec = model.decoder
    if dec.name == "linear":
        counts["decoder"] = d * n_cls + n_cls
    else:  # proj_dec, cls_emb, blocks (d_ff 4d), proj_patch and proj_classes (no bias), decoder_norm, mask_norm
        counts["decoder"] = (d * d + d) + n_cls * d + dec.n_layers * _block_parameters(d, 4 * d) + 2 * d * d \
            + 2 * d + 2 * n_cls
    counts["encoder"] = sum(v for k, v in counts.items() if k.startswith("encoder."))
    counts["total"] = counts["encoder"] + counts["decoder"]
    return {k: int(v) for k, v in counts.items()}


def parameter_counts(net) -> dict:
    """Parameters per part of a built Segmenter: encoder (patch embedding, class + position
    tokens, blocks, final norm) and decoder. The reference `model_parameter_counts` is tested against."""
    counts = {"encoder.patch_embed": 0, "encoder.tokens": 0, "encoder.blocks": 0, "encoder.norm": 0, "decoder": 0}
    for name, param in net.parameters_and_names():
        size = int(math.prod(param.shape))
        if name.startswith("decoder."):
            counts["decoder"] += size
        elif name.startswith("encoder.patch_embed."):
            counts["encoder.patch_embed"] += size
        elif name in ("encoder.cls_token", "encoder.pos_embed"):
            counts["encoder.tokens"] += size
        elif name.startswith("encoder.blocks."):
            counts["encoder.blocks"] += size
        else:
            counts["encoder.norm"] += size
    counts["encoder"] = sum(v for k, v in counts.items() if k.startswith("encoder."))
    counts["total"] = counts["encoder"] + counts["decoder"]
    return counts


def measure_forward(net, height: int, width: int) -> dict:
    """Run one forward at (1,3,H,W) and report what it took on this machine: seconds of the second
    call (the first compiles) and the process's peak resident memory before and after it."""
    import time

    import numpy as np
    import mindspore as ms

    before = peak_rss_bytes()
    x = ms.Tensor(np.zeros((1, 3, height, width), np.float32))
    net(x).asnumpy()
    start = time.perf_counter()
    net(x).asnumpy()
    return {"seconds": time.perf_counter() - start, "peak_before": before, "peak_after": peak_rss_bytes()}


def peak_rss_bytes() -> int:
    """The process's peak resident set (Linux VmHWM); 0 where /proc is not there."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def info_report(cfg, size, image_size, inference_size, windows: int, measured: dict | None) -> list:
    """The lines `info` prints: the model, its parameters per part, FLOPs and attention memory of a
    forward at `size` (h, w), the sliding window's cost on an `image_size` image resized to
    `inference_size` (`windows` windows), and `measured` (from `measure_forward`) if given."""
    m, e = cfg.model, cfg.eval
    (h, w), (ih, iw), (rh, rw) = size, image_size, inference_size
    params, flops = model_parameter_counts(m), forward_flops(m, h, w)
    window_flops = forward_flops(m, e.window_size, e.window_size)["total"]
    lines = [
        f"model: {m.backbone}, d_model {m.d_model}, {m.n_heads} heads, {m.n_layers} layers, patch {m.patch_size}; "
        f"decoder {m.decoder.name} ({m.decoder.n_layers} layers); {m.n_cls} classes",
        f"parameters: {params['total']:,} = encoder {params['encoder']:,} (patch embedding "
        f"{params['encoder.patch_embed']:,}, class + position tokens {params['encoder.tokens']:,}, blocks "
        f"{params['encoder.blocks']:,}, final norm {params['encoder.norm']:,}) + decoder {params['decoder']:,}",
        f"forward 1x3x{h}x{w}: {flops['total'] / 1e9:.3f} GFLOPs (encoder {flops['encoder'] / 1e9:.3f}, "
        f"decoder {flops['decoder'] / 1e9:.3f}; 2 per multiply-add of the matrix products, element-wise ops "
        f"not counted); attention maps {forward_attention_bytes(m, h, w) / 2**20:.1f} MiB per block",
        f"sliding window on a {ih}x{iw} image (inference size {rh}x{rw}, window {e.window_size}, stride "
        f"{e.window_stride}, flip {e.flip}, scales {e.scales}): {windows} windows, "
        f"{windows * window_flops / 1e9:.1f} GFLOPs per image"]
    if measured:
        peak, before = measured["peak_after"] / 2**30, measured["peak_before"] / 2**30
        lines.append(f"measured on this machine ({cfg.device_target}): forward {measured['seconds']:.3f} s, peak "
                     f"memory {peak:.2f} GiB ({peak - before:.2f} GiB above the peak before the forward: graph, "
                     "activations)")
    return lines

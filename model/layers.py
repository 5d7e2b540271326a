"""Transformer building blocks shared by the ViT encoder and the Mask Transformer decoder.

Parameter names follow the official PyTorch Segmenter state dict (`norm1.weight`,
`attn.qkv.bias`, `mlp.fc1.weight`, ...) so weight import is a plain name table.
"""
from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import TruncatedNormal, Zero, initializer

LN_EPS = 1e-5  # official Segmenter uses torch's default, not timm's 1e-6


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with torch-style `weight`/`bias` names."""

    def __init__(self, dim: int, eps: float = LN_EPS):
        super().__init__()
        self.eps = eps
        self.weight = Parameter(initializer("ones", (dim,), ms.float32), name="weight")
        self.bias = Parameter(initializer("zeros", (dim,), ms.float32), name="bias")
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        return self.norm(x, self.weight, self.bias)[0]


def dense(d_in: int, d_out: int) -> nn.Dense:
    """Linear layer initialised like the official `init_weights` (trunc-normal 0.02, zero bias)."""
    return nn.Dense(d_in, d_out, weight_init=TruncatedNormal(0.02), bias_init=Zero())


class MaybeDropout(nn.Cell):
    """Dropout that is absent from the graph when p == 0 (no mask tensors kept for backward)."""

    def __init__(self, p: float):
        super().__init__()
        self.active = p > 0
        self.drop = nn.Dropout(p=p) if self.active else None

    def construct(self, x):
        if self.active:
            return self.drop(x)
        return x


class DropPath(nn.Cell):
    """Stochastic depth: drop the whole residual branch per sample, rescale the kept ones."""

    def __init__(self, p: float):
        super().__init__()
        self.rate = p
        self.active = p > 0
        # Dropout of a (B,1,1) tensor of ones is exactly the per-sample keep mask / keep_prob.
        self.drop = nn.Dropout(p=p) if self.active else None

    def construct(self, x, keep=None):
        # `keep` (B,1,1), if given, is the per-sample mask already divided by the keep
        # probability: the per-block train step draws it on the host so that the recomputed
        # forward pass drops exactly the branches the first pass dropped.
        if keep is not None:
            return x * keep.astype(x.dtype)
        if self.active and self.training:
            mask = self.drop(ops.ones((x.shape[0], 1, 1), x.dtype))
            return x * mask
        return x


class Softmax(nn.Cell):
    """Softmax over the last axis with its backward written out: dx = p - y * (p @ 1), p = dy * y.

    MindSpore's CPU SoftmaxGrad spends most of its time in a last-axis ReduceSum; the same sum as a
    MatMul with a column of ones is an order of magnitude faster (figures: docs/mindspore_notes.md).
    """

    def __init__(self):
        super().__init__()
        self.softmax = ops.Softmax(axis=-1)

    def construct(self, x):
        return self.softmax(x)

    def bprop(self, x, out, dout):
        p = dout * out
        return (p - out * ops.matmul(p, ops.ones((out.shape[-1], 1), out.dtype)),)


class Attention(nn.Cell):
    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim ** -0.5
        self.qkv = dense(dim, dim * 3)
        self.proj = dense(dim, dim)
        self.attn_drop = MaybeDropout(dropout)
        self.proj_drop = MaybeDropout(dropout)
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.av = ops.BatchMatMul()
        self.softmax = Softmax()

    def attend(self, x):
        """Per-head attention probabilities (B, heads, N, N) before dropout, and the values
        (B, heads, N, hd), of tokens x (B, N, d): `construct` mixes the values with them, and the
        attention maps (analysis/attention_maps.py) read the probabilities."""
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        # Scale q (N x hd) rather than the N x N scores: same math, one less N x N tensor.
        return self.softmax(self.qk(q * self.scale, k)), v

    def construct(self, x):
        b, n, c = x.shape
        attn, v = self.attend(x)
        x = self.av(self.attn_drop(attn), v).transpose(0, 2, 1, 3).reshape(b, n, c)
        return self.proj_drop(self.proj(x))


class FeedForward(nn.Cell):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = dense(dim, hidden)
        self.act = nn.GELU(approximate=False)  # exact erf GELU, as torch.nn.GELU()
        self.fc2 = dense(hidden, dim)
        self.drop = MaybeDropout(dropout)

    def construct(self, x):
        x = self.drop(self.act(self.fc1(x)))
        return self.drop(self.fc2(x))


class Block(nn.Cell):
    """Pre-norm transformer block: x += dp(attn(ln1 x)); x += dp(mlp(ln2 x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float, drop_path: float):
        super().__init__()
        self.dim, self.heads, self.mlp_dim, self.dropout = dim, heads, mlp_dim, dropout
        self.norm1 = LayerNorm(dim)
        self.norm2 = LayerNorm(dim)
        self.attn = Attention(dim, heads, dropout)
        self.mlp = FeedForward(dim, mlp_dim, dropout)
        self.drop_path = DropPath(drop_path)

    def like(self) -> "Block":
        """A new block of the same shape and rates (the per-block train step's template)."""
        return Block(self.dim, self.heads, self.mlp_dim, self.dropout, self.drop_path.rate)

    def construct(self, x, keep=None):
        """`keep`: optional (2,B,1,1) drop-path masks for the attention and MLP branches."""
        keep_attn, keep_mlp = (None, None) if keep is None else (keep[0], keep[1])
        x = x + self.drop_path(self.attn(self.norm1(x)), keep_attn)
        return x + self.drop_path(self.mlp(self.norm2(x)), keep_mlp)


def drop_path_rates(rate: float, depth: int) -> list:
    """linspace(0, rate, depth), as the official code."""
    return [float(r) for r in np.linspace(0.0, rate, depth)] if depth else []


def trunc_normal_param(shape, std: float, name: str) -> Parameter:
    return Parameter(initializer(TruncatedNormal(std), shape, ms.float32), name=name)


def normal_param(shape, std: float, name: str) -> Parameter:
    return Parameter(initializer(ms.common.initializer.Normal(std), shape, ms.float32), name=name)


"""ViT encoder exactly as the official Segmenter computes it (docs/model.md)."""
from __future__ import annotations

import math

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import HeUniform, Uniform, initializer

from model.layers import Block, LayerNorm, MaybeDropout, drop_path_rates, trunc_normal_param


def resize_pos_embed(pos_embed, old_grid, new_grid):
    """Bilinear (align_corners=False) resize of the patch part of (1, 1+gh*gw, d); class token kept aside."""
    if tuple(old_grid) == tuple(new_grid):
        return pos_embed
    d = pos_embed.shape[2]
    tok = pos_embed[:, :1]
    grid = pos_embed[:, 1:].reshape(1, old_grid[0], old_grid[1], d).transpose(0, 3, 1, 2)
    grid = ops.interpolate(grid, size=(new_grid[0], new_grid[1]), mode="bilinear", align_corners=False)
    grid = grid.transpose(0, 2, 3, 1).reshape(1, new_grid[0] * new_grid[1], d)
    return ops.concat((tok, grid), axis=1)


class PatchProjection(nn.Cell):
    """The official `Conv2d(C, d, kernel_size=p, stride=p)` computed as patchify + one MatMul.

    Same weight (d, C, p, p) and bias (d,), initialised as `nn.Conv2d` initialises them; MindSpore's
    CPU Conv2d with kernel = stride is about a hundred times slower (docs/mindspore_notes.md).
    Returns the tokens (B, gh*gw, d) in row-major patch order.
    """

    def __init__(self, channels: int, dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.dim = dim
        shape = (dim, channels, patch_size, patch_size)
        self.weight = Parameter(initializer(HeUniform(math.sqrt(5)), shape, ms.float32), name="weight")
        bound = 1 / math.sqrt(channels * patch_size * patch_size)
        self.bias = Parameter(initializer(Uniform(bound), (dim,), ms.float32), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)

    def construct(self, im):
        b, c, h, w = im.shape
        p = self.patch_size
        gh, gw = h // p, w // p
        # (B,C,gh,p,gw,p) -> (B,gh,gw,C,p,p): each row is one patch in the weight's (C,p,p) order.
        x = im.reshape(b, c, gh, p, gw, p).transpose(0, 2, 4, 1, 3, 5).reshape(b * gh * gw, c * p * p)
        x = self.matmul(x, self.weight.reshape(self.dim, c * p * p).astype(x.dtype)) + self.bias.astype(x.dtype)
        return x.reshape(b, gh * gw, self.dim)


class PatchEmbedding(nn.Cell):
    def __init__(self, patch_size: int, dim: int, channels: int = 3):
        super().__init__()
        self.proj = PatchProjection(channels, dim, patch_size)

    def construct(self, im):
        return self.proj(im)


class VisionTransformer(nn.Cell):
    """Returns the final-norm features (B, 1+N, d) of an image whose sides are multiples of the patch.

    `embed` (patches, class token, position) and `norm` are also called on their own by the per-block
    train step, which runs the blocks between them one graph at a time."""

    def __init__(self, image_size, patch_size: int, n_layers: int, d_model: int, d_ff: int, n_heads: int,
                 dropout: float = 0.0, drop_path_rate: float = 0.0, channels: int = 3):
        super().__init__()
        if image_size[0] % patch_size or image_size[1] % patch_size:
            raise ValueError(f"image size {tuple(image_size)} is not a multiple of the patch size {patch_size}")
        self.patch_size = patch_size
        self.d_model = d_model
        self.grid_size = (image_size[0] // patch_size, image_size[1] // patch_size)
        self.patch_embed = PatchEmbedding(patch_size, d_model, channels)
        self.cls_token = trunc_normal_param((1, 1, d_model), 0.02, "cls_token")
        self.pos_embed = trunc_normal_param((1, 1 + self.grid_size[0] * self.grid_size[1], d_model), 0.02,
                                            "pos_embed")
        self.dropout = MaybeDropout(dropout)
        self.blocks = nn.CellList([Block(d_model, n_heads, d_ff, dropout, r)
                                   for r in drop_path_rates(drop_path_rate, n_layers)])
        self.norm = LayerNorm(d_model)

    def embed(self, im):
        """Patch tokens with the class token and position embedding: the blocks' input."""
        b, _, h, w = im.shape
        x = self.patch_embed(im)
        # Raw Parameters follow the activations' dtype (float16 under mixed precision).
        cls = ops.broadcast_to(self.cls_token.astype(x.dtype), (b, 1, self.d_model))
        x = ops.concat((cls, x), axis=1)
        pos = resize_pos_embed(self.pos_embed, self.grid_size,
                               (h // self.patch_size, w // self.patch_size)).astype(x.dtype)
        return self.dropout(x + pos)

    def construct(self, im, keeps=None):
        """Final-norm features; `keeps`: optional per-block (2,B,1,1) drop-path masks (training)."""
        x = self.embed(im)
        for i, blk in enumerate(self.blocks):
            x = blk(x, None if keeps is None else keeps[i])
        return self.norm(x)

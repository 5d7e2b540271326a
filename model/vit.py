"""ViT encoder exactly as the official Segmenter computes it (docs/model.md)."""
from __future__ import annotations

from mindspore import nn, ops

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


class PatchEmbedding(nn.Cell):
    def __init__(self, patch_size: int, dim: int, channels: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(channels, dim, kernel_size=patch_size, stride=patch_size, pad_mode="valid",
                              has_bias=True)

    def construct(self, im):
        x = self.proj(im)  # (B, d, gh, gw)
        b, d = x.shape[0], x.shape[1]
        return x.reshape(b, d, -1).transpose(0, 2, 1)  # tokens row-major


class VisionTransformer(nn.Cell):
    """Returns the final-norm features (B, 1+N, d) of an image whose sides are multiples of the patch."""

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

    def construct(self, im):
        x = self.embed(im)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)



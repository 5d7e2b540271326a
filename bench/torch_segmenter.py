"""The PyTorch side of bench/bench_vs_pytorch.py: Segmenter as the official code computes it.

Written for the benchmark from the published model math (docs/model.md), not copied: pre-norm
blocks with an explicit q·kᵀ product, scale applied to the scores, softmax, exact erf GELU,
torch's LayerNorm (eps 1e-5), the patch embedding as a Conv2d(kernel = stride = patch), the
class token and position embedding, the Mask Transformer decoder made of the same blocks, and
the official sliding window (windows batched, logits merged on a canvas, resized, softmax).
These are the blocks timm 0.4.12 and the official Segmenter compute; no fused attention kernel
(`scaled_dot_product_attention`) is used, since the official code does not use one.

Needs the bench extra only (`make bench`): torch is never a runtime or test dependency.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = ((q @ k.transpose(-2, -1)) * self.scale).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_dim: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class Segmenter(nn.Module):
    """Seg-*-Mask/16: ViT encoder + Mask Transformer decoder; (B,3,H,W) -> (B,n_cls,H,W) logits."""

    def __init__(self, d_model: int, n_layers: int, n_heads: int, n_cls: int = 19, patch: int = 16,
                 grid: int = 48, decoder_layers: int = 2):
        super().__init__()
        self.patch = patch
        self.n_cls = n_cls
        self.grid = grid
        self.patch_embed = nn.Conv2d(3, d_model, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model).normal_(std=0.02))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, d_model).normal_(std=0.02))
        self.blocks = nn.ModuleList([Block(d_model, n_heads, 4 * d_model) for _ in range(n_layers)])
        self.norm = nn.LayerNorm(d_model)
        # The official decoder: width = encoder width, heads = width // 64, d_ff = 4 x width.
        self.proj_dec = nn.Linear(d_model, d_model)
        self.dec_blocks = nn.ModuleList([Block(d_model, max(d_model // 64, 1), 4 * d_model)
                                         for _ in range(decoder_layers)])
        self.cls_emb = nn.Parameter(torch.zeros(1, n_cls, d_model).normal_(std=0.02))
        scale = d_model ** -0.5
        self.proj_patch = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.proj_classes = nn.Parameter(scale * torch.randn(d_model, d_model))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.mask_norm = nn.LayerNorm(n_cls)

    def _pos_embed(self, gh: int, gw: int):
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        tok, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear", align_corners=False)
        return torch.cat((tok, grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1)), dim=1)

    def forward(self, im):
        h, w = im.shape[2], im.shape[3]
        p = self.patch
        im = F.pad(im, (0, (p - w % p) % p, 0, (p - h % p) % p))
        hp, wp = im.shape[2], im.shape[3]
        gh, gw = hp // p, wp // p
        x = self.patch_embed(im).flatten(2).transpose(1, 2)
        x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1) + self._pos_embed(gh, gw)
        for blk in self.blocks:
            x = blk(x)
        x = self.proj_dec(self.norm(x)[:, 1:])
        x = torch.cat((x, self.cls_emb.expand(x.shape[0], -1, -1)), dim=1)
        for blk in self.dec_blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        n = x.shape[1] - self.n_cls
        patches = x[:, :n] @ self.proj_patch
        classes = x[:, n:] @ self.proj_classes
        patches = patches / patches.norm(dim=-1, keepdim=True)
        classes = classes / classes.norm(dim=-1, keepdim=True)
        masks = self.mask_norm(patches @ classes.transpose(1, 2))
        masks = masks.transpose(1, 2).reshape(x.shape[0], self.n_cls, gh, gw)
        masks = F.interpolate(masks, size=(hp, wp), mode="bilinear", align_corners=False)
        return masks[:, :, :h, :w]


VARIANTS = {"tiny": (192, 12, 3), "small": (384, 12, 6)}


def build(variant: str) -> Segmenter:
    d, layers, heads = VARIANTS[variant]
    torch.manual_seed(0)
    return Segmenter(d, layers, heads)


@torch.no_grad()
def sliding_window(net: Segmenter, image: torch.Tensor, window: int, stride: int, batch: int) -> torch.Tensor:
    """The official sliding window over a (3,H,W) image at least `window` on each side:
    (n_cls,H,W) softmax of the window logits averaged per pixel."""
    _, h, w = image.shape

    def anchors(size):
        return [a for a in range(0, size, stride) if a < size - window] + [size - window]

    boxes = [(a, b) for a in anchors(h) for b in anchors(w)]
    logit = torch.zeros(net.n_cls, h, w)
    count = torch.zeros(1, h, w)
    for i in range(0, len(boxes), batch):
        chunk = boxes[i:i + batch]
        out = net(torch.stack([image[:, a:a + window, b:b + window] for a, b in chunk]))
        for seg, (a, b) in zip(out, chunk):
            logit[:, a:a + window, b:b + window] += seg
            count[:, a:a + window, b:b + window] += 1
    return (logit / count).softmax(0)


def train_step_fn(net: Segmenter, lr: float = 1e-3):
    """One SGD step (momentum 0.9) on cross-entropy with ignore index 255, as the official recipe."""
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss(ignore_index=255)

    def step(image, label):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(image), label)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


"""Segmenter decoders: linear per-patch classifier and the Mask Transformer."""
from __future__ import annotations

from mindspore import nn, ops

from model.layers import Block, LayerNorm, dense, drop_path_rates, normal_param, trunc_normal_param


class DecoderLinear(nn.Cell):
    def __init__(self, n_cls: int, d_encoder: int):
        super().__init__()
        self.n_cls = n_cls
        self.head = dense(d_encoder, n_cls)

    def construct(self, x, gh: int, gw: int):
        x = self.head(x)  # (B, N, n_cls)
        return x.reshape(x.shape[0], gh, gw, self.n_cls).transpose(0, 3, 1, 2)


class MaskTransformer(nn.Cell):
    """Patch tokens + n_cls learned class embeddings through n_layers blocks; masks = <patch, class>."""

    def __init__(self, n_cls: int, d_encoder: int, n_layers: int, n_heads: int, d_model: int, d_ff: int,
                 drop_path_rate: float, dropout: float):
        super().__init__()
        self.n_cls = n_cls
        self.d_model = d_model
        self.blocks = nn.CellList([Block(d_model, n_heads, d_ff, dropout, r)
                                   for r in drop_path_rates(drop_path_rate, n_layers)])
        self.cls_emb = trunc_normal_param((1, n_cls, d_model), 0.02, "cls_emb")
        self.proj_dec = dense(d_encoder, d_model)
        self.proj_patch = normal_param((d_model, d_model), d_model ** -0.5, "proj_patch")
        self.proj_classes = normal_param((d_model, d_model), d_model ** -0.5, "proj_classes")
        self.decoder_norm = LayerNorm(d_model)
        self.mask_norm = LayerNorm(n_cls)
        self.scores = ops.BatchMatMul(transpose_b=True)

    def construct(self, x, gh: int, gw: int):
        x = self.proj_dec(x)
        b = x.shape[0]
        # Raw Parameters follow the activations' dtype (float16 under mixed precision).
        cls_emb = ops.broadcast_to(self.cls_emb.astype(x.dtype), (b, self.n_cls, self.d_model))
        x = ops.concat((x, cls_emb), axis=1)
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_norm(x)
        n = x.shape[1] - self.n_cls
        patches = ops.matmul(x[:, :n], self.proj_patch.astype(x.dtype))
        classes = ops.matmul(x[:, n:], self.proj_classes.astype(x.dtype))
        # L2-normalise without epsilon, as the official code.
        patches = patches / ops.sqrt(ops.sum(patches * patches, -1, keepdim=True))
        classes = classes / ops.sqrt(ops.sum(classes * classes, -1, keepdim=True))
        masks = self.mask_norm(self.scores(patches, classes))  # (B, N, n_cls)
        return masks.reshape(b, gh, gw, self.n_cls).transpose(0, 3, 1, 2)

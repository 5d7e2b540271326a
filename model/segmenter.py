"""The Segmenter wrapper and `build_segmenter(model_cfg)`."""
from __future__ import annotations

from mindspore import nn, ops

from model.decoder import DecoderLinear, MaskTransformer
from model.vit import VisionTransformer


class Segmenter(nn.Cell):
    """(B,3,H,W) normalized image, any H,W -> (B,n_cls,H,W) logits."""

    def __init__(self, encoder: VisionTransformer, decoder: nn.Cell, n_cls: int):
        super().__init__()
        self.n_cls = n_cls
        self.patch_size = encoder.patch_size
        self.encoder = encoder
        self.decoder = decoder

    def pad(self, im):
        """Zero-pad right/bottom to a multiple of the patch size."""
        h, w = im.shape[2], im.shape[3]
        p = self.patch_size
        pad_h = (p - h % p) % p
        pad_w = (p - w % p) % p
        if pad_h or pad_w:
            im = ops.pad(im, (0, pad_w, 0, pad_h))
        return im

    def forward_head(self, x, h: int, w: int):
        """Encoder features (B,1+N,d) of an (h,w) image -> logits (B,n_cls,h,w)."""
        p = self.patch_size
        hp, wp = h + (p - h % p) % p, w + (p - w % p) % p
        masks = self.decoder(x[:, 1:], hp // p, wp // p)  # the class token is not decoded
        masks = ops.interpolate(masks, size=(hp, wp), mode="bilinear", align_corners=False)
        if hp != h or wp != w:
            masks = masks[:, :, :h, :w]
        return masks

    def construct(self, im, keeps=None):
        """`keeps`: optional per-block (2,B,1,1) drop-path masks drawn by the caller (training)."""
        return self.forward_head(self.encoder(self.pad(im), keeps), im.shape[2], im.shape[3])


def build_segmenter(model_cfg) -> Segmenter:
    """The network described by a `settings.schema.ModelConfig`, randomly initialised."""
    m = model_cfg
    encoder = VisionTransformer(m.image_size, m.patch_size, m.n_layers, m.d_model, m.mlp_ratio * m.d_model,
                                m.n_heads, dropout=m.dropout, drop_path_rate=m.drop_path_rate)
    dec = m.decoder
    if dec.name == "linear":
        decoder = DecoderLinear(m.n_cls, m.d_model)
    elif dec.name == "mask_transformer":
        # The official decoder fixes width = encoder width, heads = width // 64, d_ff = 4 * width.
        decoder = MaskTransformer(m.n_cls, m.d_model, dec.n_layers, max(m.d_model // 64, 1), m.d_model,
                                  4 * m.d_model, dec.drop_path_rate, dec.dropout)
    else:
        raise ValueError(f"model.decoder.name: unknown decoder {dec.name!r}")
    return Segmenter(encoder, decoder, m.n_cls)

"""The network as an ONNX graph (opset 17), written from its weights op by op.

MindSpore's own ONNX exporter (2.10) refuses this network (no export for ResizeBilinearV2, nor
for the exact GELU), so the graph is built here with `onnx.helper` by walking the network's own
cells, one method per cell kind of model/vit.py, model/layers.py and model/decoder.py: Conv for
the patch embedding, LayerNormalization (each norm's own eps), MatMul + Add for every Dense, the explicit q·kᵀ / softmax / attn·v product, the exact
GELU as x·(1 + erf(x/√2))/2 with ONNX's Erf, the Mask Transformer's L2 normalisation and class
masks, and the half-pixel bilinear upsampling (torch's align_corners=False) back to the input size
as two MatMuls with the resize's weight matrices.
The input is (N, 3, H, W) normalized float32 with N free and H, W fixed at export; the position
embedding is resized for that size here, once. Output: logits (N, n_cls, H, W).

Needs the optional `onnx` package (requirements-onnx.txt); nothing else in the project imports it.
"""
from __future__ import annotations

import numpy as np

from base.resize import resize_matrix
from model.decoder import DecoderLinear
from model.vit import resize_pos_embed

OPSET = 17


def _array(param) -> np.ndarray:
    return param.asnumpy().astype(np.float32)


class _Graph:
    """ONNX nodes emitted cell by cell: each method translates one cell of the network, reading its
    weights and settings (heads, eps, patch size) from the cell itself."""

    def __init__(self, onnx):
        self.onnx = onnx
        self.nodes, self.inits = [], []
        self.count = 0

    def const(self, value, name: str | None = None) -> str:
        name = name or self._name("c")
        self.inits.append(self.onnx.numpy_helper.from_array(np.asarray(value), name))
        return name

    def _name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}_{self.count}"

    def op(self, kind: str, *inputs, **attrs) -> str:
        out = self._name(kind.lower())
        self.nodes.append(self.onnx.helper.make_node(kind, list(inputs), [out], **attrs))
        return out

    def ints(self, *values) -> str:
        return self.const(np.array(values, np.int64))

    def batch_expand(self, value: np.ndarray, like: str) -> str:
        """`value` (1, a, b) repeated over the batch of `like`."""
        n = self.op("Shape", like, start=0, end=1)
        return self.op("Expand", self.const(value), self.op("Concat", n, self.ints(*value.shape[1:]), axis=0))

    def tokens_slice(self, x: str, start: int, end: int) -> str:
        return self.op("Slice", x, self.ints(start), self.ints(end), self.ints(1))

    def dense(self, x: str, cell) -> str:
        w = _array(cell.weight)  # (out, in) as nn.Dense stores it
        return self.op("Add", self.op("MatMul", x, self.const(np.ascontiguousarray(w.T))), self.const(_array(cell.bias)))

    def layer_norm(self, x: str, cell) -> str:
        return self.op("LayerNormalization", x, self.const(_array(cell.weight)), self.const(_array(cell.bias)),
                       axis=-1, epsilon=cell.eps)

    def gelu(self, x: str) -> str:
        """The exact GELU as x·(1 + erf(x/√2))/2."""
        erf = self.op("Erf", self.op("Mul", x, self.const(np.float32(1 / np.sqrt(2)))))
        return self.op("Mul", self.op("Mul", x, self.const(np.float32(0.5))),
                       self.op("Add", erf, self.const(np.float32(1.0))))

    def attention(self, x: str, cell, tokens: int) -> str:
        heads, hd = cell.heads, cell.head_dim
        qkv = self.op("Transpose", self.op("Reshape", self.dense(x, cell.qkv), self.ints(0, tokens, 3, heads, hd)),
                      perm=[2, 0, 3, 1, 4])
        q, k, v = (self.op("Gather", qkv, self.const(np.int64(i)), axis=0) for i in range(3))
        q = self.op("Mul", q, self.const(np.float32(cell.scale)))
        attn = self.op("Softmax", self.op("MatMul", q, self.op("Transpose", k, perm=[0, 1, 3, 2])), axis=-1)
        out = self.op("Reshape", self.op("Transpose", self.op("MatMul", attn, v), perm=[0, 2, 1, 3]),
                      self.ints(0, tokens, heads * hd))
        return self.dense(out, cell.proj)

    def feed_forward(self, x: str, cell) -> str:
        return self.dense(self.gelu(self.dense(x, cell.fc1)), cell.fc2)

    def block(self, x: str, cell, tokens: int) -> str:
        x = self.op("Add", x, self.attention(self.layer_norm(x, cell.norm1), cell.attn, tokens))
        return self.op("Add", x, self.feed_forward(self.layer_norm(x, cell.norm2), cell.mlp))

    def encoder(self, x: str, enc, gh: int, gw: int) -> str:
        """VisionTransformer: patches (as the Conv they compute), class token, position, blocks, norm."""
        proj, d = enc.patch_embed.proj, enc.d_model
        x = self.op("Conv", x, self.const(_array(proj.weight)), self.const(_array(proj.bias)),
                    kernel_shape=[proj.patch_size] * 2, strides=[proj.patch_size] * 2)
        x = self.op("Transpose", self.op("Reshape", x, self.ints(0, d, gh * gw)), perm=[0, 2, 1])
        x = self.op("Concat", self.batch_expand(_array(enc.cls_token), x), x, axis=1)
        pos = resize_pos_embed(enc.pos_embed, enc.grid_size, (gh, gw)).asnumpy().astype(np.float32)
        x = self.op("Add", x, self.const(pos))
        for blk in enc.blocks:
            x = self.block(x, blk, 1 + gh * gw)
        return self.layer_norm(x, enc.norm)

    def decoder(self, x: str, dec, gh: int, gw: int) -> str:
        """Patch tokens -> class masks (N, n_cls, gh, gw), for either decoder."""
        n_cls = dec.n_cls
        if isinstance(dec, DecoderLinear):
            masks = self.dense(x, dec.head)
        else:  # MaskTransformer
            x = self.dense(x, dec.proj_dec)
            x = self.op("Concat", x, self.batch_expand(_array(dec.cls_emb), x), axis=1)
            tokens = gh * gw + n_cls
            for blk in dec.blocks:
                x = self.block(x, blk, tokens)
            x = self.layer_norm(x, dec.decoder_norm)
            patches = self.op("MatMul", self.tokens_slice(x, 0, gh * gw), self.const(_array(dec.proj_patch)))
            classes = self.op("MatMul", self.tokens_slice(x, gh * gw, tokens), self.const(_array(dec.proj_classes)))
            masks = self.op("MatMul", self.l2_normalize(patches),
                            self.op("Transpose", self.l2_normalize(classes), perm=[0, 2, 1]))
            masks = self.layer_norm(masks, dec.mask_norm)
        return self.op("Transpose", self.op("Reshape", masks, self.ints(0, gh, gw, n_cls)), perm=[0, 3, 1, 2])

    def l2_normalize(self, t: str) -> str:
        """No epsilon, as the official code."""
        return self.op("Div", t, self.op("Sqrt", self.op("ReduceSum", self.op("Mul", t, t), self.ints(-1), keepdims=1)))


def segmenter_onnx(net, height: int, width: int):
    """The ONNX ModelProto of a `model.segmenter.Segmenter` for (N, 3, height, width) inputs:
    pad -> encoder -> decoder -> upsample, as `Segmenter.construct`."""
    import onnx
    from onnx import TensorProto, helper

    ps, n_cls = net.patch_size, net.n_cls
    hp, wp = height + (ps - height % ps) % ps, width + (ps - width % ps) % ps
    gh, gw = hp // ps, wp // ps
    g = _Graph(onnx)
    x = "image"
    if (hp, wp) != (height, width):  # zero padding right/bottom, as Segmenter.pad
        x = g.op("Pad", x, g.ints(0, 0, 0, 0, 0, 0, hp - height, wp - width))
    x = g.encoder(x, net.encoder, gh, gw)
    masks = g.decoder(g.tokens_slice(x, 1, 1 + gh * gw), net.decoder, gh, gw)  # the class token is not decoded
    # The upsampling to (hp, wp) and the crop to (height, width) as mh @ masks @ mw.T: OpenVINO's
    # Resize runs channels-last and reorders its full-size output back (~4x slower; docs/benchmarks.md).
    mh, mw = resize_matrix(gh, hp)[:height], resize_matrix(gw, wp)[:width]
    g.op("MatMul", g.op("MatMul", g.const(mh), masks), g.const(np.ascontiguousarray(mw.T)))
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes, "segmenter", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_cls, height, width])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="segmenter-mindspore")
    model.ir_version = 8  # readable by every ONNX Runtime that has opset 17
    onnx.checker.check_model(model)
    return model


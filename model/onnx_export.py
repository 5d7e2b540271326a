"""The network as an ONNX graph (opset 17), written from its weights op by op.

MindSpore's own ONNX exporter (2.10) refuses this network (no export for ResizeBilinearV2, nor
for the exact GELU), so the graph is built here with `onnx.helper`, one node per operation of
model/vit.py, model/layers.py and model/decoder.py: Conv for the patch embedding, LayerNormalization
(eps 1e-5), MatMul + Add for every Dense, the explicit q·kᵀ / softmax / attn·v product, the exact
GELU as x·(1 + erf(x/√2))/2 with ONNX's Erf, the Mask Transformer's L2 normalisation and class
masks, and a half-pixel bilinear Resize (torch's align_corners=False) back to the input size.
The input is (N, 3, H, W) normalized float32 with N free and H, W fixed at export; the position
embedding is resized for that size here, once. Output: logits (N, n_cls, H, W).

Needs the optional `onnx` package (requirements-onnx.txt); nothing else in the project imports it.
"""
from __future__ import annotations

import numpy as np

from model.decoder import DecoderLinear
from model.vit import resize_pos_embed

OPSET = 17


class _Graph:
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

    def dense(self, x: str, p: dict, prefix: str) -> str:
        w = p[f"{prefix}.weight"]  # (out, in) as nn.Dense stores it
        return self.op("Add", self.op("MatMul", x, self.const(np.ascontiguousarray(w.T))),
                       self.const(p[f"{prefix}.bias"]))

    def layer_norm(self, x: str, p: dict, prefix: str, eps: float) -> str:
        return self.op("LayerNormalization", x, self.const(p[f"{prefix}.weight"]), self.const(p[f"{prefix}.bias"]),
                       axis=-1, epsilon=eps)

    def gelu(self, x: str) -> str:
        erf = self.op("Erf", self.op("Mul", x, self.const(np.float32(1 / np.sqrt(2)))))
        return self.op("Mul", self.op("Mul", x, self.const(np.float32(0.5))),
                       self.op("Add", erf, self.const(np.float32(1.0))))

    def block(self, x: str, p: dict, prefix: str, dim: int, heads: int, tokens: int, eps: float) -> str:
        hd = dim // heads
        h = self.layer_norm(x, p, f"{prefix}.norm1", eps)
        qkv = self.op("Transpose", self.op("Reshape", self.dense(h, p, f"{prefix}.attn.qkv"),
                                           self.ints(0, tokens, 3, heads, hd)), perm=[2, 0, 3, 1, 4])
        q, k, v = (self.op("Gather", qkv, self.const(np.int64(i)), axis=0) for i in range(3))
        q = self.op("Mul", q, self.const(np.float32(hd ** -0.5)))
        attn = self.op("Softmax", self.op("MatMul", q, self.op("Transpose", k, perm=[0, 1, 3, 2])), axis=-1)
        out = self.op("Reshape", self.op("Transpose", self.op("MatMul", attn, v), perm=[0, 2, 1, 3]),
                      self.ints(0, tokens, dim))
        x = self.op("Add", x, self.dense(out, p, f"{prefix}.attn.proj"))
        h = self.gelu(self.dense(self.layer_norm(x, p, f"{prefix}.norm2", eps), p, f"{prefix}.mlp.fc1"))
        return self.op("Add", x, self.dense(h, p, f"{prefix}.mlp.fc2"))

    def batch_expand(self, value: np.ndarray, like: str) -> str:
        """`value` (1, a, b) repeated over the batch of `like`."""
        n = self.op("Shape", like, start=0, end=1)
        return self.op("Expand", self.const(value), self.op("Concat", n, self.ints(*value.shape[1:]), axis=0))


def segmenter_onnx(net, height: int, width: int):
    """The ONNX ModelProto of a `model.segmenter.Segmenter` for (N, 3, height, width) inputs."""
    import onnx
    from onnx import TensorProto, helper

    from model.layers import LN_EPS

    enc, dec = net.encoder, net.decoder
    p = {name: param.asnumpy().astype(np.float32) for name, param in net.parameters_and_names()}
    ps, d, n_cls = enc.patch_size, enc.d_model, net.n_cls
    hp, wp = height + (ps - height % ps) % ps, width + (ps - width % ps) % ps
    gh, gw = hp // ps, wp // ps
    g = _Graph(onnx)
    x = "image"
    if (hp, wp) != (height, width):  # zero padding right/bottom, as Segmenter.pad
        x = g.op("Pad", x, g.ints(0, 0, 0, 0, 0, 0, hp - height, wp - width))
    x = g.op("Conv", x, g.const(p["encoder.patch_embed.proj.weight"]), g.const(p["encoder.patch_embed.proj.bias"]),
             kernel_shape=[ps, ps], strides=[ps, ps])
    x = g.op("Transpose", g.op("Reshape", x, g.ints(0, d, gh * gw)), perm=[0, 2, 1])
    x = g.op("Concat", g.batch_expand(p["encoder.cls_token"], x), x, axis=1)
    pos = resize_pos_embed(enc.pos_embed, enc.grid_size, (gh, gw)).asnumpy().astype(np.float32)
    x = g.op("Add", x, g.const(pos))
    tokens = 1 + gh * gw
    for i, blk in enumerate(enc.blocks):
        x = g.block(x, p, f"encoder.blocks.{i}", d, blk.hparams["heads"], tokens, LN_EPS)
    x = g.layer_norm(x, p, "encoder.norm", LN_EPS)
    x = g.op("Slice", x, g.ints(1), g.ints(tokens), g.ints(1))  # drop the class token
    if isinstance(dec, DecoderLinear):
        masks = g.dense(x, p, "decoder.head")
    else:  # MaskTransformer
        x = g.dense(x, p, "decoder.proj_dec")
        x = g.op("Concat", x, g.batch_expand(p["decoder.cls_emb"], x), axis=1)
        dtokens = gh * gw + n_cls
        for i, blk in enumerate(dec.blocks):
            x = g.block(x, p, f"decoder.blocks.{i}", dec.d_model, blk.hparams["heads"], dtokens, LN_EPS)
        x = g.layer_norm(x, p, "decoder.decoder_norm", LN_EPS)
        patches = g.op("MatMul", g.op("Slice", x, g.ints(0), g.ints(gh * gw), g.ints(1)),
                       g.const(p["decoder.proj_patch"]))
        classes = g.op("MatMul", g.op("Slice", x, g.ints(gh * gw), g.ints(dtokens), g.ints(1)),
                       g.const(p["decoder.proj_classes"]))

        def l2(t):  # no epsilon, as the official code
            return g.op("Div", t, g.op("Sqrt", g.op("ReduceSum", g.op("Mul", t, t), g.ints(-1), keepdims=1)))

        masks = g.op("MatMul", l2(patches), g.op("Transpose", l2(classes), perm=[0, 2, 1]))
        masks = g.layer_norm(masks, p, "decoder.mask_norm", LN_EPS)
    masks = g.op("Transpose", g.op("Reshape", masks, g.ints(0, gh, gw, n_cls)), perm=[0, 3, 1, 2])
    out = g.op("Resize", masks, "", g.const(np.array([1, 1, ps, ps], np.float32)), mode="linear",
               coordinate_transformation_mode="half_pixel")
    if (hp, wp) != (height, width):
        out = g.op("Slice", out, g.ints(0, 0), g.ints(height, width), g.ints(2, 3))
    g.nodes[-1].output[0] = "logits"
    graph = helper.make_graph(
        g.nodes, "segmenter", [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, height, width])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", n_cls, height, width])], g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="segmenter-mindspore")
    model.ir_version = 8  # readable by every ONNX Runtime that has opset 17
    onnx.checker.check_model(model)
    return model


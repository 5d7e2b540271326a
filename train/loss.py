"""Pixel-wise cross-entropy that ignores one label value (255 on Cityscapes).

Written from log_softmax + gather + mask because `mint.nn.functional.cross_entropy` has no
CPU kernel; the logits are cast to float32 first so the loss stays exact under O1/O2.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops


class SegCrossEntropy(nn.Cell):
    """Mean of -log p(label) over the pixels whose label is not `ignore_index` (0 if none)."""

    def __init__(self, ignore_index: int = 255):
        super().__init__()
        self.ignore_index = ignore_index

    def construct(self, logits, label):
        logp = ops.log_softmax(logits.astype(ms.float32), axis=1)
        valid = label != self.ignore_index
        # Ignored pixels gather class 0 and are then masked out: the gather needs a real index.
        safe = ops.where(valid, label, ops.zeros_like(label))
        picked = ops.gather_elements(logp, 1, safe.expand_dims(1)).squeeze(1)
        weight = valid.astype(ms.float32)
        return -(picked * weight).sum() / ops.maximum(weight.sum(), 1.0)


class NetWithLoss(nn.Cell):
    """(uint8 batch, label, valid, drop-path masks) -> normalize -> net -> logits -> loss; parameter
    names stay the net's own (no prefix)."""

    def __init__(self, net: nn.Cell, loss: nn.Cell, normalize: nn.Cell):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = loss
        self.normalize = normalize

    def construct(self, image, label, valid, keeps):
        return self.loss(self.net(self.normalize(image, valid), keeps), label.astype(ms.int32))

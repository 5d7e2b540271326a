"""The network input made inside the train step's graph from the pipeline's uint8 batches.

(B,H,W,3) uint8 RGB + valid (B,2) -> (B,3,H,W) float32: (x - mean) / std, and 0 outside each
sample's valid (height, width), i.e. the crop padding is 0 in normalized space (mmseg pads after
Normalize). The formula and float32 constants are `base.network_input`'s, so a pixel becomes the
same number here as in evaluation and predict. Doing this on the device instead of in the data pipeline moves a quarter of the
bytes through batching and host-to-device copies and frees the pipeline's CPU for decoding.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Tensor, nn, ops

from base.network_input import normalization


class NormalizeBatch(nn.Cell):
    def __init__(self, mean, std):
        super().__init__()
        mean, std = normalization(mean, std)
        self.mean = Tensor(mean.reshape(1, 1, 1, 3))
        self.std = Tensor(std.reshape(1, 1, 1, 3))

    def construct(self, image, valid):
        b, h, w = image.shape[0], image.shape[1], image.shape[2]
        x = (image.astype(ms.float32) - self.mean) / self.std
        rows = ops.arange(h).reshape(1, h, 1) < valid[:, 0].reshape(b, 1, 1)
        cols = ops.arange(w).reshape(1, 1, w) < valid[:, 1].reshape(b, 1, 1)
        inside = ops.logical_and(rows, cols).astype(ms.float32).reshape(b, h, w, 1)
        return (x * inside).transpose(0, 3, 1, 2)

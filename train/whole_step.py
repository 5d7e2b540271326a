"""The step as one forward + backward graph (train.step_graph: whole), written out by hand:
the stock TrainOneStepWithLossScaleCell fails on CPU (MindSpore 2.10).

loss -> gradients of (loss * scale) in the same graph -> `train.update.ApplyGradients`.
Drop-path masks come in from the host (`train.drop_path`), so the per-block step, this one and
this one with `train.recompute` take the same update.
"""
from __future__ import annotations

from mindspore import nn, ops

from train.update import ApplyGradients


class WholeGradients(nn.Cell):
    """(uint8 image, label, valid, masks) -> (loss, gradients of loss * scale); see
    `train.loss.NetWithLoss`."""

    def __init__(self, net_with_loss: nn.Cell, weights, scaler):
        super().__init__(auto_prefix=False)
        self.net_with_loss = net_with_loss
        self.weights = weights
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.scaler = scaler

    def construct(self, image, label, valid, keeps):
        loss = self.net_with_loss(image, label, valid, keeps)
        # The sensitivity (d loss) is the loss scale: gradients come out scaled without a
        # second forward pass.
        grads = self.grad(self.net_with_loss, self.weights)(image, label, valid, keeps,
                                                            self.scaler.scale_value.astype(loss.dtype))
        return loss, grads


class TrainStep(nn.Cell):
    """One optimization step at learning rate `lr` (a float32 scalar Tensor) in one graph.

    Returns (loss, grads_finite, loss_scale_used).
    """

    def __init__(self, net_with_loss: nn.Cell, optimizer: nn.Optimizer, scaler, clip_norm: float,
                 grad_reducer: nn.Cell | None = None):
        super().__init__(auto_prefix=False)
        self.gradients = WholeGradients(net_with_loss, optimizer.parameters, scaler)
        self.apply_grads = ApplyGradients(optimizer, scaler, clip_norm, grad_reducer)

    def construct(self, image, label, valid, keeps, lr):
        loss, grads = self.gradients(image, label, valid, keeps)
        finite, scale = self.apply_grads(grads, lr)
        return loss, finite, scale

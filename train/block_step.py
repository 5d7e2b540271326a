"""The train step as one graph per encoder block, recomputing each block in the backward pass.

Why: MindSpore (2.10, CPU, every jit level and memory_optimize_level) gives each compiled graph
its own memory for all of its intermediates and keeps it for the life of the graph. A
whole-network gradient graph therefore holds every block's forward and backward tensors at
once: for ViT-Tiny at 2 x 768x768, 12 blocks x several (B, heads, 2305, 2305) attention
tensors (figures: docs/benchmarks.md; twelve separately compiled blocks would hold twelve times one
block's memory). Here every encoder block runs through the SAME two
compiled graphs (forward, and recompute + vjp) of one template block whose Parameters are
pointed at block i's weights before it runs; the host runs

    stem graph      uint8 batch -> normalize -> x0                (forward only)
    block graphs    x_i = block_i(x_{i-1}), keeping only each x_i  (forward only)
    head graph      loss and d(loss * scale) / d(x_12, head weights)
    block graphs    for i = 12..1: recompute block_i from x_{i-1}, vjp -> d x_{i-1}, d weights
    stem graph      vjp -> d stem weights
    ApplyGradients  the same unscale / [all-reduce] / finiteness / clip / update graph as TrainStep

so the blocks cost one block's memory, at the price of a second forward pass through them. Drop-path masks are drawn on the host from (seed, rank, step), and
both passes of a block use the same mask; dropout inside the encoder would differ between the
passes, so this step requires model.dropout == 0 (the official configs' value).
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ParameterTuple, nn, ops

from train.drop_path import block_rates, keep_masks
from train.precision import apply_amp
from train.update import ApplyGradients


class _Stem(nn.Cell):
    def __init__(self, net, normalize):
        super().__init__(auto_prefix=False)
        self.net = net
        self.normalize = normalize

    def construct(self, image, valid):
        return self.net.encoder.embed(self.net.pad(self.normalize(image, valid)))


class _StemGrad(nn.Cell):
    def __init__(self, stem, weights):
        super().__init__(auto_prefix=False)
        self.stem = stem
        self.weights = ParameterTuple(weights)
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

    def construct(self, image, valid, sens):
        return self.grad(self.stem, self.weights)(image, valid, sens)


class _ScaledHeadLoss(nn.Cell):
    """Blocks' output -> loss * scale (the scale multiplies a float32 scalar: exact for powers of 2)."""

    def __init__(self, net, loss):
        super().__init__(auto_prefix=False)
        self.net = net
        self.loss = loss

    def construct(self, x, label, scale):
        logits = self.net.forward_head(self.net.encoder.norm(x), label.shape[1], label.shape[2])
        return self.loss(logits, label.astype(ms.int32)) * scale


class _HeadGrad(nn.Cell):
    def __init__(self, head, weights):
        super().__init__(auto_prefix=False)
        self.head = head
        self.weights = ParameterTuple(weights)

    def construct(self, x, label, scale):
        value, (gx, gw) = ops.value_and_grad(self.head, 0, self.weights)(x, label, scale)
        return value, gx, gw


class _BlockGrad(nn.Cell):
    def __init__(self, block):
        super().__init__(auto_prefix=False)
        self.block = block
        self.weights = ParameterTuple(block.get_parameters())
        self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)

    def construct(self, x, keep, sens):
        inputs, weights = self.grad(self.block, self.weights)(x, keep, sens)
        return inputs[0], weights


def _stem_param(name: str) -> bool:
    return name.startswith("encoder.patch_embed.") or name in ("encoder.cls_token", "encoder.pos_embed")


class PerBlockTrainStep:
    """`gradients` of one micro-batch; `apply_grads` updates from their mean (`train.step.TrainStepFn`)."""

    def __init__(self, net, loss: nn.Cell, normalize: nn.Cell, optimizer: nn.Optimizer, scaler, clip_norm: float,
                 grad_reducer: nn.Cell | None = None, seed: int = 0, rank: int = 0, amp_level: str = "O0"):
        self.net = net
        self.scaler = scaler
        self.seed, self.rank = int(seed), int(rank)
        blocks = list(net.encoder.blocks)
        self.rates = block_rates(net)
        self.block_weights = [list(blk.get_parameters()) for blk in blocks]
        self.order = [p.name for p in optimizer.parameters]
        block_names = {p.name for ws in self.block_weights for p in ws}
        params = net.trainable_params()
        stem_w = [p for p in params if _stem_param(p.name)]
        head_w = [p for p in params if not _stem_param(p.name) and p.name not in block_names]
        covered = {p.name for p in stem_w + head_w} | block_names
        if covered != set(self.order):
            raise ValueError("per-block step: the optimizer's parameters are not the network's trainable ones")
        # Same precision as the network's blocks (apply_amp has already run on `net`).
        self.template = apply_amp(blocks[0].like(), amp_level)
        self.template_weights = list(self.template.get_parameters())
        self.stem = _Stem(net, normalize)
        self.stem_grad = _StemGrad(self.stem, stem_w)
        self.head_grad = _HeadGrad(_ScaledHeadLoss(net, loss), head_w)
        self.block_grad = _BlockGrad(self.template)
        self.apply_grads = ApplyGradients(optimizer, scaler, clip_norm, grad_reducer)

    def set_train(self, mode: bool = True):
        for cell in (self.net, self.template, self.stem, self.stem_grad, self.head_grad, self.block_grad,
                     self.apply_grads):
            cell.set_train(mode)
        return self

    def keep_masks(self, batch: int, step: int, micro: int = 0) -> list:
        return keep_masks(self.rates, batch, self.seed, self.rank, step, micro)

    def _point_template_at(self, i: int) -> None:
        # set_data shares block i's tensors (no copy); the compiled graphs read them at launch.
        for dst, src in zip(self.template_weights, self.block_weights[i]):
            dst.set_data(src.value())

    def gradients(self, image, label, valid, step: int, micro: int = 0):
        """(loss, scaled gradients in the optimizer's parameter order, scale used)."""
        scale = self.scaler.scale_value * 1.0
        keeps = self.keep_masks(image.shape[0], step, micro)
        xs = [self.stem(image, valid)]
        for i, keep in enumerate(keeps):
            self._point_template_at(i)
            xs.append(self.template(xs[-1], keep))
        scaled_loss, g, head_g = self.head_grad(xs.pop(), label, scale)
        grads = dict(zip((p.name for p in self.head_grad.weights), head_g))
        for i in reversed(range(len(keeps))):
            self._point_template_at(i)
            # xs[i] is block i's input; dropping it once used keeps memory flat.
            g, block_g = self.block_grad(xs.pop(), keeps[i], g)
            grads.update(zip((p.name for p in self.block_weights[i]), block_g))
        grads.update(zip((p.name for p in self.stem_grad.weights), self.stem_grad(image, valid, g)))
        return scaled_loss / scale, tuple(grads[name] for name in self.order), scale

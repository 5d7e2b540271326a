"""Optimizers from the config: SGD (momentum, optional Nesterov) or AdamW, with weight decay.

The learning rate is a float32 Parameter of the optimizer that the train step assigns from its
`lr` input (computed by `train.schedule.lr_at`), so the schedule is ordinary Python and the lr position
is just the step counter stored in the checkpoint.
"""
from __future__ import annotations

from mindspore import nn

from settings.schema import OptimizerConfig

# Token and position embeddings are not decayed (as in timm/Segmenter's no_weight_decay),
# nor are 1-D parameters (biases, LayerNorm scales).
_NO_DECAY_NAMES = ("pos_embed", "cls_token", "cls_emb")


def _decays(param) -> bool:
    return param.ndim > 1 and not any(key in param.name for key in _NO_DECAY_NAMES)


def param_groups(net: nn.Cell, weight_decay: float) -> list:
    params = net.trainable_params()
    decay = [p for p in params if _decays(p)]
    no_decay = [p for p in params if not _decays(p)]
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(net: nn.Cell, opt: OptimizerConfig) -> nn.Optimizer:
    groups = param_groups(net, opt.weight_decay)
    if opt.name == "sgd":
        return nn.SGD(groups, learning_rate=opt.lr, momentum=opt.momentum, nesterov=opt.nesterov)
    if opt.name == "adamw":
        return nn.AdamWeightDecay(groups, learning_rate=opt.lr, beta1=opt.betas[0], beta2=opt.betas[1],
                                  eps=opt.eps)
    raise ValueError(f"train.optimizer.name: unknown optimizer {opt.name!r}")


def model_param_names(net: nn.Cell) -> set:
    return {p.name for p in net.get_parameters()}


def optimizer_state(optimizer: nn.Optimizer, net: nn.Cell) -> dict:
    """The optimizer's own parameters (moments, step, lr), not the model weights it updates."""
    own = model_param_names(net)
    return {name: p for name, p in optimizer.parameters_and_names() if p.name not in own and name not in own}

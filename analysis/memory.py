"""What one forward pass of the network asks of memory, from the config alone (no allocation).

The attention maps dominate: each block holds heads x tokens x tokens float32 scores (and their
softmax) for every image of the batch, tokens = patches (+ class embeddings in the decoder).
Used to refuse, before any work, a window or export size that no machine here could run
(a window of 100000 px means 3.9e7 tokens, an attention map of 6e15 bytes per head).
"""
from __future__ import annotations

import math

from base.memory import gib, physical_memory_bytes


def forward_attention_bytes(model, height: int, width: int, batch: int = 1) -> int:
    """Bytes of one block's attention scores + softmax for a (batch, 3, height, width) input."""
    patches = math.ceil(height / model.patch_size) * math.ceil(width / model.patch_size)
    # The encoder adds a class token; the mask decoder adds n_cls class embeddings.
    tokens = patches + (model.n_cls if model.decoder.name == "mask_transformer" else 1)
    return 2 * 4 * batch * model.n_heads * tokens * tokens


def too_large(model, height: int, width: int, batch: int = 1) -> str | None:
    """None if a forward at this size fits this machine's memory; else why not, in words."""
    need = forward_attention_bytes(model, height, width, batch)
    have = physical_memory_bytes()
    if need <= have:
        return None
    return (f"one forward of {batch} x {height}x{width} needs about {gib(need)} for the attention maps "
            f"alone, more than this machine's {gib(have)} of memory")


def weights_too_large(parameters: int) -> str | None:
    """None if a model of this many parameters can be built (or loaded) here; else why not, in words."""
    # float32 weights, plus their initial values (or a checkpoint's) while they are made.
    need, have = 2 * 4 * parameters, physical_memory_bytes()
    if need <= have:
        return None
    return (f"the model's {parameters:,} parameters need about {gib(need)} to build, more than this machine's "
            f"{gib(have)} of memory")

"""Fused, mathematically identical replacements for the elementwise parts of Hugging Face T5 blocks.

Transformers writes two of T5's hot elementwise functions as chains of tensor operations, each a separate pass over
the activations (and each output kept for the backward pass):

* the gated-GELU activation ``gelu_new``: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, seven operations;
  ``torch.nn.functional.gelu(x, approximate="tanh")`` is the same function in one kernel, forward and backward;
* ``T5LayerNorm``, an RMS norm without mean or bias: ``y = w * x / sqrt(mean(x^2) + eps)`` with the mean taken in
  fp32, five operations; ``torch.nn.functional.rms_norm`` computes it in one (in fp32 for bf16 inputs, rounding once
  where transformers rounds the normalised value to bf16 before scaling it).

:func:`fuse_elementwise` swaps them in place. Parameters, their names and ``save_pretrained`` output are unchanged:
the norm keeps its ``weight`` (only its class changes), the activation has no parameters.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.activations import NewGELUActivation
from transformers.models.t5.modeling_t5 import T5LayerNorm


class TanhGELU(nn.Module):
    """``gelu_new`` as one kernel: ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(x, approximate="tanh")


class FusedT5LayerNorm(T5LayerNorm):
    """``w * x / sqrt(mean(x^2) + eps)`` accumulated in fp32, in one kernel. Returned, as in transformers, in the
    dtype of ``w`` when ``w`` is half precision, else in the promoted dtype (fp32)."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16) else torch.promote_types(
            hidden_states.dtype, weight.dtype)
        return nn.functional.rms_norm(hidden_states.to(dtype), weight.shape, weight.to(dtype), self.variance_epsilon)


def fuse_elementwise(model: nn.Module) -> dict[str, int]:
    """Replace T5's ``gelu_new`` modules and ``T5LayerNorm`` forwards in ``model`` by their fused forms; returns the
    number of modules swapped per kind. Other architectures pass through untouched (counts zero)."""
    counts = {"gelu_tanh": 0, "rms_norm": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, TanhGELU())
                counts["gelu_tanh"] += 1
            elif type(child) is T5LayerNorm:  # same parameters and state dict, fused forward
                child.__class__ = FusedT5LayerNorm
                counts["rms_norm"] += 1
    return counts

"""Fused, mathematically identical replacements for the elementwise parts of Hugging Face T5 blocks (and GPT-2's).

Transformers writes two of T5's hot elementwise functions as chains of tensor operations, each a separate pass over
the activations (and each output kept for the backward pass):

* the gated-GELU activation ``gelu_new`` (also GPT-2's MLP activation, swapped there too):
  ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``, seven operations; ``torch.nn.functional.gelu(x,
  approximate="tanh")`` is the same function in one kernel, forward and backward;
* ``T5LayerNorm``, an RMS norm without mean or bias: ``y = w * x / sqrt(mean(x^2) + eps)`` with the mean taken in
  fp32, five operations; ``torch.nn.functional.rms_norm`` computes it in one (in fp32 for bf16 inputs, rounding once
  where transformers rounds the normalised value to bf16 before scaling it).

:func:`fuse_elementwise` swaps them in place. Parameters, their names and ``save_pretrained`` output are unchanged:
the norm keeps its ``weight`` (only its class changes), the activation has no parameters.

On a CPU, where torch's ``rms_norm`` is itself a chain of operations (no faster than transformers' here), the norm
is :class:`CPUT5LayerNorm` instead: an autograd function of three passes over the activations forward and six
backward in fp32 (two and three more in bf16, for the conversions), with transformers' roundings (its bf16 output
equals transformers' bit for bit wherever the mean squares agree).

On a CPU it also replaces dropout. torch's CPU dropout draws its mask with ``bernoulli_``, which runs serially
(``python tools/bench_fused_kernels.py --profile N`` shows its share of a step; measured figures in
docs/performance.md); :func:`cpu_dropout` draws 64 random bits per four elements instead (``random_`` over the full
int64 range, viewed as four int16 lanes) and keeps an element when its 16-bit lane is at or above a threshold:
dropout with probability ``round(p * 2^16) / 2^16`` (within 8e-6 of ``p``) and the matching ``1 / (1 - p)``
rescaling, applied as one multiply by a mask that holds either the rescaling or zero. It covers the ``nn.Dropout``
modules and, through a registered attention function (T5's eager attention with this dropout), the attention
probabilities. GPUs keep torch's dropout, whose fused kernel is already fast there.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.activations import NewGELUActivation
from transformers.models.t5.modeling_t5 import T5LayerNorm

_LANE_VALUES = 2**16  # a mask lane is one int16: 2^16 equally likely values, from -2^15 to 2^15 - 1


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


class _RowRMSNorm(torch.autograd.Function):
    """``y = w * h`` with ``h = x r`` rounded to ``hidden_dtype`` and ``r = 1 / sqrt(mean(x^2) + eps)`` per row (last
    dimension, size ``d``), all computed in ``a = promote(x.dtype, fp32)``; ``r`` is saved, ``h`` recomputed.

    Backward, with ``g = dy * w`` and ``s = sum_j g_j x_j`` per row::

        dx = r * (g - x * r^2 * s / d)        dw = sum over rows of r * dy * x

    Both sums come from one product ``q = dy * x``: ``dw = q^T r`` and ``s = q w``, two matrix-vector products. Every
    large operation runs in one dtype: mixed-dtype operations cast through temporaries on a CPU and took several
    times as long as one-dtype ones."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, hidden_dtype: torch.dtype) -> torch.Tensor:
        accumulate = torch.promote_types(x.dtype, torch.float32)
        wide = x.to(accumulate)
        r = torch.linalg.vector_norm(wide, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
        hidden = (wide.mul_(r) if wide is not x else x * r).to(hidden_dtype)  # never write into x itself
        ctx.save_for_backward(x, weight, r)
        return hidden.mul_(weight) if weight.dtype == hidden.dtype else hidden * weight

    @staticmethod
    def backward(ctx, dy: torch.Tensor):
        x, weight, r = ctx.saved_tensors
        d = x.shape[-1]
        rows = r.reshape(-1)
        x_rows = x.reshape(-1, d).to(r.dtype)
        dy_rows = dy.reshape(-1, d).to(r.dtype)
        wide_weight = weight.to(r.dtype)
        q = dy_rows * x_rows
        dw = torch.mv(q.t(), rows).to(weight.dtype)
        s = torch.mv(q, wide_weight)
        c = rows.square().mul_(s).div_(-d).unsqueeze(-1)  # -r^2 s / d
        dx = (dy_rows * wide_weight).addcmul_(x_rows, c).mul_(rows.unsqueeze(-1))
        return dx.to(x.dtype).view_as(x), dw, None, None


class CPUT5LayerNorm(T5LayerNorm):
    """``T5LayerNorm`` (same parameter, same output dtype and roundings: ``x / rms`` is rounded to half-precision
    weights' dtype before scaling) computed by :class:`_RowRMSNorm`."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        weight = self.weight
        hidden_dtype = weight.dtype if weight.dtype in (torch.float16, torch.bfloat16) else torch.promote_types(
            hidden_states.dtype, torch.float32)
        return _RowRMSNorm.apply(hidden_states, weight, self.variance_epsilon, hidden_dtype)


def _dropout_mask(like: torch.Tensor, dropped_values: int) -> torch.Tensor:
    """``keep / (1 - p')`` in the dtype and shape of ``like``, with ``P(keep = 0) = p' = dropped_values / 2^16``.

    Each element reads its own 16 bits of a tensor filled by ``random_`` over the whole int64 range (all 64 bits
    uniform and independent, one draw per four elements) and is kept when that signed lane is at least
    ``-2^15 + dropped_values``: ``dropped_values`` of the 2^16 equally likely lane values drop it."""
    numel = like.numel()
    lanes = torch.empty((numel + 3) // 4, dtype=torch.int64, device=like.device).random_(-2**63, None)
    keep = lanes.view(torch.int16)[:numel].view(like.shape) >= dropped_values - _LANE_VALUES // 2
    scale = torch.tensor(_LANE_VALUES / (_LANE_VALUES - dropped_values), dtype=like.dtype)
    return torch.where(keep, scale, torch.zeros((), dtype=like.dtype))


class _LaneThresholdDropout(torch.autograd.Function):
    """``y = x * m`` and ``dx = dy * m`` with the one mask ``m = keep / (1 - p')`` of :func:`_dropout_mask`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dropped_values: int) -> torch.Tensor:
        mask = _dropout_mask(x, dropped_values)
        ctx.save_for_backward(mask)
        return x * mask

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad_output * mask, None


def cpu_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout with probability ``p' = round(p * 2^16) / 2^16`` (see the module docstring); identity when
    not training or ``p' == 0`` (``p < 2^-17``); all zeros when ``p' == 1``, as torch does for ``p == 1``."""
    dropped_values = round(p * _LANE_VALUES)
    if not training or dropped_values == 0:
        return x
    if dropped_values == _LANE_VALUES:
        return x * 0.0
    return _LaneThresholdDropout.apply(x, dropped_values)


class CPUDropout(nn.Dropout):
    """``nn.Dropout`` (same ``p``, same ``train()``/``eval()`` switch) computed by :func:`cpu_dropout`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return cpu_dropout(x, self.p, self.training)


def t5_attention_cpu_dropout(module, query, key, value, attention_mask, scaling=None, dropout: float = 0.0,
                             position_bias=None, **kwargs):
    """Transformers' eager attention for T5, ``softmax(q k^T * scaling + position_bias + mask) v``, with the
    attention probabilities dropped out by :func:`cpu_dropout`; scores are updated in place (one tensor, not three)."""
    if scaling is None:  # transformers' default; T5 passes 1.0 (it folds 1/sqrt(d) into its initialisation)
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3))
    if scaling != 1.0:
        scores.mul_(scaling)
    if position_bias is not None:
        # T5 builds the bias as a permuted view; adding it in that layout, broadcast over the batch, runs several
        # times slower on a CPU than copying it contiguous first (docs/performance.md, kernels).
        scores.add_(position_bias.contiguous())
    if attention_mask is not None:
        scores.add_(attention_mask)
    weights = nn.functional.softmax(scores, dim=-1)
    weights = cpu_dropout(weights, dropout, module.training)
    return torch.matmul(weights, value).transpose(1, 2).contiguous(), weights


CPU_ATTENTION = "t5_eager_cpu_dropout"
AttentionInterface.register(CPU_ATTENTION, t5_attention_cpu_dropout)
AttentionMaskInterface.register(CPU_ATTENTION, eager_mask)  # additive float masks, as for "eager"


def fuse_elementwise(model: nn.Module, cpu: bool = False) -> dict[str, int]:
    """Replace the ``gelu_new`` modules (T5, GPT-2) and ``T5LayerNorm`` forwards in ``model`` by their fused forms
    (with ``cpu``, the CPU norm) and, with ``cpu``, its ``nn.Dropout`` modules and T5's eager attention by the
    integer-threshold dropout; returns the number of modules swapped per kind. Models with none of these (OPT, LLaMA)
    pass through untouched (counts zero)."""
    counts = {"gelu_tanh": 0, "rms_norm": 0, "dropout": 0, "attention": 0}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, NewGELUActivation):
                setattr(parent, name, TanhGELU())
                counts["gelu_tanh"] += 1
            elif type(child) is T5LayerNorm:  # same parameters and state dict, fused forward
                child.__class__ = CPUT5LayerNorm if cpu else FusedT5LayerNorm
                counts["rms_norm"] += 1
            elif cpu and type(child) is nn.Dropout:
                child.__class__ = CPUDropout
                counts["dropout"] += 1
    config = getattr(model, "config", None)
    if cpu and config is not None and config.model_type == "t5" and config._attn_implementation == "eager":
        model.set_attn_implementation(CPU_ATTENTION)
        counts["attention"] = sum(type(m).__name__ == "T5Attention" for m in model.modules())
    return counts

"""Global-norm gradient clipping, and the fp32 optimizer of ZeRO stage 0 that applies it.

DeepSpeed clips fp32 gradients at ZeRO stage 0 with a per-tensor loop: one norm kernel per parameter, an
all-reduce of the total, then a multiply of every gradient by ``min(1, max_norm / (norm + 1e-6))``, also when that
factor is 1. On flan-t5-small on two CPU cores that is 79 ms a step. :func:`clip_by_global_norm` computes the same
norm with torch's multi-tensor kernel and multiplies only when it clips (39 ms), and :class:`ClippedAdamW` runs it
before torch's fused AdamW, so that DeepSpeed is configured without clipping of its own
(:func:`minillm.engine.deepspeed_config.engine_config`). DeepSpeed has all-reduced the gradients before ``step``, so
every rank computes the same norm and no further communication is needed.
"""

from __future__ import annotations

import math

import torch


@torch.no_grad()
def clip_by_global_norm(grads: list[torch.Tensor], max_norm: float) -> float:
    """Return ``||g||_2`` over all of ``grads``; when ``max_norm > 0``, the norm is finite and
    ``c = max_norm / (norm + 1e-6) < 1`` (DeepSpeed's rule), scale every gradient by ``c`` in place."""
    if not grads:
        return 0.0
    norm = float(torch.nn.utils.get_total_norm(grads, foreach=True))
    if max_norm > 0 and math.isfinite(norm):
        clip = max_norm / (norm + 1e-6)
        if clip < 1:
            torch._foreach_mul_(grads, clip)
    return norm


class ClippedAdamW(torch.optim.AdamW):
    """torch's fused AdamW, stepping on gradients clipped by :func:`clip_by_global_norm`. ``max_grad_norm`` <= 0
    turns clipping off. ``_global_grad_norm`` (read by DeepSpeed's ``get_global_grad_norm``) is the norm of the last
    step's gradients before clipping. A non-finite norm is not skipped, as in DeepSpeed's fp32 path: the step runs
    and the loss shows it."""

    def __init__(self, param_groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                 max_grad_norm: float):
        super().__init__(param_groups, lr=lr, betas=betas, eps=eps, fused=True)
        self.max_grad_norm = max_grad_norm
        self._global_grad_norm = None

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self._global_grad_norm = clip_by_global_norm(grads, self.max_grad_norm)
        return super().step(closure)

"""Global-norm gradient clipping folded into torch's fused AdamW, and the fp32 optimizer of ZeRO stage 0 that uses it.

DeepSpeed clips fp32 gradients at ZeRO stage 0 with a per-tensor loop: one norm kernel per parameter, an
all-reduce of the total, then a multiply of every gradient by ``c = min(1, max_norm / (norm + 1e-6))``, also when
that factor is 1. Here :func:`global_grad_norm` computes the same norm with torch's multi-tensor kernel, and the
factor reaches torch's fused AdamW kernel as the divisor ``1 / c`` of the gradients it reads
(:func:`set_gradient_divisor`; ``grad_scale``, the attribute torch's ``GradScaler`` sets on fused optimizers to
unscale gradients inside the kernel), so clipping costs no pass of its own over the gradients. :class:`ClippedAdamW`
does this for fp32 models, so that DeepSpeed is configured without clipping of its own
(:func:`minillm.engine.deepspeed_config.engine_config`); the bf16 optimizer of :mod:`minillm.engine.master_weights`
does it on its fp32 master gradients. DeepSpeed has all-reduced the gradients before ``step``, so every rank
computes the same norm and no further communication is needed. ``tools/bench_optimizer_step.py`` times both
optimizers against DeepSpeed's rule.
"""

from __future__ import annotations

import math

import torch


NORM_CHUNK = 2**16  # elements per partial norm in global_grad_norm


@torch.no_grad()
def global_grad_norm(grads: list[torch.Tensor]) -> float:
    """``||g||_2`` over all of ``grads`` (0 for none), as the root sum of squares of the norms of chunks of
    ``NORM_CHUNK`` elements, with torch's multi-tensor kernel.

    Why chunks: torch's CPU norm of one fp32 tensor accumulates its sum of squares with an error that grows with
    the length, 1e-5 relative at a million normal values, 7e-4 at 16 million (one flan-t5-small embedding
    gradient) and 7e-3 at the 77 million of its flat master gradient (the clipping factor and the logged norm off
    by 0.7 %); over chunks it stays near 1e-7, at the same speed."""
    if not grads:
        return 0.0
    chunks = [chunk for grad in grads for chunk in grad.reshape(-1).split(NORM_CHUNK)]
    return float(torch.nn.utils.get_total_norm(chunks, foreach=True))


def clipping_divisor(norm: float, max_norm: float) -> float | None:
    """``1 / c`` with ``c = max_norm / (norm + 1e-6)`` (DeepSpeed's rule) where clipping applies: ``max_norm > 0``,
    ``norm`` finite and ``c < 1``; else None (the gradients are used as they are)."""
    if max_norm <= 0 or not math.isfinite(norm):
        return None
    divisor = (norm + 1e-6) / max_norm
    return divisor if divisor > 1 else None


def set_gradient_divisor(optimizer: torch.optim.Optimizer, divisor: float | None) -> None:
    """Make the next ``step`` of torch's fused Adam/AdamW ``optimizer`` read every gradient as ``g / divisor``
    (None: as ``g``). The kernel also writes the divided gradient back into ``.grad``."""
    optimizer.grad_scale = None if divisor is None else torch.tensor(divisor, dtype=torch.float32)


class ClippedAdamW(torch.optim.AdamW):
    """torch's fused AdamW, stepping on gradients clipped by the global norm. ``max_grad_norm`` <= 0 turns clipping
    off. ``_global_grad_norm`` (read by DeepSpeed's ``get_global_grad_norm``) is the norm of the last step's gradients
    before clipping. A step whose norm is not finite is skipped, as every other optimizer path skips it (the bf16
    masters of :mod:`minillm.engine.master_weights`, DeepSpeed's ZeRO and bf16 optimizers): weights, moments and
    step count stay as they are, and ``overflow`` tells DeepSpeed's engine, which then leaves the learning-rate
    schedule where it is and counts the step as skipped."""

    def __init__(self, param_groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                 max_grad_norm: float):
        super().__init__(param_groups, lr=lr, betas=betas, eps=eps, fused=True)
        self.max_grad_norm = max_grad_norm
        self._global_grad_norm = None
        self.overflow = False

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        self._global_grad_norm = global_grad_norm(grads)
        self.overflow = not math.isfinite(self._global_grad_norm)
        if self.overflow:
            return None
        set_gradient_divisor(self, clipping_divisor(self._global_grad_norm, self.max_grad_norm))
        return super().step(closure)

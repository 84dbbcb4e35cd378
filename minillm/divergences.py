"""Token-level divergences between a teacher and a student, as pure functions of logits and a mask.

Every function takes ``student_logits`` and ``teacher_logits`` ``[..., V]`` (the same vocabulary), a boolean
``mask`` ``[...]`` of the valid positions, a ``temperature`` applied to both (``logits / temperature``; no
``temperature^2`` factor: scale the loss yourself if you want Hinton's) and a ``reduction``:

- ``"mean"`` (default): the mean over valid positions; a fully masked input gives 0, not NaN;
- ``"sum"``: the sum over valid positions (the training loop divides by the global token count itself);
- ``"none"``: the per-position values, 0 at masked positions.

With s the student's and t the teacher's distribution at one position (sums over the vocabulary):

- forward KL ``KL(t || s) = sum t log(t / s)``;
- reverse KL ``KL(s || t) = sum s log(s / t)``;
- generalised JSD ``JSD_beta = beta KL(t || m) + (1 - beta) KL(s || m)``, ``m = beta t + (1 - beta) s`` (GKD's form).
  ``JSD_beta`` itself is 0 at both ends; the endpoints are taken as its limits in direction,
  ``JSD_beta / beta -> KL(t || s)`` as beta -> 0 and ``JSD_beta / (1 - beta) -> KL(s || t)`` as beta -> 1, so
  beta = 0 *is* forward KL and beta = 1 reverse KL (the convention of TRL after its PR #3043), computed directly;
- skew forward KL ``KL(t || alpha t + (1 - alpha) s)`` and skew reverse KL ``KL(s || alpha s + (1 - alpha) t)``
  (DistiLLM; alpha = 0 gives the plain KLs);
- total variation ``TVD = 1/2 sum |t - s|`` (in [0, 1]);
- adaptive KL (AKL, Wu et al. 2024) ``w_head KL(t || s) + w_tail KL(s || t)``: sort the vocabulary by t, the head is
  the shortest prefix whose teacher mass reaches ``mu`` (0.5), ``g_head`` / ``g_tail`` are ``sum |t - s|`` over
  head / tail, and ``w_head = g_head / (g_head + g_tail)`` (``w_tail = 1 - w_head``; both 1/2 when s = t). The
  weights are treated as constants in the gradient, as in the reference implementation.

Numerics: log-softmax in fp32 for bf16, fp16 and fp32 inputs (fp64 stays fp64); ``0 log 0 = 0`` (a token with zero probability under the
first distribution of a KL contributes nothing, so ``-inf`` logits are fine), a token the first distribution
covers and the second gives zero probability makes the KL ``+inf`` (as the mathematics says); the logits of masked
positions are replaced by zeros before anything else, so NaN or ``-inf`` there reach neither the result nor the
gradient (which is zero at those positions).
"""

from __future__ import annotations

import math

import torch

REDUCTIONS = ("mean", "sum", "none")


def log_probs(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``log softmax(logits / temperature)`` in fp32, or in fp64 for fp64 logits."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature, dim=-1)


def _pair_log_probs(student_logits, teacher_logits, mask, temperature: float):
    """Both log-distributions in fp32, with masked positions' logits replaced by zeros first, so that whatever
    they hold (padding garbage, NaN, all ``-inf``) cannot reach the result or the gradient."""
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                         f"{tuple(teacher_logits.shape)} differ: the models must share one vocabulary")
    keep = mask.bool().unsqueeze(-1)
    student_logits = torch.where(keep, student_logits, torch.zeros((), dtype=student_logits.dtype,
                                                                   device=student_logits.device))
    teacher_logits = torch.where(keep, teacher_logits, torch.zeros((), dtype=teacher_logits.dtype,
                                                                   device=teacher_logits.device))
    return log_probs(student_logits, temperature), log_probs(teacher_logits, temperature)


def kl_from_log_probs(p_log: torch.Tensor, q_log: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p_v (log p_v - log q_v)`` per position, with ``0 log 0 = 0``."""
    support = p_log > -math.inf
    safe_q = torch.where(support, q_log, torch.zeros_like(q_log))
    log_ratio = torch.where(support, p_log - safe_q, torch.zeros_like(p_log))
    return (p_log.exp() * log_ratio).sum(-1)


def _mixture_log(a_log: torch.Tensor, b_log: torch.Tensor, weight_a: float) -> torch.Tensor:
    """``log(weight_a a + (1 - weight_a) b)`` for 0 < weight_a < 1, by logsumexp; ``-inf`` where both are zero.
    Such tokens are set aside before ``logaddexp``, whose gradient at (-inf, -inf) is NaN."""
    both_zero = (a_log == -math.inf) & (b_log == -math.inf)
    mixed = torch.logaddexp(a_log.masked_fill(both_zero, 0.0) + math.log(weight_a),
                            b_log.masked_fill(both_zero, 0.0) + math.log(1.0 - weight_a))
    return mixed.masked_fill(both_zero, -math.inf)


def coarsen(log_probs_: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[..., K + 1]`` log-probabilities of the ``K`` tokens ``ids`` (``[..., K]``) and, last, of all the others
    together (a logsumexp, so a tiny remainder stays accurate). The KL between two coarsened distributions is at
    most the KL between the distributions (data processing) and equals it when the ids cover the support; MiniLLM
    keeps a teacher's distribution this way, top-k plus remainder, when the full one does not fit. A remainder of
    zero probability (the ids cover the support) is ``-inf`` with a zero gradient; a plain logsumexp over nothing
    but ``-inf`` would make the gradient NaN."""
    others = log_probs_.scatter(-1, ids, -math.inf)
    empty = (others == -math.inf).all(-1, keepdim=True)
    rest = others.masked_fill(empty, 0.0).logsumexp(-1, keepdim=True).masked_fill(empty, -math.inf)
    return torch.cat([log_probs_.gather(-1, ids), rest], dim=-1)


def _reduce(per_position: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    mask = mask.bool()
    if mask.shape != per_position.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the positions {tuple(per_position.shape)}")
    values = torch.where(mask, per_position, torch.zeros_like(per_position))
    if reduction == "none":
        return values
    total = values.sum()
    return total if reduction == "sum" else total / mask.sum().clamp(min=1)


def forward_kl(student_logits, teacher_logits, mask, temperature: float = 1.0, reduction: str = "mean"):
    """``KL(t || s) = sum_v t_v log(t_v / s_v)`` (mean-seeking; word-level KD's classic loss)."""
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(kl_from_log_probs(t_log, s_log), mask, reduction)


def reverse_kl(student_logits, teacher_logits, mask, temperature: float = 1.0, reduction: str = "mean"):
    """``KL(s || t) = sum_v s_v log(s_v / t_v)`` (mode-seeking; MiniLLM's objective at one position)."""
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(kl_from_log_probs(s_log, t_log), mask, reduction)


def generalized_jsd(student_logits, teacher_logits, mask, beta: float = 0.5, temperature: float = 1.0,
                    reduction: str = "mean"):
    """``beta KL(t || m) + (1 - beta) KL(s || m)``, ``m = beta t + (1 - beta) s``; beta = 0 is forward KL and
    beta = 1 reverse KL (the limits of ``JSD_beta / beta`` and ``JSD_beta / (1 - beta)``; module docstring)."""
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    if beta == 0.0:
        per_position = kl_from_log_probs(t_log, s_log)
    elif beta == 1.0:
        per_position = kl_from_log_probs(s_log, t_log)
    else:
        m_log = _mixture_log(t_log, s_log, beta)
        per_position = beta * kl_from_log_probs(t_log, m_log) + (1.0 - beta) * kl_from_log_probs(s_log, m_log)
    return _reduce(per_position, mask, reduction)


def _skew_kl(p_log: torch.Tensor, q_log: torch.Tensor, alpha: float) -> torch.Tensor:
    """``KL(p || alpha p + (1 - alpha) q)`` per position; alpha = 0 is ``KL(p || q)``."""
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    return kl_from_log_probs(p_log, q_log if alpha == 0.0 else _mixture_log(p_log, q_log, alpha))


def skew_forward_kl(student_logits, teacher_logits, mask, alpha: float = 0.1, temperature: float = 1.0,
                    reduction: str = "mean"):
    """``KL(t || alpha t + (1 - alpha) s)`` (DistiLLM's SKL; alpha = 0 is forward KL)."""
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_skew_kl(t_log, s_log, alpha), mask, reduction)


def skew_reverse_kl(student_logits, teacher_logits, mask, alpha: float = 0.1, temperature: float = 1.0,
                    reduction: str = "mean"):
    """``KL(s || alpha s + (1 - alpha) t)`` (DistiLLM's SRKL; alpha = 0 is reverse KL)."""
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(_skew_kl(s_log, t_log, alpha), mask, reduction)


def total_variation(student_logits, teacher_logits, mask, temperature: float = 1.0, reduction: str = "mean"):
    """``TVD = 1/2 sum_v |t_v - s_v|``, in [0, 1]."""
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    return _reduce(0.5 * (t_log.exp() - s_log.exp()).abs().sum(-1), mask, reduction)


def adaptive_kl(student_logits, teacher_logits, mask, mu: float = 0.5, temperature: float = 1.0,
                reduction: str = "mean"):
    """``w_head KL(t || s) + (1 - w_head) KL(s || t)``, ``w_head = g_head / (g_head + g_tail)`` from the
    absolute gaps on the teacher's head (shortest top prefix with mass >= ``mu``) and tail (module docstring)."""
    if not 0.0 < mu <= 1.0:
        raise ValueError(f"mu must be in (0, 1], got {mu}")
    s_log, t_log = _pair_log_probs(student_logits, teacher_logits, mask, temperature)
    with torch.no_grad():
        t_sorted, order = t_log.exp().sort(dim=-1, descending=True)
        gap = (t_sorted - s_log.exp().gather(-1, order)).abs()
        mass_before = t_sorted.cumsum(-1) - t_sorted  # teacher mass of the tokens ranked above
        head = mass_before < mu
        g_head = (gap * head).sum(-1)
        g_tail = (gap * ~head).sum(-1)
        total = g_head + g_tail
        w_head = torch.where(total > 0, g_head / total.clamp(min=torch.finfo(total.dtype).tiny),
                             torch.full_like(total, 0.5))
    per_position = w_head * kl_from_log_probs(t_log, s_log) + (1.0 - w_head) * kl_from_log_probs(s_log, t_log)
    return _reduce(per_position, mask, reduction)


DIVERGENCES = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": generalized_jsd, "sfkl": skew_forward_kl,
               "srkl": skew_reverse_kl, "tvd": total_variation, "akl": adaptive_kl}

"""MiniLLM's policy-gradient pieces as pure functions of per-token tensors ``[B, T]`` and a mask.

Notation (``docs/math.md``): x the prompt, y = y_1..y_T a rollout target, q_theta the
student, q_old the student that sampled it, p the frozen teacher, m_t = (1 - alpha) q_old + alpha p the
teacher-mixed distribution it was sampled from. ``mask[b, t]`` is True on the rollout's tokens (EOS included) and
False on the padding after it; padded positions contribute to nothing (sums, means, whitening statistics).

The objective minimised is the sequence-level reverse KL, whose gradient is exactly

    grad KL(q || p) = -E_{y~q} sum_t R_t grad log q(y_t | y_<t, x),   R_t = sum_{t' >= t} r_t',
    r_t = log p(y_t | y_<t, x) - log q(y_t | y_<t, x),

or, splitting R_t = r_t + R_{t+1} (the single-step decomposition),

    grad KL = E_{y~q} sum_t grad_t KL(q(. | y_<t, x) || p(. | y_<t, x)) - E_{y~q} sum_t R_{t+1} grad log q(y_t | .).

MiniLLM trades bias for variance on top: discount gamma, normalising the return by the number of tokens it sums,
whitening, PPO clipping of the ratio and per-token importance weights for the mixed sampling. Each is a switch
here; with all of them off the surrogate's expected gradient is the exact one (tests/test_minillm_gradient.py).
"""

from __future__ import annotations

import torch


def token_rewards(teacher_logprobs: torch.Tensor, old_logprobs: torch.Tensor, mask: torch.Tensor,
                  scaling: float = 1.0, clip: float | None = None) -> torch.Tensor:
    """``r_t = clip((log p(y_t) - log q_old(y_t)) / scaling, -clip, clip)`` on valid tokens, 0 elsewhere."""
    rewards = (teacher_logprobs - old_logprobs) / scaling
    if clip is not None:
        rewards = rewards.clamp(-clip, clip)
    return torch.where(mask, rewards, torch.zeros_like(rewards))


def returns(rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0, include_current: bool = True,
            length_norm: bool = False) -> torch.Tensor:
    """Discounted return from each position to the end of its sequence.

    ``include_current``: ``G_t = sum_{t' >= t} gamma^(t' - t) r_t'`` (the plain policy gradient's R_t); otherwise
    ``G_t = sum_{t' > t} gamma^(t' - t - 1) r_t'`` (R_{t+1}, the long-term term when the single-step term handles
    r_t). ``length_norm`` divides G_t by the number of rewards it sums (``n_t``; a sum of none stays 0), the
    paper's R^Norm. Zero at padded positions.
    """
    rewards = torch.where(mask, rewards, torch.zeros_like(rewards))
    out = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in range(rewards.shape[1] - 1, -1, -1):  # G_t = r_t + gamma G_{t+1}
        next_return = running
        running = rewards[:, t] + gamma * running
        out[:, t] = running if include_current else next_return
    if length_norm:
        remaining = mask.flip(-1).cumsum(-1).flip(-1).to(rewards.dtype)  # tokens from t to the end, t included
        counts = remaining if include_current else remaining - 1
        out = out / counts.clamp(min=1)
    return torch.where(mask, out, torch.zeros_like(out))


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, all_reduce_sum=None, eps: float = 1e-8) -> torch.Tensor:
    """``(values - mean) / sqrt(var + eps)`` with mean and (biased) variance over the valid positions only, taken
    over every process when ``all_reduce_sum`` (a function summing a float64 tensor across processes in place)
    is given. Zero at padded positions."""
    valid = values[mask].double()
    stats = torch.stack([valid.sum(), (valid * valid).sum(), torch.tensor(float(valid.numel()), dtype=torch.float64,
                                                                         device=values.device)])
    if all_reduce_sum is not None:
        all_reduce_sum(stats)
    total, total_sq, count = stats.tolist()
    if count == 0:
        return torch.zeros_like(values)
    mean = total / count
    var = max(total_sq / count - mean * mean, 0.0)
    whitened = (values - mean) / (var + eps) ** 0.5
    return torch.where(mask, whitened, torch.zeros_like(whitened))


def ppo_token_losses(logprobs: torch.Tensor, old_logprobs: torch.Tensor, weights: torch.Tensor,
                     advantages: torch.Tensor, mask: torch.Tensor, cliprange: float | None = None):
    """Per-token clipped policy-gradient loss and whether the clip was active.

    ``rho_t = exp(log q_theta(y_t) - log q_old(y_t)) w_t`` (``w_t = q_old(y_t) / m_t(y_t)``, MiniLLM's per-token
    importance weight; 1 without mixing), ``loss_t = max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))``; with
    ``cliprange`` None, ``loss_t = -A_t rho_t``, whose gradient at theta = theta_old and w = 1 is the policy
    gradient ``-A_t grad log q(y_t)``. Returns ``(loss [B, T], clipped [B, T] bool)``, both zero/False on padding.
    """
    ratio = torch.exp(logprobs - old_logprobs) * weights
    loss = -advantages * ratio
    clipped = torch.zeros_like(mask)
    if cliprange is not None:
        clipped_loss = -advantages * ratio.clamp(1.0 - cliprange, 1.0 + cliprange)
        clipped = (clipped_loss > loss) & mask
        loss = torch.maximum(loss, clipped_loss)
    return torch.where(mask, loss, torch.zeros_like(loss)), clipped


def k3_reverse_kl(teacher_logprobs: torch.Tensor, logprobs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token ``exp(d) - 1 - d`` with ``d = log p(y_t) - log q(y_t)``: a non-negative estimate of the token
    reverse KL for y_t ~ q (Schulman's k3), MiniLLM's logged ``rev_kl``. Zero on padding."""
    d = teacher_logprobs - logprobs
    return torch.where(mask, torch.expm1(d) - d, torch.zeros_like(d))

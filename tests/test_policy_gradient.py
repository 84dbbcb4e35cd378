"""MiniLLM's policy-gradient pieces (minillm/policy_gradient.py) against hand-computed numbers at non-default settings
(docs/math.md, "The switches"). Every batch has two rows, the second padded, with a padded value chosen so that
reading it would change the result."""

import math

import torch

from minillm.objectives.minillm.policy_gradient import (k3_reverse_kl, masked_whiten, ppo_token_losses, returns,
                                                       token_rewards)

MASK = torch.tensor([[True, True, True], [True, True, False]])


def assert_exact(actual: torch.Tensor, expected) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected, dtype=actual.dtype), atol=1e-12, rtol=0)


def test_token_rewards_divide_by_the_scaling_then_clip():
    # log p - log q_old = [-0.6, 0.8, 0.3], [0.2, -0.2, pad]; / 0.5 = [-1.2, 1.6, 0.6], [0.4, -0.4];
    # clipped to +-1: the first two saturate at -1 and +1, the rest pass
    teacher = torch.tensor([[-1.0, -0.2, -3.0], [-0.5, -2.0, -7.0]], dtype=torch.float64)
    old = torch.tensor([[-0.4, -1.0, -3.3], [-0.7, -1.8, -1.0]], dtype=torch.float64)
    assert_exact(token_rewards(teacher, old, MASK, scaling=0.5, clip=1.0), [[-1.0, 1.0, 0.6], [0.4, -0.4, 0.0]])
    assert_exact(token_rewards(teacher, old, MASK, scaling=0.5), [[-1.2, 1.6, 0.6], [0.4, -0.4, 0.0]])


# rewards [1, 2, 3] and [8, 4, (padding 99)], gamma 0.5:
#   G_t (t' >= t):        row 0: G_2 = 3, G_1 = 2 + 0.5 * 3 = 3.5, G_0 = 1 + 0.5 * 3.5 = 2.75; row 1: G_1 = 4, G_0 = 10
#   R_{t+1} (t' > t):     row 0: 2 + 0.5 * 3 = 3.5, 3, 0 (a sum of none);                       row 1: 4, 0
#   rewards summed (n_t): t' >= t: [3, 2, 1], [2, 1]; t' > t: [2, 1, 0], [1, 0]
REWARDS = torch.tensor([[1.0, 2.0, 3.0], [8.0, 4.0, 99.0]], dtype=torch.float64)


def test_returns_discount_from_the_current_token():
    assert_exact(returns(REWARDS, MASK, gamma=0.5), [[2.75, 3.5, 3.0], [10.0, 4.0, 0.0]])


def test_returns_length_normalised_from_the_current_token():
    assert_exact(returns(REWARDS, MASK, gamma=0.5, length_norm=True), [[2.75 / 3, 3.5 / 2, 3.0], [5.0, 4.0, 0.0]])


def test_returns_discount_from_the_next_token():
    assert_exact(returns(REWARDS, MASK, gamma=0.5, include_current=False), [[3.5, 3.0, 0.0], [4.0, 0.0, 0.0]])


def test_returns_length_normalised_from_the_next_token():
    assert_exact(returns(REWARDS, MASK, gamma=0.5, include_current=False, length_norm=True),
                 [[3.5 / 2, 3.0, 0.0], [4.0, 0.0, 0.0]])


# valid values 1, 2, 6, 3 (padding 100, -50): mean 3, biased variance (4 + 1 + 9 + 0) / 4 = 3.5
VALUES = torch.tensor([[1.0, 2.0, 6.0], [3.0, 100.0, -50.0]], dtype=torch.float64)
WHITEN_MASK = torch.tensor([[True, True, True], [True, False, False]])


def test_masked_whiten_ignores_padding():
    scale = math.sqrt(3.5 + 1e-8)
    assert_exact(masked_whiten(VALUES, WHITEN_MASK), [[-2 / scale, -1 / scale, 3 / scale], [0.0, 0.0, 0.0]])


def test_masked_whiten_uses_the_statistics_summed_over_processes():
    """A second process holds the valid values 5 and 7: its (sum, sum of squares, count) = (12, 74, 2) are added by
    the all-reduce. Over 1, 2, 6, 3, 5, 7: mean 4, variance 124 / 6 - 16 = 14 / 3."""
    def all_reduce_sum(stats):
        stats += torch.tensor([12.0, 74.0, 2.0], dtype=torch.float64)

    scale = math.sqrt(14 / 3 + 1e-8)
    assert_exact(masked_whiten(VALUES, WHITEN_MASK, all_reduce_sum),
                 [[-3 / scale, -2 / scale, 2 / scale], [-1 / scale, 0.0, 0.0]])


def test_masked_whiten_of_no_valid_token_is_zero():
    assert_exact(masked_whiten(VALUES, torch.zeros_like(WHITEN_MASK)), [[0.0] * 3] * 2)


# Six tokens (the last is padding): ratio rho = exp(log q - log q_old) w and advantage A
#   token  rho   A    -A rho   -A clip(rho, 0.8, 1.2)   loss (the max)   clip active
#   0      1.5   +2   -3.0     -2.4                     -2.4             yes (A > 0, rho above 1 + eps)
#   1      0.5   +2   -1.0     -1.6                     -1.0             no
#   2      0.5   -1   +0.5     +0.8                     +0.8             yes (A < 0, rho below 1 - eps)
#   3      1.5   -1   +1.5     +1.2                     +1.5             no
#   4      1.1   +1   -1.1     -1.1                     -1.1             no (inside the range)
#   5      3.0   +5   padding                           0                no
# Token 0 gets its ratio 1.5 as exp(log 0.75) x weight 2: the importance weight multiplies the ratio.
def ppo_inputs():
    ratios_before_weight = torch.tensor([[0.75, 0.5, 0.5], [1.5, 1.1, 3.0]], dtype=torch.float64)
    logprobs = ratios_before_weight.log().requires_grad_(True)
    old = torch.zeros(2, 3, dtype=torch.float64)
    weights = torch.tensor([[2.0, 1.0, 1.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    advantages = torch.tensor([[2.0, 2.0, -1.0], [-1.0, 1.0, 5.0]], dtype=torch.float64)
    return logprobs, old, weights, advantages


def test_ppo_token_losses_clip_both_ways():
    logprobs, old, weights, advantages = ppo_inputs()
    loss, clipped = ppo_token_losses(logprobs, old, weights, advantages, MASK, cliprange=0.2)
    assert_exact(loss.detach(), [[-2.4, -1.0, 0.8], [1.5, -1.1, 0.0]])
    assert clipped.tolist() == [[True, False, True], [False, False, False]]
    # d loss / d log q = -A rho where the clip is inactive (the policy gradient at theta_old) and 0 where it is
    loss.sum().backward()
    assert_exact(logprobs.grad, [[0.0, -1.0, 0.0], [1.5, -1.1, 0.0]])


def test_ppo_token_losses_without_clipping():
    logprobs, old, weights, advantages = ppo_inputs()
    loss, clipped = ppo_token_losses(logprobs, old, weights, advantages, MASK)
    assert_exact(loss.detach(), [[-3.0, -1.0, 0.5], [1.5, -1.1, 0.0]])
    assert not bool(clipped.any())


def test_k3_reverse_kl():
    # d = log p - log q = 1 and -1: e^d - 1 - d = e - 2 and e^-1; padding 0
    teacher = torch.tensor([[-1.0, -2.0, 0.0], [-3.0, -3.0, -5.0]], dtype=torch.float64)
    student = torch.tensor([[-2.0, -1.0, 0.0], [-3.0, -3.0, -1.0]], dtype=torch.float64)
    assert_exact(k3_reverse_kl(teacher, student, MASK), [[math.e - 2, math.exp(-1), 0.0], [0.0, 0.0, 0.0]])

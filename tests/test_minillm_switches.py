"""The MiniLLM objective's switches wired through :class:`MiniLLMObjective` at non-default settings (docs/math.md):
its advantages against a direct computation, its clipped loss at a perturbed student against the hand formula, and
the whitening scope (``--whiten-scope``)."""

import copy
import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from minillm.engine.config import parse_config
from minillm.models.base import IGNORE_INDEX
from minillm.objectives.minillm import MiniLLMObjective
from minillm.objectives.minillm.rollouts import Rollouts
from minillm_helpers import EOS, PAD, adapter_for, minillm_config, tiny_t5

# Three rollouts of lengths 4, 2 and 3 with recorded log-probs; log p - log q_old ranges over about +-0.3, so with
# reward scaling 0.25 and reward clip 0.5 some rewards saturate and some do not.
LENGTHS = [4, 2, 3]
TEACHER = [[-1.0, -0.6, -2.2, -0.1], [-0.5, -1.4, 0.0, 0.0], [-0.9, -0.3, -1.2, 0.0]]
OLD = [[-0.8, -0.7, -2.0, -0.4], [-0.55, -1.1, 0.0, 0.0], [-1.0, -0.35, -1.0, 0.0]]
MIXED = [[-0.7, -0.9, -1.8, -0.5], [-0.6, -1.0, 0.0, 0.0], [-1.1, -0.3, -1.1, 0.0]]
SETTINGS = dict(reward_scaling=0.25, cliprange_reward=0.5, gamma=0.8)


def hand_rollouts() -> Rollouts:
    labels = torch.tensor([[2] * n + [IGNORE_INDEX] * (4 - n) for n in LENGTHS])
    prompt = torch.tensor([[3, 2, EOS]] * len(LENGTHS))
    return Rollouts(input_ids=prompt, attention_mask=torch.ones_like(prompt), labels=labels,
                    old_logprobs=torch.tensor(OLD, dtype=torch.float64),
                    teacher_logprobs=torch.tensor(TEACHER, dtype=torch.float64),
                    mixed_logprobs=torch.tensor(MIXED, dtype=torch.float64),
                    teacher_log_dist=torch.zeros(len(LENGTHS), 4, 1, dtype=torch.float64))


def objective_with(**config) -> MiniLLMObjective:
    """The objective's bookkeeping alone: advantages and micro-batches need no model."""
    return MiniLLMObjective(minillm_config(**config), SimpleNamespace(pad_token_id=PAD, banned_ids=(PAD,)),
                            lambda path: None)


def direct_advantages(single_step_reg: bool, length_norm: bool, whiten: bool) -> list[list[float]]:
    """A_t = whiten(G_t / n_t), G_t = sum_{t' in S_t} 0.8^(t' - min S_t) r_t', S_t = {t' > t} with the single-step
    term and {t' >= t} without, n_t = |S_t| with length normalisation (0 when S_t is empty), and
    r_t = clip((log p - log q_old) / 0.25, -0.5, 0.5); computed position by position."""
    out = []
    for teacher, old, n in zip(TEACHER, OLD, LENGTHS):
        rewards = [min(max((teacher[t] - old[t]) / 0.25, -0.5), 0.5) for t in range(n)]
        row = []
        for t in range(n):
            summed = list(range(t + 1 if single_step_reg else t, n))
            value = sum(0.8 ** (u - summed[0]) * rewards[u] for u in summed)
            row.append(value / len(summed) if length_norm and summed else value)
        out.append(row)
    if whiten:
        valid = [v for row in out for v in row]
        mean = sum(valid) / len(valid)
        std = math.sqrt(sum((v - mean) ** 2 for v in valid) / len(valid) + 1e-8)
        out = [[(v - mean) / std for v in row] for row in out]
    return [row + [0.0] * (4 - len(row)) for row in out]


@pytest.mark.parametrize("single_step_reg,length_norm,whiten", list(itertools.product([False, True], repeat=3)))
def test_advantages_match_the_direct_computation(single_step_reg, length_norm, whiten):
    objective = objective_with(single_step_reg=single_step_reg, length_norm=length_norm, whiten_advantages=whiten,
                               **SETTINGS)
    rewards, advantages, weights = objective.advantages(hand_rollouts())
    expected = torch.tensor(direct_advantages(single_step_reg, length_norm, whiten), dtype=torch.float64)
    torch.testing.assert_close(advantages, expected, atol=1e-12, rtol=0)
    clipped_rewards = rewards.abs() == 0.5
    assert bool(clipped_rewards.any()) and bool((~clipped_rewards & hand_rollouts().mask).any())
    mask = hand_rollouts().mask  # w_t = q_old(y_t) / m_t(y_t) = exp(log q_old - log m_t), 0 on padding
    ratios = [[math.exp(o - m) for o, m in zip(old, mixed)] for old, mixed in zip(OLD, MIXED)]
    expected_weights = torch.where(mask, torch.tensor(ratios, dtype=torch.float64), 0.0)
    torch.testing.assert_close(weights, expected_weights, atol=1e-12, rtol=0)


def test_clipped_loss_at_a_perturbed_student_follows_the_hand_formula():
    """After a collection at alpha 0.2 and temperature 1.3, a perturbed student's per-token loss is
    max(-A rho, -A clip(rho, 0.9, 1.1)), rho = exp(log q_theta(y_t) - log q_old(y_t)) w_t, log q_theta from its
    logits / 1.3; the clip is active for positive and for negative advantages and inactive elsewhere. With
    ``cliprange`` 0 the loss is -A rho."""
    student = tiny_t5(12, d_model=16, seed=3, sharpen=0.1, eos_logit_zero=True)
    teacher = tiny_t5(12, d_model=24, seed=4, sharpen=0.1, eos_logit_zero=True)
    config = dict(rollout_max_new_tokens=5, teacher_mixed_alpha=0.2, temperature=1.3, whiten_advantages=True,
                  gamma=0.9, length_norm=True)
    objective = MiniLLMObjective(minillm_config(cliprange=0.1, **config), adapter_for(student), lambda path: teacher)
    prompt = torch.tensor([[5, 7, 3, EOS]] * 24)
    store, _ = objective.collect(student, [{"input_ids": prompt, "attention_mask": torch.ones_like(prompt)}],
                                 torch.Generator().manual_seed(0))
    batch = objective.micro_batch(store, range(24))
    perturbed = copy.deepcopy(student)
    with torch.no_grad():
        perturbed.lm_head.weight.add_(0.3 * torch.randn(perturbed.lm_head.weight.shape,
                                                        generator=torch.Generator().manual_seed(1)))
    rollouts, advantages, mask = batch["rollouts"], batch["advantages"], batch["rollouts"].mask
    with torch.no_grad():
        terms = objective.token_losses(perturbed, batch)
        unclipped = MiniLLMObjective(minillm_config(cliprange=0.0, **config), adapter_for(student),
                                     lambda path: teacher).token_losses(perturbed, batch)
        logits = adapter_for(perturbed).logits(perturbed, batch).index_fill(-1, torch.tensor([PAD]), -math.inf)
    log_q = torch.log_softmax(logits / 1.3, -1).gather(-1, rollouts.labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    rho = torch.exp(log_q - rollouts.old_logprobs) * batch["weights"]
    expected = torch.where(mask, torch.maximum(-advantages * rho, -advantages * rho.clamp(0.9, 1.1)), 0.0)
    torch.testing.assert_close(terms["pg"], expected, atol=1e-12, rtol=0)
    active = mask & (-advantages * rho.clamp(0.9, 1.1) > -advantages * rho)
    assert torch.equal(terms["clipped"], active)
    assert bool((active & (advantages > 0)).any()) and bool((active & (advantages < 0)).any())
    assert bool((mask & ~active).any())
    torch.testing.assert_close(unclipped["pg"], torch.where(mask, -advantages * rho, 0.0), atol=1e-12, rtol=0)
    assert not bool(unclipped["clipped"].any())


# ------------------------------------------------------------------------------------------------ whitening scope

def whitened_over(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    valid = values[mask]
    mean, var = valid.mean(), valid.var(unbiased=False)
    return torch.where(mask, (values - mean) / (var + 1e-8).sqrt(), 0.0)


def micro_batch_store(scope: str):
    objective = objective_with(single_step_reg=True, length_norm=True, whiten_advantages=True, whiten_scope=scope,
                               **SETTINGS)
    rollouts = hand_rollouts()
    rewards, advantages, weights = objective.advantages(rollouts)
    return objective, {"rollouts": rollouts, "rewards": rewards, "advantages": advantages, "weights": weights}


def test_micro_batch_scope_whitens_each_micro_batch_over_its_valid_tokens():
    """Per micro-batch: zero mean and unit variance over its valid tokens, zeros on padding; the collection's
    advantages stay raw (G_t / n_t), and the result differs from whitening once over the collection."""
    objective, store = micro_batch_store("micro-batch")
    raw = torch.tensor(direct_advantages(True, True, whiten=False), dtype=torch.float64)
    torch.testing.assert_close(store["advantages"], raw, atol=1e-12, rtol=0)
    collection_objective, collection_store = micro_batch_store("collection")
    for rows in ([0, 1], [2]):
        batch = objective.micro_batch(store, rows)
        mask = batch["rollouts"].mask
        torch.testing.assert_close(batch["advantages"], whitened_over(raw[rows][:, :mask.shape[1]], mask),
                                   atol=1e-12, rtol=0)
        assert abs(float(batch["advantages"][mask].mean())) < 1e-12
        assert abs(float(batch["advantages"][mask].var(unbiased=False)) - 1) < 1e-6
        collection_batch = collection_objective.micro_batch(collection_store, rows)
        assert float((batch["advantages"] - collection_batch["advantages"]).abs().max()) > 0.1


def test_micro_batch_scope_takes_its_statistics_across_processes():
    """Process 0 forms the micro-batch of rows [0, 1] while process 1 forms [2]: the all-reduce (here a stand-in
    adding process 1's sum, sum of squares and count) makes process 0 whiten over the valid tokens of both."""
    objective, store = micro_batch_store("micro-batch")
    other = store["advantages"][2][store["rollouts"].mask[2]]
    other_stats = torch.stack([other.sum(), (other * other).sum(), torch.tensor(float(other.numel()))]).double()

    def all_reduce_sum(stats):
        stats += other_stats

    batch = objective.micro_batch(store, [0, 1], all_reduce_sum)
    mask = store["rollouts"].mask
    torch.testing.assert_close(batch["advantages"], whitened_over(store["advantages"], mask)[[0, 1]],
                               atol=1e-12, rtol=0)
    assert float((batch["advantages"] - objective.micro_batch(store, [0, 1])["advantages"]).abs().max()) > 0.1


def test_whiten_scope_flag():
    assert parse_config([]).whiten_scope == "collection"
    assert parse_config(["--whiten-scope", "micro-batch"]).whiten_scope == "micro-batch"
    with pytest.raises(SystemExit):
        parse_config(["--whiten-scope", "minibatch"])
    config = parse_config(["--type", "minillm"])
    config.whiten_scope = "minibatch"  # e.g. from an edited args.json
    with pytest.raises(ValueError, match="--whiten-scope must be collection or micro-batch"):
        config.validate()

"""MiniLLM's estimator against the exact gradient of the sequence-level reverse KL, by enumeration.

Tiny student and teacher (vocabulary 5: pad, EOS and three words; different widths), targets of at most 3 tokens:
every target is enumerated (those ending at their first EOS, and the 27 of length 3 without one), so q(y|x) and
p(y|x) are exact, and so is KL(q || p) = sum_y q(y) (log q(y) - log p(y)) and its gradient. The training code's
surrogate, weighted by q(y) per sequence, must have the same gradient (shared/reference/seq2seq-rkl-math.md s.5).
"""

import itertools

import pytest
import torch

from minillm.models.adapter import IGNORE_INDEX, pad_right
from minillm.objectives.minillm import MiniLLMObjective
from minillm.rollouts import Rollouts, ban
from minillm_helpers import EOS, PAD, adapter_for, minillm_config, tiny_t5

VOCAB, MAX_LEN = 5, 3
WORDS = [i for i in range(VOCAB) if i not in (PAD, EOS)]


def all_targets() -> list[list[int]]:
    targets = []
    for length in range(1, MAX_LEN + 1):
        for words in itertools.product(WORDS, repeat=length - 1):
            targets.append([*words, EOS])
    targets += [list(words) for words in itertools.product(WORDS, repeat=MAX_LEN)]  # cut at the limit
    return targets


def teacher_forced(model, prompt: torch.Tensor, labels: torch.Tensor, adapter) -> torch.Tensor:
    """log-distributions [B, T, V] with the pad id banned (the rollouts' support)."""
    rows = len(labels)
    batch = {"input_ids": prompt.expand(rows, -1), "attention_mask": torch.ones_like(prompt).expand(rows, -1),
             "labels": labels}
    return torch.log_softmax(ban(adapter.logits(model, batch), (PAD,)), dim=-1)


def sequence_logprob(log_dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    mask = labels != IGNORE_INDEX
    picked = log_dist.gather(-1, labels.masked_fill(~mask, EOS).unsqueeze(-1)).squeeze(-1)
    return torch.where(mask, picked, 0.0).sum(-1)


@pytest.fixture(scope="module")
def setup():
    student = tiny_t5(VOCAB, d_model=8, seed=1)
    teacher = tiny_t5(VOCAB, d_model=12, seed=2).requires_grad_(False)
    prompt = torch.tensor([[2, 4, 3, EOS]])
    labels = pad_right(all_targets(), IGNORE_INDEX)
    return student, teacher, prompt, labels


def rollouts_of(student, teacher, prompt, labels, adapter) -> Rollouts:
    """All enumerated targets as a rollout batch, recorded the way the sampler records them (alpha = 0)."""
    with torch.no_grad():
        student_log = teacher_forced(student, prompt, labels, adapter)
        teacher_log = teacher_forced(teacher, prompt, labels, adapter)
    mask = labels != IGNORE_INDEX
    safe = labels.masked_fill(~mask, EOS).unsqueeze(-1)
    old = torch.where(mask, student_log.gather(-1, safe).squeeze(-1), 0.0)
    rows = len(labels)
    return Rollouts(input_ids=prompt.expand(rows, -1), attention_mask=torch.ones_like(prompt).expand(rows, -1),
                    labels=labels, old_logprobs=old,
                    teacher_logprobs=torch.where(mask, teacher_log.gather(-1, safe).squeeze(-1), 0.0),
                    mixed_logprobs=old.clone(), teacher_log_dist=teacher_log)


def exact_kl_and_gradient(student, teacher, prompt, labels):
    adapter = adapter_for(student)
    student.zero_grad()
    log_q = sequence_logprob(teacher_forced(student, prompt, labels, adapter), labels)
    with torch.no_grad():
        log_p = sequence_logprob(teacher_forced(teacher, prompt, labels, adapter), labels)
    kl = (log_q.exp() * (log_q - log_p)).sum()
    kl.backward()
    return kl.detach(), log_q.detach(), log_p, [p.grad.clone() for p in student.parameters()]


def estimator_gradient(student, teacher, prompt, labels, log_q, **config):
    """grad of sum_y q(y) surrogate(y), surrogate = the objective's per-token losses summed over y."""
    adapter = adapter_for(student)
    objective = MiniLLMObjective(minillm_config(**config), adapter, lambda path: teacher)
    rollouts = rollouts_of(student, teacher, prompt, labels, adapter)
    rewards, advantages, weights = objective.advantages(rollouts)
    store = {"rollouts": rollouts, "rewards": rewards, "advantages": advantages, "weights": weights}
    batch = objective.micro_batch(store, range(len(labels)))
    student.zero_grad()
    terms = objective.token_losses(student, batch)
    per_sequence = (terms["pg"] + terms["single"]).sum(-1)
    (log_q.exp() * per_sequence).sum().backward()
    return [p.grad.clone() for p in student.parameters()]


def test_enumeration_is_a_distribution(setup):
    student, teacher, prompt, labels = setup
    _, log_q, log_p, _ = exact_kl_and_gradient(student, teacher, prompt, labels)
    assert len(labels) == 1 + 3 + 9 + 27
    assert float(log_q.exp().sum()) == pytest.approx(1.0, abs=1e-12)
    assert float(log_p.exp().sum()) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("single_step_reg", [False, True], ids=["policy-gradient", "single-step+long-term"])
def test_expected_surrogate_gradient_equals_exact_reverse_kl_gradient(setup, single_step_reg):
    student, teacher, prompt, labels = setup
    kl, log_q, _, exact = exact_kl_and_gradient(student, teacher, prompt, labels)
    assert float(kl) > 0.05  # the models differ: the gradient is not trivially zero
    estimated = estimator_gradient(student, teacher, prompt, labels, log_q, single_step_reg=single_step_reg)
    scale = max(float(g.abs().max()) for g in exact)
    assert scale > 1e-3
    for e, g in zip(estimated, exact):
        torch.testing.assert_close(e, g, atol=1e-6, rtol=0)


def test_the_biased_additions_change_the_gradient(setup):
    """Each of MiniLLM's variance reductions moves the estimate off the exact gradient (they are really applied)."""
    student, teacher, prompt, labels = setup
    _, log_q, _, exact = exact_kl_and_gradient(student, teacher, prompt, labels)
    for change in (dict(gamma=0.5), dict(length_norm=True), dict(whiten_advantages=True), dict(reward_scaling=0.5)):
        estimated = estimator_gradient(student, teacher, prompt, labels, log_q, single_step_reg=True, **change)
        assert max(float((e - g).abs().max()) for e, g in zip(estimated, exact)) > 1e-4, change


def test_student_equal_to_teacher_gives_zero_rewards_kl_and_gradient(setup):
    student, _, prompt, labels = setup
    teacher = tiny_t5(VOCAB, d_model=8, seed=1).requires_grad_(False)  # the same weights as the student
    adapter = adapter_for(student)
    objective = MiniLLMObjective(minillm_config(single_step_reg=True, gamma=0.95, length_norm=True, cliprange=0.2,
                                                reward_scaling=0.5), adapter, lambda path: teacher)
    rollouts = rollouts_of(student, teacher, prompt, labels, adapter)
    rewards, advantages, weights = objective.advantages(rollouts)
    assert float(rewards.abs().max()) == 0.0 and float(advantages.abs().max()) == 0.0
    batch = objective.micro_batch({"rollouts": rollouts, "rewards": rewards, "advantages": advantages,
                                   "weights": weights}, range(len(labels)))
    student.zero_grad()
    terms = objective.token_losses(student, batch)
    assert float(terms["single"].detach().abs().max()) < 1e-12
    (terms["pg"] + terms["single"]).sum().backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters()) < 1e-12

"""MiniLLM's estimator against the exact gradient of the sequence-level reverse KL, by enumeration (docs/math.md).

Tiny float64 student and teacher (different widths; norms in float64 too) of every model family, each with four
possible outputs: EOS and three words (Flan-T5, OPT and LLaMA: a vocabulary of 5 with the banned pad; GPT-2, whose
pad is its EOS and bans nothing: a vocabulary of 4). Targets of at most 3 tokens: every target is enumerated (those
ending at their first EOS, and the 27 of length 3 without one), so sequence probabilities are exact, and so is the
reverse KL and its gradient. The decoder-only families read the prompt and the target as one sequence (the
adapter's alignment of logits with labels is what is tested there); the estimator is the same code for all.

The student samples from its processed distribution q~ (logits / temperature, cut to the top-k / top-p keep-set,
renormalised; the keep-set fixed per prefix as the sampler records it), and the objective minimised is
KL(q~ || p) with p the raw teacher (temperature 1, whole vocabulary but the pad). The training code's surrogate,
weighted per sequence by its probability under the distribution it was sampled from, must have exactly that
gradient: to 1e-9 relative, per parameter tensor, |estimated - exact| <= 1e-9 max|exact|.

Everything the test compares against (keep-sets, q~, p~, the mixture m, the KL) is computed here by hand from the
models' logits, not with the code under test, so a wrong rule in the code makes the two sides differ.
"""

import itertools
import math

import pytest
import torch

from minillm.data.seq2seq import pad_right
from minillm.models.base import IGNORE_INDEX
from minillm.objectives.minillm import MiniLLMObjective
from minillm.objectives.minillm.rollouts import Rollouts
from minillm_helpers import (FAMILIES, SPECIAL_IDS, adapter_for, hand_keep, minillm_config, output_words, tiny_causal,
                             tiny_t5)

MAX_LEN = 3
RELATIVE_TOLERANCE = 1e-9
# Vocabulary size per family: four outputs (EOS and three words) besides the banned ids.
VOCAB = {family: 4 + len(SPECIAL_IDS[family][2]) for family in FAMILIES}
# The prompt: T5's ends in EOS (as processing makes it); a decoder-only one is continued by the model.
PROMPTS = {"t5": [2, 4, 3, SPECIAL_IDS["t5"][1]], "gpt2": [2, 3, 1], "opt": [0, 3, 4], "llama": [1, 4, 3]}


def build(family: str, width: int, seed: int):
    """A float64 model; decoder-only ones drawn sharper than the fp32 tests' (fp64 has the precision to spare), so
    that the top-k / top-p cuts keep different sets after different prefixes."""
    if family == "t5":
        return tiny_t5(VOCAB[family], d_model=width, seed=seed)
    return tiny_causal(family, VOCAB[family], width, seed, init_std=0.5)


def all_targets(family: str) -> list[list[int]]:
    eos, words = SPECIAL_IDS[family][1], output_words(family, VOCAB[family])
    targets = []
    for length in range(1, MAX_LEN + 1):
        for prefix in itertools.product(words, repeat=length - 1):
            targets.append([*prefix, eos])
    targets += [list(prefix) for prefix in itertools.product(words, repeat=MAX_LEN)]  # cut at the limit
    return targets


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    family = request.param
    student = build(family, 8, seed=1)
    teacher = build(family, 12, seed=2).requires_grad_(False)
    assert adapter_for(student).banned_ids == SPECIAL_IDS[family][2]
    return student, teacher, torch.tensor([PROMPTS[family]]), pad_right(all_targets(family), IGNORE_INDEX)


def logits_of(model, prompt: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Teacher-forced logits [B, T, V] with the banned ids at -inf (the one support of every distribution)."""
    rows = len(labels)
    batch = {"input_ids": prompt.expand(rows, -1), "attention_mask": torch.ones_like(prompt).expand(rows, -1),
             "labels": labels}
    adapter = adapter_for(model)
    logits = adapter.logits(model, batch)
    if adapter.banned_ids:
        logits = logits.index_fill(-1, torch.tensor(adapter.banned_ids), -math.inf)
    return logits


def cut_log_softmax(scaled_logits: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(scaled_logits.masked_fill(~keep, -math.inf), dim=-1)


def picked(log_dist: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log-probabilities of the targets' tokens [B, T], 0 on padding."""
    mask = labels != IGNORE_INDEX
    return torch.where(mask, log_dist.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1), 0.0)


class Enumeration:
    """Every target reachable under the processed student q~ at the given sampling settings, with (by hand) the
    keep-sets, log q~ (differentiable in the student), the raw teacher's log p, the teacher's processed p~ (same
    temperature and keep-set) and the mixture m_t = (1 - alpha) q~ + alpha p~."""

    def __init__(self, student, teacher, prompt, labels, temperature=1.0, top_k=0, top_p=1.0, alpha=0.0):
        self.settings = dict(temperature=temperature, top_k=top_k, top_p=top_p, teacher_mixed_alpha=alpha)
        self.cuts = top_k > 0 or top_p < 1.0
        with torch.no_grad():
            keep = hand_keep(logits_of(student, prompt, labels) / temperature, top_k, top_p)
        mask = labels != IGNORE_INDEX
        in_support = (keep.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1) | ~mask).all(-1)
        self.all_targets = len(labels)
        self.labels, self.keep, self.mask = labels[in_support], keep[in_support], mask[in_support]
        self.student, self.teacher, self.prompt, self.alpha = student, teacher, prompt, alpha
        with torch.no_grad():
            teacher_logits = logits_of(teacher, prompt, self.labels)
            self.log_p = torch.log_softmax(teacher_logits, dim=-1)
            self.log_p_processed = cut_log_softmax(teacher_logits / temperature, self.keep)

    def log_q(self) -> torch.Tensor:
        """log q~ [B, T, V], differentiable in the student's parameters (the keep-sets fixed)."""
        return cut_log_softmax(logits_of(self.student, self.prompt, self.labels) / self.settings["temperature"],
                               self.keep)

    def log_mixture(self, log_q: torch.Tensor) -> torch.Tensor:
        if self.alpha == 0:
            return log_q
        return torch.log((1 - self.alpha) * log_q.exp() + self.alpha * self.log_p_processed.exp())

    def exact_kl_and_gradient(self):
        """KL(q~ || p) = sum_y q~(y) (log q~(y) - log p(y)) and its gradient."""
        self.student.zero_grad()
        log_q_y = picked(self.log_q(), self.labels).sum(-1)
        log_p_y = picked(self.log_p, self.labels).sum(-1)
        kl = (log_q_y.exp() * (log_q_y - log_p_y)).sum()
        kl.backward()
        return float(kl.detach()), [p.grad.clone() for p in self.student.parameters()]

    def rollouts(self) -> Rollouts:
        """The enumerated targets as the sampler records them: log q~(y_t), the raw log p(y_t) and log p(.), log
        m_t(y_t), and the keep-sets when top-k / top-p cut the support."""
        with torch.no_grad():
            log_q = self.log_q()
        rows = len(self.labels)
        return Rollouts(input_ids=self.prompt.expand(rows, -1), attention_mask=torch.ones_like(self.prompt).expand(
                            rows, -1),
                        labels=self.labels, old_logprobs=picked(log_q, self.labels),
                        teacher_logprobs=picked(self.log_p, self.labels),
                        mixed_logprobs=picked(self.log_mixture(log_q), self.labels), teacher_log_dist=self.log_p,
                        keep=self.keep if self.cuts else None)

    def objective(self, **config) -> MiniLLMObjective:
        return MiniLLMObjective(minillm_config(**self.settings, **config), adapter_for(self.student),
                                lambda path: self.teacher)

    def surrogate_gradient(self, sequence_weights: torch.Tensor, unit_token_weights: bool = False, **config):
        """grad of sum_y sequence_weights(y) sum_t (objective's per-token loss terms)(y). ``unit_token_weights``
        replaces the recorded per-token importance weights by 1 (the sequence weight then does the correcting)."""
        objective = self.objective(**config)
        rollouts = self.rollouts()
        rewards, advantages, weights = objective.advantages(rollouts)
        if unit_token_weights:
            weights = self.mask.to(weights.dtype)
        store = {"rollouts": rollouts, "rewards": rewards, "advantages": advantages, "weights": weights}
        batch = objective.micro_batch(store, range(len(self.labels)))
        self.student.zero_grad()
        terms = objective.token_losses(self.student, batch)
        (sequence_weights * (terms["pg"] + terms["single"]).sum(-1)).sum().backward()
        return [p.grad.clone() for p in self.student.parameters()]

    def sequence_log_probs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """log q~(y) and log m(y) = sum_t log m_t(y_t), detached."""
        rollouts = self.rollouts()
        return rollouts.old_logprobs.sum(-1), rollouts.mixed_logprobs.sum(-1)


def vanishing(exact) -> list[bool]:
    """Which parameter tensors have an exact gradient of zero, up to round-off (below 1e-12 of the largest entry of
    any tensor): OPT's key biases, since adding one vector b to every key adds q . b to all of a query's attention
    scores, which its softmax ignores."""
    scale = max(float(g.abs().max()) for g in exact)
    return [float(g.abs().max()) <= 1e-12 * scale for g in exact]


def worst_relative_error(estimated, exact) -> float:
    """max over parameter tensors of max|e - g| / max|g|, over the tensors whose gradient does not vanish."""
    return max(float((e - g).abs().max()) / float(g.abs().max())
               for e, g, zero in zip(estimated, exact, vanishing(exact)) if not zero)


def assert_gradients_match(estimated, exact):
    scale = max(float(g.abs().max()) for g in exact)
    zero = vanishing(exact)
    assert sum(zero) <= 2  # every parameter but (OPT's) one key bias per layer has a gradient
    assert all(float(e.abs().max()) <= 1e-12 * scale for e, z in zip(estimated, zero) if z)
    error = worst_relative_error(estimated, exact)
    assert error <= RELATIVE_TOLERANCE, f"relative gradient error {error:.2e}"


def test_enumeration_is_a_distribution(setup):
    """q and p (raw, full support) sum to 1 over the enumeration: it holds every target exactly once."""
    enumeration = Enumeration(*setup)
    assert enumeration.all_targets == len(enumeration.labels) == 1 + 3 + 9 + 27
    with torch.no_grad():
        log_q_y = picked(enumeration.log_q(), enumeration.labels).sum(-1)
    assert abs(float(log_q_y.exp().sum()) - 1.0) < 1e-14
    assert abs(float(picked(enumeration.log_p, enumeration.labels).sum(-1).exp().sum()) - 1.0) < 1e-14


SAMPLING = {
    "plain": dict(),
    "temperature-0.7": dict(temperature=0.7),
    "temperature-1.6": dict(temperature=1.6),
    "top-k-2": dict(top_k=2),
    "top-p-0.8": dict(top_p=0.8),
    "temperature-1.6-top-k-3-top-p-0.8": dict(temperature=1.6, top_k=3, top_p=0.8),
}


@pytest.mark.parametrize("single_step_reg", [False, True], ids=["policy-gradient", "single-step+long-term"])
@pytest.mark.parametrize("sampling", list(SAMPLING))
def test_expected_surrogate_gradient_equals_exact_reverse_kl_gradient(setup, sampling, single_step_reg):
    """sum_y q~(y) surrogate(y) has the gradient of KL(q~ || p): the objective scores the tempered, cut student
    on the recorded keep-sets and the raw teacher, in the rewards and in the single-step term alike."""
    enumeration = Enumeration(*setup, **SAMPLING[sampling])
    if enumeration.cuts:  # the cut removes targets and keeps different tokens after different prefixes
        keep = enumeration.keep[enumeration.mask]
        assert len(enumeration.labels) < enumeration.all_targets and len(torch.unique(keep, dim=0)) > 1
        if SAMPLING[sampling].get("top_p", 1.0) < 1.0:  # top-p keeps a varying number of tokens
            assert len(set(keep.sum(-1).tolist())) > 1
    log_q_y, _ = enumeration.sequence_log_probs()
    assert abs(float(log_q_y.exp().sum()) - 1.0) < 1e-14  # q~ is a distribution over the kept targets
    kl, exact = enumeration.exact_kl_and_gradient()
    assert kl > 0.05  # the models differ: the gradient is not trivially zero
    estimated = enumeration.surrogate_gradient(log_q_y.exp(), single_step_reg=single_step_reg)
    assert_gradients_match(estimated, exact)


def test_the_gradient_identity_distinguishes_the_sampling_settings(setup):
    """The exact gradients at temperature 1.6 and under the top-p cut differ from the plain one by far more than the
    tolerance: a code path that ignored the temperature or the keep-sets could not pass the test above."""
    _, plain = Enumeration(*setup).exact_kl_and_gradient()
    for settings in (dict(temperature=1.6), dict(top_p=0.8)):
        _, other = Enumeration(*setup, **settings).exact_kl_and_gradient()
        assert worst_relative_error(other, plain) > 1e-2, settings


@pytest.mark.parametrize("sampling", [dict(), dict(temperature=1.6, top_k=3)], ids=["plain", "temperature-top-k"])
def test_teacher_mixed_sampling_sequence_weights_are_exact_and_per_token_weights_are_not(setup, sampling):
    """Sampling from m_t = (1 - alpha) q~ + alpha p~ (alpha 0.3): the recorded per-token weights are
    w_t = q~(y_t) / m_t(y_t); their product W(y) corrects the sequence exactly (sum_y m(y) W(y) = 1, and weighting
    each sequence's unit-weight surrogate by m(y) W(y) = q~(y) gives the exact gradient), while the objective's
    per-token weights inside the ratio, with sequences drawn from m, give a different (biased) gradient."""
    enumeration = Enumeration(*setup, alpha=0.3, **sampling)
    objective = enumeration.objective(single_step_reg=True)
    rollouts = enumeration.rollouts()
    _, _, weights = objective.advantages(rollouts)
    with torch.no_grad():
        q = enumeration.log_q().exp()
    by_hand = picked(q.log(), rollouts.labels).exp() / picked(
        ((1 - 0.3) * q + 0.3 * enumeration.log_p_processed.exp()).log(), rollouts.labels).exp()
    mask = enumeration.mask
    assert float((weights[mask] - by_hand[mask]).abs().max()) < 1e-14
    assert float((weights[mask] - 1).abs().min()) > 1e-3  # the mixture really differs from q~ at every token

    _, log_m_y = enumeration.sequence_log_probs()
    sequence_weight = torch.where(mask, weights, 1.0).prod(-1)
    assert abs(float(log_m_y.exp().sum()) - 1.0) < 1e-14
    assert abs(float((log_m_y.exp() * sequence_weight).sum()) - 1.0) < 1e-14

    _, exact = enumeration.exact_kl_and_gradient()
    for single_step_reg in (False, True):
        assert_gradients_match(enumeration.surrogate_gradient(log_m_y.exp() * sequence_weight, unit_token_weights=True,
                                                              single_step_reg=single_step_reg), exact)
    per_token = enumeration.surrogate_gradient(log_m_y.exp(), single_step_reg=True)
    assert worst_relative_error(per_token, exact) > 1e-2


def test_the_biased_additions_change_the_gradient(setup):
    """Each of MiniLLM's variance reductions moves the estimate off the exact gradient (they are really applied)."""
    enumeration = Enumeration(*setup)
    _, exact = enumeration.exact_kl_and_gradient()
    log_q_y, _ = enumeration.sequence_log_probs()
    for change in (dict(gamma=0.5), dict(length_norm=True), dict(whiten_advantages=True), dict(reward_scaling=0.5)):
        estimated = enumeration.surrogate_gradient(log_q_y.exp(), single_step_reg=True, **change)
        assert worst_relative_error(estimated, exact) > 1e-3, change


def test_student_equal_to_teacher_gives_zero_rewards_kl_and_gradient(setup):
    student, _, prompt, labels = setup
    # The student is its own teacher: a copy whose parameters do not require gradients may run other kernels and
    # differ by an ulp, and the rewards below must be exactly 0.
    enumeration = Enumeration(student, student, prompt, labels)
    objective = enumeration.objective(single_step_reg=True, gamma=0.95, length_norm=True, cliprange=0.2,
                                      reward_scaling=0.5)
    rollouts = enumeration.rollouts()
    rewards, advantages, weights = objective.advantages(rollouts)
    assert float(rewards.abs().max()) == 0.0 and float(advantages.abs().max()) == 0.0
    batch = objective.micro_batch({"rollouts": rollouts, "rewards": rewards, "advantages": advantages,
                                   "weights": weights}, range(len(labels)))
    student.zero_grad()
    terms = objective.token_losses(student, batch)
    assert float(terms["single"].detach().abs().max()) < 1e-12
    (terms["pg"] + terms["single"]).sum().backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters()) < 1e-12

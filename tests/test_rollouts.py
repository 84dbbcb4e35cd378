"""Two-model rollouts (minillm/objectives/minillm/rollouts.py) and their use by the MiniLLM objective, for every
model family: Flan-T5's encoder-decoder and the decoder-only GPT-2 (pad = EOS, nothing banned), OPT and LLaMA (a pad
apart from EOS, banned). Prompts of mixed lengths come right-padded, so the decoder-only adapter's left padding and
position ids are on every path."""

import dataclasses
import math

import pytest
import torch

from minillm.data.seq2seq import pad_right
from minillm.models.base import IGNORE_INDEX
from minillm.objectives.minillm import MiniLLMObjective
from minillm.objectives.minillm.rollouts import (SamplingSettings, ban, draw, invert_cdf, policy_log_probs,
                                                 sample_rollouts)
from minillm_helpers import (FAMILIES, SPECIAL_IDS, adapter_for, hand_keep, minillm_config, output_words, tiny_causal,
                             tiny_t5)

VOCAB = 12


@dataclasses.dataclass(frozen=True)
class Pair:
    """A family's fp32 student (width 16) and teacher (width 24), and its special ids. Widths differ: a T5 teacher's
    decoder can only work on its own encoder."""

    family: str
    student: torch.nn.Module
    teacher: torch.nn.Module

    @property
    def pad(self) -> int:
        return SPECIAL_IDS[self.family][0]

    @property
    def eos(self) -> int:
        return SPECIAL_IDS[self.family][1]

    @property
    def banned(self) -> tuple:
        return SPECIAL_IDS[self.family][2]

    @property
    def models(self) -> tuple:
        return self.student, self.teacher


def build(family: str, width: int, seed: int):
    if family == "t5":  # EOS's logit pinned at 0 so that targets end at varied lengths
        return tiny_t5(VOCAB, d_model=width, seed=seed, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True)
    return tiny_causal(family, VOCAB, width, seed, dtype=torch.float32)


@pytest.fixture(scope="module", params=FAMILIES)
def pair(request) -> Pair:
    return Pair(request.param, build(request.param, 16, seed=3), build(request.param, 24, seed=4))


def settings_for(pair: Pair, **values) -> SamplingSettings:
    return SamplingSettings(banned_ids=pair.banned, **values)


def prompts(pair: Pair, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` prompts of 1-6 words, right-padded with the pad id; T5 prompts end in EOS as processing makes them,
    decoder-only ones do not (the model continues them)."""
    g = torch.Generator().manual_seed(seed)
    words = torch.tensor(output_words(pair.family, VOCAB))
    ending = [pair.eos] if pair.family == "t5" else []
    rows = [words[torch.randint(len(words), (int(torch.randint(1, 7, (1,), generator=g)),), generator=g)].tolist()
            + ending for _ in range(n)]
    return pad_right(rows, pair.pad), pad_right([[1] * len(r) for r in rows], 0)


def fixed_prompt(pair: Pair, n: int) -> torch.Tensor:
    """One prompt repeated ``n`` times."""
    words = output_words(pair.family, VOCAB)
    row = [words[3], words[5], words[1]] + ([pair.eos] if pair.family == "t5" else [])
    return torch.tensor([row]).expand(n, -1)


def sample(pair: Pair, settings, n=64, seed=0):
    input_ids, attention_mask = prompts(pair, n, seed)
    return sample_rollouts(pair.student, pair.teacher, input_ids, attention_mask, settings, adapter_for(pair.student),
                           torch.Generator().manual_seed(seed))


def test_the_adapter_has_the_family_special_ids(pair):
    adapter = adapter_for(pair.student)
    assert (adapter.pad_token_id, adapter.eos_token_id, tuple(adapter.banned_ids)) == SPECIAL_IDS[pair.family]


def teacher_forced(model, rollouts) -> torch.Tensor:
    batch = {"input_ids": rollouts.input_ids, "attention_mask": rollouts.attention_mask, "labels": rollouts.labels}
    with torch.no_grad():
        return adapter_for(model).logits(model, batch)


def picked(log_dist, labels):
    mask = labels != IGNORE_INDEX
    return torch.where(mask, log_dist.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1), 0.0)


SETTINGS = {
    "plain": dict(max_new_tokens=6),
    "mixed": dict(max_new_tokens=6, alpha=0.2),
    "temperature-top-k-top-p": dict(max_new_tokens=6, alpha=0.2, temperature=0.7, top_k=5, top_p=0.9),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_recorded_logprobs_equal_teacher_forced_logprobs(pair, name):
    settings = settings_for(pair, **SETTINGS[name])
    rollouts = sample(pair, settings)
    student, teacher = pair.models
    mask = rollouts.mask
    lengths = rollouts.lengths()
    assert bool((rollouts.attention_mask.sum(-1).unique().numel() > 1))  # mixed prompt lengths in one batch
    assert len(set(lengths.tolist())) > 1  # mixed target lengths in one batch
    # stored targets: no decoder start token and no banned id, EOS ends every finished one, -100 after it
    assert not any(bool((rollouts.labels == banned).any()) for banned in pair.banned)
    ended = (rollouts.labels == pair.eos).sum(-1)
    assert bool((ended <= 1).all()) and bool(((ended == 1) | (lengths == settings.max_new_tokens)).all())
    assert bool((ended == 1).any()) and bool((lengths == settings.max_new_tokens).any())
    last = rollouts.labels.gather(-1, (lengths - 1).unsqueeze(-1)).squeeze(-1)
    assert bool(((last == pair.eos) | (lengths == settings.max_new_tokens)).all())
    assert bool((mask == (torch.arange(mask.shape[1]) < lengths.unsqueeze(-1))).all())

    student_log = policy_log_probs(teacher_forced(student, rollouts), settings, rollouts.keep)
    torch.testing.assert_close(picked(student_log, rollouts.labels), rollouts.old_logprobs, atol=1e-5, rtol=0)
    teacher_log = torch.log_softmax(ban(teacher_forced(teacher, rollouts), pair.banned), dim=-1)
    torch.testing.assert_close(picked(teacher_log, rollouts.labels), rollouts.teacher_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.where(mask.unsqueeze(-1), teacher_log, 0.0),
                               torch.where(mask.unsqueeze(-1), rollouts.teacher_log_dist, 0.0), atol=1e-5, rtol=0)
    student_scaled = ban(teacher_forced(student, rollouts), pair.banned) / settings.temperature
    keep = torch.ones_like(student_scaled, dtype=torch.bool)
    if settings.cuts:  # the recorded keep-sets follow the top-k / top-p rule on the tempered student
        keep = hand_keep(student_scaled, settings.top_k, settings.top_p)
        assert torch.equal(rollouts.keep[mask], keep[mask])
        assert len(set(keep[mask].sum(-1).tolist())) > 1  # top-p is active: the kept number varies
    if settings.alpha == 0:
        assert torch.equal(rollouts.mixed_logprobs, rollouts.old_logprobs)
    else:  # m_t = (1 - alpha) q~ + alpha p~, p~ the teacher at the sampling temperature on the student's keep-set
        q_processed = torch.softmax(student_scaled.masked_fill(~keep, -math.inf), -1)
        teacher_scaled = ban(teacher_forced(teacher, rollouts), pair.banned) / settings.temperature
        p_processed = torch.softmax(teacher_scaled.masked_fill(~keep, -math.inf), -1)
        mixture = (1 - settings.alpha) * q_processed + settings.alpha * p_processed
        torch.testing.assert_close(picked(mixture.log(), rollouts.labels), rollouts.mixed_logprobs, atol=1e-5,
                                   rtol=0)


def first_position_log_dists(pair: Pair, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log q and log p of the first target token after ``prompt`` ``[1, L]``, banned ids at -inf (the sampler's
    support)."""
    first = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "labels": torch.tensor([[pair.eos]])}
    with torch.no_grad():
        return tuple(torch.log_softmax(ban(adapter_for(m).logits(m, first)[0, 0], pair.banned), -1)
                     for m in pair.models)


def test_inversion_draws_the_first_id_whose_cumulative_mass_exceeds_u():
    """Masses 0, 0.5, 0, 0.25, 0.25, 0 (cumulative 0, .5, .5, .75, 1, 1): u in [0, .5) draws id 1, [.5, .75) id 3,
    [.75, 1) id 4; zero-mass ids never, not even the last one when u * C_V rounds up to C_V. (The uniforms stay
    1e-4 from the boundaries: the masses come back from fp32 logarithms.)"""
    log_probs = torch.tensor([0.0, 0.5, 0.0, 0.25, 0.25, 0.0]).log().expand(8, 6)
    uniform = torch.tensor([0.0, 0.25, 0.4999, 0.5001, 0.7499, 0.7501, 0.9999, 1 - 2**-53], dtype=torch.float64)
    assert invert_cdf(log_probs, uniform).tolist() == [1, 1, 1, 3, 3, 4, 4, 4]
    assert invert_cdf(log_probs[:1], torch.tensor([1.0], dtype=torch.float64)).tolist() == [4]  # u * C_V == C_V
    nan_row = torch.stack([log_probs[0], torch.full((6,), math.nan)])  # non-finite weights: an id in range
    drawn = invert_cdf(nan_row, torch.tensor([0.6, 0.5], dtype=torch.float64)).tolist()
    assert drawn[0] == 3 and 0 <= drawn[1] < 6
    unnormalised = torch.tensor([[2.0, 6.0], [1.0, 1.0]]).log()  # masses are normalised by the total C_V
    assert invert_cdf(unnormalised, torch.tensor([0.2, 0.49], dtype=torch.float64)).tolist() == [0, 0]
    assert invert_cdf(unnormalised, torch.tensor([0.2501, 0.5001], dtype=torch.float64)).tolist() == [1, 1]


def test_inversion_and_draw_work_row_by_row_under_any_leading_shape():
    """A [2, 3, 6] batch of three distributions with different last ids of positive mass (4, 2 and 5): each row is
    inverted on its own, u = 1 falling back to its own last id with mass; ``draw`` is one fp64 uniform per row from
    the generator."""
    rows = {"a": [0.0, 0.5, 0.0, 0.25, 0.25, 0.0], "b": [0.2, 0.3, 0.5, 0.0, 0.0, 0.0], "c": [0.0] * 5 + [1.0]}
    log_probs = torch.tensor([[rows["a"], rows["b"], rows["c"]], [rows["c"], rows["a"], rows["b"]]]).log()
    uniform = torch.tensor([[1.0, 0.1, 0.3], [0.5, 0.6, 1.0]], dtype=torch.float64)
    assert invert_cdf(log_probs, uniform).tolist() == [[4, 0, 5], [5, 3, 2]]
    drawn = draw(log_probs, torch.Generator().manual_seed(3))
    uniform = torch.rand((2, 3), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = invert_cdf(log_probs, uniform)
    assert drawn.shape == (2, 3) and torch.equal(drawn, expected)


def test_draw_matches_its_distribution():
    """40,000 draws of one row against its probabilities (chi-square, 0.999 quantile for 4 degrees of freedom),
    one banned id (-inf) never drawn, and the same generator seed giving the same ids."""
    probs = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.15, 0.25])
    log_probs = probs.log().expand(40_000, 6)
    ids = draw(log_probs, torch.Generator().manual_seed(0))
    counts = torch.bincount(ids, minlength=6).double()
    assert counts[1] == 0
    support = probs > 0
    expected = 40_000 * probs.double()[support]
    assert float(((counts[support] - expected) ** 2 / expected).sum()) < 18.47
    assert torch.equal(ids, draw(log_probs, torch.Generator().manual_seed(0)))


# 0.999 quantiles of chi-square by degrees of freedom (support size - 1: 11 tokens with a banned pad, 12 without)
CHI2_999 = {10: 29.59, 11: 31.26}


def test_teacher_mixed_sampling_matches_the_mixture(pair):
    """First-token frequencies over 40,000 draws against (1 - alpha) q + alpha p: a chi-square test."""
    alpha, n = 0.3, 40_000
    input_ids = fixed_prompt(pair, n)
    settings = settings_for(pair, max_new_tokens=1, alpha=alpha)
    rollouts = sample_rollouts(pair.student, pair.teacher, input_ids, torch.ones_like(input_ids), settings,
                               adapter_for(pair.student), torch.Generator().manual_seed(0))
    q, p = (log_dist.exp().double() for log_dist in first_position_log_dists(pair, input_ids[:1]))
    counts = torch.bincount(rollouts.labels[:, 0], minlength=VOCAB).double()
    support = [i for i in range(VOCAB) if i not in pair.banned]
    assert float(counts.sum()) == float(counts[support].sum()) == n  # no banned id drawn
    expected = n * ((1 - alpha) * q + alpha * p)[support]
    chi2 = float(((counts[support] - expected) ** 2 / expected).sum())
    assert chi2 < CHI2_999[len(support) - 1]
    # and the mixture is really different from either model alone (the test has power)
    for alone in (q, p):
        assert float(((counts[support] - n * alone[support]) ** 2 / (n * alone[support])).sum()) > 100


def test_logged_reverse_kl_is_importance_weighted(pair):
    """The k3 estimate logged per collection, on teacher-mixed samples weighted by w = q / mixture, is unbiased for
    KL(q || p): over 40,000 one-token rollouts at alpha 0.3 it is within 4 standard errors of the exact first-position
    KL, the standard error computed exactly from q, p and alpha."""
    alpha, n = 0.3, 40_000
    objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=1, teacher_mixed_alpha=alpha),
                                 adapter_for(pair.student), lambda path: pair.teacher)
    input_ids = fixed_prompt(pair, n)
    _, stats = objective.collect(pair.student, [{"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}],
                                 torch.Generator().manual_seed(0))
    support = [i for i in range(VOCAB) if i not in pair.banned]
    log_q, log_p = (log_dist.double()[support] for log_dist in first_position_log_dists(pair, input_ids[:1]))
    q, p = log_q.exp(), log_p.exp()
    mixture = (1 - alpha) * q + alpha * p
    d = log_p - log_q
    weighted_k3 = q / mixture * (torch.expm1(d) - d)
    exact = float((q * (log_q - log_p)).sum())
    standard_error = math.sqrt(float((mixture * weighted_k3 ** 2).sum() - exact ** 2) / n)
    assert stats["sequences"] == n and exact > 0.05
    assert abs(stats["rev_kl_k3"] / n - exact) < 4 * standard_error, (stats["rev_kl_k3"] / n, exact, standard_error)


def test_policy_gradient_loss_is_aligned_for_every_sequence_of_a_mixed_batch(pair):
    """At theta = theta_old the ratio is exactly the importance weight on every valid token of every sequence, and
    every sequence contributes a loss (no decoder-only prompt-length offsets: the prompts have mixed lengths)."""
    student, teacher = pair.models
    objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=6, teacher_mixed_alpha=0.2, gamma=0.95,
                                                length_norm=True, whiten_advantages=True, cliprange=0.2,
                                                reward_scaling=0.5, single_step_reg=True),
                                 adapter_for(student), lambda path: teacher)
    input_ids, attention_mask = prompts(pair, 24, seed=5)
    store, stats = objective.collect(student, [{"input_ids": input_ids[:12], "attention_mask": attention_mask[:12]},
                                               {"input_ids": input_ids[12:], "attention_mask": attention_mask[12:]}],
                                     torch.Generator().manual_seed(1))
    assert stats["sequences"] == 24 and stats["tokens"] == float(store["rollouts"].mask.sum())
    batch = objective.micro_batch(store, range(24))
    terms = objective.token_losses(student, batch)
    mask = batch["rollouts"].mask
    torch.testing.assert_close(terms["logprobs"][mask], batch["rollouts"].old_logprobs[mask], atol=1e-5, rtol=0)
    ratio, advantages = batch["weights"], batch["advantages"]  # rho = w at theta_old
    clipped = ((advantages > 0) & (ratio > 1.2)) | ((advantages < 0) & (ratio < 0.8))
    assert torch.equal(terms["clipped"], clipped & mask) and int(terms["clipped"].sum()) > 0
    per_sequence = terms["pg"].abs().sum(-1)
    multi_token = mask.sum(-1) > 1
    assert bool((per_sequence[multi_token] > 0).all()) and bool((terms["single"].sum(-1) > 0).all())
    assert bool((terms["pg"][~mask] == 0).all()) and bool((terms["single"][~mask] == 0).all())
    output = objective(student, batch)
    assert math.isfinite(float(output.loss_sum.detach())) and set(output.metrics) == {"pg", "single", "clip_frac"}


@pytest.mark.parametrize("name", ["plain", "temperature-top-k-top-p"])
@pytest.mark.parametrize("teacher_topk", [0, 3])
def test_deferred_teacher_records_equal_the_stepwise_records(pair, name, teacher_topk):
    """At alpha = 0 the teacher scoring the finished targets in one teacher-forced pass records what stepping it with
    the student records: the same draws (the generator consumed identically: the proposal is the student alone), and
    log q_old, log p, log m and the teacher's (coarsened) distributions to 1e-5 at every target position."""
    settings = settings_for(pair, **{**SETTINGS[name], "alpha": 0.0})
    input_ids, attention_mask = prompts(pair, 32, seed=11)
    runs = {}
    for defer in (False, True):
        generator = torch.Generator().manual_seed(11)
        runs[defer] = sample_rollouts(pair.student, pair.teacher, input_ids, attention_mask, settings,
                                      adapter_for(pair.student), generator, teacher_topk=teacher_topk,
                                      defer_teacher=defer)
        runs[defer, "next"] = torch.rand(4, generator=generator)  # the generator is left in the same state
    stepwise, deferred = runs[False], runs[True]
    assert torch.equal(runs[False, "next"], runs[True, "next"])
    assert torch.equal(deferred.labels, stepwise.labels) and len(set(deferred.lengths().tolist())) > 1
    mask = stepwise.mask
    for field in ("old_logprobs", "teacher_logprobs", "mixed_logprobs"):  # padding: 0 on both paths
        torch.testing.assert_close(getattr(deferred, field), getattr(stepwise, field), atol=1e-5, rtol=0)
    assert torch.equal(deferred.mixed_logprobs, deferred.old_logprobs)
    assert deferred.teacher_log_dist.shape == stepwise.teacher_log_dist.shape
    torch.testing.assert_close(deferred.teacher_log_dist[mask], stepwise.teacher_log_dist[mask], atol=1e-5, rtol=0)
    if teacher_topk:
        assert torch.equal(deferred.teacher_dist_ids[mask].sort(-1).values,
                           stepwise.teacher_dist_ids[mask].sort(-1).values)
    else:
        assert deferred.teacher_dist_ids is None and stepwise.teacher_dist_ids is None
    if settings.cuts:
        assert torch.equal(deferred.keep, stepwise.keep)
    else:
        assert deferred.keep is None and stepwise.keep is None
    with pytest.raises(ValueError):
        sample_rollouts(pair.student, pair.teacher, input_ids, attention_mask, dataclasses.replace(settings, alpha=0.2),
                        adapter_for(pair.student), torch.Generator().manual_seed(0), defer_teacher=True)


def count_teacher_calls(pair: Pair, alpha: float):
    """Teacher forward calls (and T5 encoder calls) while collecting two sampling batches of 8, then asserts that 4
    PPO epochs add none; returns (calls, longest target of each batch)."""
    student, teacher = pair.models
    calls = {"encoder": 0, "steps": 0}
    hooks = [teacher.register_forward_hook(lambda *a: calls.__setitem__("steps", calls["steps"] + 1))]
    if pair.family == "t5":
        hooks.append(teacher.encoder.register_forward_hook(
            lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1)))
    try:
        objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=6, teacher_mixed_alpha=alpha,
                                                    single_step_reg=True, cliprange=0.2, whiten_advantages=True),
                                     adapter_for(student), lambda path: teacher)
        input_ids, attention_mask = prompts(pair, 16, seed=7)
        store, _ = objective.collect(student, [{"input_ids": input_ids[:8], "attention_mask": attention_mask[:8]},
                                               {"input_ids": input_ids[8:], "attention_mask": attention_mask[8:]}],
                                     torch.Generator().manual_seed(2))
        longest = [int(store["rollouts"].mask[rows].sum(-1).max()) for rows in (slice(0, 8), slice(8, 16))]
        after_sampling = dict(calls)
        for _ in range(4):  # PPO epochs
            objective(student, objective.micro_batch(store, range(16))).loss_sum.backward()
        assert calls == after_sampling
        return after_sampling, longest
    finally:
        for hook in hooks:
            hook.remove()


def test_without_mixing_the_teacher_runs_once_per_sampling_batch(pair):
    """alpha = 0: the student samples alone and the teacher scores the finished targets in one teacher-forced pass
    per sampling batch (T5: one encoder pass inside it), whatever the target lengths; none in the PPO epochs."""
    calls, longest = count_teacher_calls(pair, alpha=0.0)
    assert max(longest) > 1  # stepping would have called it more often
    assert calls["steps"] == 2
    assert calls["encoder"] == (2 if pair.family == "t5" else 0)


def test_teacher_runs_once_per_rollout_and_never_in_the_ppo_epochs(pair):
    """alpha > 0, per sampling batch: one teacher call per generated position (T5: incremental decoder steps after
    one encoder pass; decoder-only: the prompt at the first step, then one token per call); the PPO updates read
    what was recorded and call the teacher no more."""
    calls, longest = count_teacher_calls(pair, alpha=0.2)
    assert calls["steps"] == sum(longest)  # a batch stops once all of its rows have ended
    assert calls["encoder"] == (2 if pair.family == "t5" else 0)


def test_teacher_top_k_plus_remainder(pair):
    """Kept as its top K tokens plus one remainder bin, the teacher's distribution sums to 1; the single-step KL over
    those K + 1 bins equals the hand-computed coarse KL, is at most the full KL, and equals it when K covers the
    vocabulary."""
    student, teacher = pair.models
    settings = settings_for(pair, **SETTINGS["plain"])
    full = sample(pair, settings, n=16, seed=3)
    coarse = sample_rollouts(student, teacher, full.input_ids, full.attention_mask, settings,
                             adapter_for(student), torch.Generator().manual_seed(3), teacher_topk=3)
    everything = sample_rollouts(student, teacher, full.input_ids, full.attention_mask, settings,
                                 adapter_for(student), torch.Generator().manual_seed(3), teacher_topk=VOCAB)
    assert torch.equal(coarse.labels, full.labels)  # the same draws: the storage does not touch sampling
    mask = full.mask
    assert coarse.teacher_log_dist.shape[-1] == 4
    torch.testing.assert_close(coarse.teacher_log_dist.exp().sum(-1)[mask], torch.ones(int(mask.sum())))

    def single(config_rollouts):
        objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=6, single_step_reg=True),
                                     adapter_for(student), lambda path: teacher)
        rewards, advantages, weights = objective.advantages(config_rollouts)
        batch = objective.micro_batch({"rollouts": config_rollouts, "rewards": rewards, "advantages": advantages,
                                       "weights": weights}, range(len(config_rollouts)))
        with torch.no_grad():
            return objective.token_losses(student, batch)["single"]

    kl_full, kl_coarse, kl_all = single(full), single(coarse), single(everything)
    torch.testing.assert_close(kl_all, kl_full, atol=1e-5, rtol=0)
    assert bool((kl_coarse <= kl_full + 1e-6).all()) and float(kl_coarse.sum()) < float(kl_full.sum())
    # by hand at every position: the teacher's 3 most likely ids and the rest, for student and teacher
    q = torch.softmax(ban(teacher_forced(student, full), pair.banned), -1)
    p = full.teacher_log_dist.exp()
    ids = coarse.teacher_dist_ids
    assert torch.equal(ids[mask].sort(-1).values, p.topk(3, dim=-1).indices[mask].sort(-1).values)
    q_bins = torch.cat([q.gather(-1, ids), 1 - q.gather(-1, ids).sum(-1, keepdim=True)], -1)
    p_bins = torch.cat([p.gather(-1, ids), 1 - p.gather(-1, ids).sum(-1, keepdim=True)], -1)
    by_hand = (q_bins * (q_bins / p_bins).log()).sum(-1)
    torch.testing.assert_close(kl_coarse[mask], by_hand[mask], atol=1e-5, rtol=0)

"""Two-model rollouts for encoder-decoder students (minillm/rollouts.py) and their use by the MiniLLM objective."""

import math

import pytest
import torch

from minillm.data.seq2seq import pad_right
from minillm.models.base import IGNORE_INDEX
from minillm.objectives.minillm import MiniLLMObjective
from minillm.objectives.minillm.rollouts import SamplingSettings, ban, policy_log_probs, sample_rollouts
from minillm_helpers import EOS, PAD, adapter_for, hand_keep, minillm_config, tiny_t5

VOCAB = 12


@pytest.fixture(scope="module")
def models():
    """fp32 student (width 16) and teacher (width 24): the teacher's decoder can only work on its own encoder."""
    return (tiny_t5(VOCAB, d_model=16, seed=3, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True),
            tiny_t5(VOCAB, d_model=24, seed=4, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True))


def prompts(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` prompts of lengths 2-7, right-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(2, VOCAB, (int(torch.randint(1, 7, (1,), generator=g)),), generator=g).tolist() + [EOS]
            for _ in range(n)]
    return pad_right(rows, PAD), pad_right([[1] * len(r) for r in rows], 0)


def sample(models, settings, n=64, seed=0):
    student, teacher = models
    input_ids, attention_mask = prompts(n, seed)
    return sample_rollouts(student, teacher, input_ids, attention_mask, settings, adapter_for(student),
                           torch.Generator().manual_seed(seed))


def teacher_forced(model, rollouts) -> torch.Tensor:
    batch = {"input_ids": rollouts.input_ids, "attention_mask": rollouts.attention_mask, "labels": rollouts.labels}
    with torch.no_grad():
        return adapter_for(model).logits(model, batch)


def picked(log_dist, labels):
    mask = labels != IGNORE_INDEX
    return torch.where(mask, log_dist.gather(-1, labels.masked_fill(~mask, EOS).unsqueeze(-1)).squeeze(-1), 0.0)


SETTINGS = {
    "plain": SamplingSettings(max_new_tokens=6, banned_ids=(PAD,)),
    "mixed": SamplingSettings(max_new_tokens=6, alpha=0.2, banned_ids=(PAD,)),
    "temperature-top-k-top-p": SamplingSettings(max_new_tokens=6, alpha=0.2, temperature=0.7, top_k=5, top_p=0.9,
                                                banned_ids=(PAD,)),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_recorded_logprobs_equal_teacher_forced_logprobs(models, name):
    settings = SETTINGS[name]
    rollouts = sample(models, settings)
    student, teacher = models
    mask = rollouts.mask
    lengths = rollouts.lengths()
    assert len(set(lengths.tolist())) > 1  # mixed target lengths in one batch
    # stored targets: no decoder start token, EOS ends every finished one, -100 after it
    assert not bool((rollouts.labels == PAD).any())
    ended = (rollouts.labels == EOS).sum(-1)
    assert bool((ended <= 1).all()) and bool(((ended == 1) | (lengths == settings.max_new_tokens)).all())
    last = rollouts.labels.gather(-1, (lengths - 1).unsqueeze(-1)).squeeze(-1)
    assert bool(((last == EOS) | (lengths == settings.max_new_tokens)).all())
    assert bool((mask == (torch.arange(mask.shape[1]) < lengths.unsqueeze(-1))).all())

    student_log = policy_log_probs(teacher_forced(student, rollouts), settings, rollouts.keep)
    torch.testing.assert_close(picked(student_log, rollouts.labels), rollouts.old_logprobs, atol=1e-5, rtol=0)
    teacher_log = torch.log_softmax(ban(teacher_forced(teacher, rollouts), (PAD,)), dim=-1)
    torch.testing.assert_close(picked(teacher_log, rollouts.labels), rollouts.teacher_logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.where(mask.unsqueeze(-1), teacher_log, 0.0),
                               torch.where(mask.unsqueeze(-1), rollouts.teacher_log_dist, 0.0), atol=1e-5, rtol=0)
    student_scaled = ban(teacher_forced(student, rollouts), (PAD,)) / settings.temperature
    keep = torch.ones_like(student_scaled, dtype=torch.bool)
    if settings.cuts:  # the recorded keep-sets follow the top-k / top-p rule on the tempered student
        keep = hand_keep(student_scaled, settings.top_k, settings.top_p)
        assert torch.equal(rollouts.keep[mask], keep[mask])
        assert len(set(keep[mask].sum(-1).tolist())) > 1  # top-p is active: the kept number varies
    if settings.alpha == 0:
        assert torch.equal(rollouts.mixed_logprobs, rollouts.old_logprobs)
    else:  # m_t = (1 - alpha) q~ + alpha p~, p~ the teacher at the sampling temperature on the student's keep-set
        q_processed = torch.softmax(student_scaled.masked_fill(~keep, -math.inf), -1)
        teacher_scaled = ban(teacher_forced(teacher, rollouts), (PAD,)) / settings.temperature
        p_processed = torch.softmax(teacher_scaled.masked_fill(~keep, -math.inf), -1)
        mixture = (1 - settings.alpha) * q_processed + settings.alpha * p_processed
        torch.testing.assert_close(picked(mixture.log(), rollouts.labels), rollouts.mixed_logprobs, atol=1e-5,
                                   rtol=0)


def first_position_log_dists(models, prompt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """log q and log p of the first target token after ``prompt`` ``[1, L]``, pad banned (the sampler's support)."""
    first = {"input_ids": prompt, "attention_mask": torch.ones_like(prompt), "labels": torch.tensor([[EOS]])}
    with torch.no_grad():
        return tuple(torch.log_softmax(ban(adapter_for(m).logits(m, first)[0, 0], (PAD,)), -1) for m in models)


def test_teacher_mixed_sampling_matches_the_mixture(models):
    """First-token frequencies over 40,000 draws against (1 - alpha) q + alpha p: a chi-square test."""
    student, teacher = models
    alpha, n = 0.3, 40_000
    input_ids = torch.tensor([[5, 7, 3, EOS]]).expand(n, -1)
    attention_mask = torch.ones_like(input_ids)
    settings = SamplingSettings(max_new_tokens=1, alpha=alpha, banned_ids=(PAD,))
    rollouts = sample_rollouts(student, teacher, input_ids, attention_mask, settings, adapter_for(student),
                               torch.Generator().manual_seed(0))
    q, p = (log_dist.exp() for log_dist in first_position_log_dists(models, input_ids[:1]))
    mixture = ((1 - alpha) * q + alpha * p).double()
    counts = torch.bincount(rollouts.labels[:, 0], minlength=VOCAB).double()
    assert counts[PAD] == 0
    expected = n * mixture[1:]
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 31.26  # the 0.999 quantile of chi-square with 10 degrees of freedom (11 tokens)
    # and the mixture is really different from either model alone (the test has power)
    for alone in (q.double(), p.double()):
        assert float(((counts[1:] - n * alone[1:]) ** 2 / (n * alone[1:])).sum()) > 100


def test_logged_reverse_kl_is_importance_weighted(models):
    """The k3 estimate logged per collection, on teacher-mixed samples weighted by w = q / mixture, is unbiased for
    KL(q || p): over 40,000 one-token rollouts at alpha 0.3 it is within 4 standard errors of the exact first-position
    KL, the standard error computed exactly from q, p and alpha."""
    student, teacher = models
    alpha, n = 0.3, 40_000
    objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=1, teacher_mixed_alpha=alpha),
                                 adapter_for(student), lambda path: teacher)
    input_ids = torch.tensor([[5, 7, 3, EOS]]).expand(n, -1)
    _, stats = objective.collect(student, [{"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}],
                                 torch.Generator().manual_seed(0))
    log_q, log_p = (log_dist.double() for log_dist in first_position_log_dists(models, input_ids[:1]))
    q, p = log_q.exp()[1:], log_p.exp()[1:]  # without the banned pad
    mixture = (1 - alpha) * q + alpha * p
    d = log_p[1:] - log_q[1:]
    weighted_k3 = q / mixture * (torch.expm1(d) - d)
    exact = float((q * (log_q[1:] - log_p[1:])).sum())
    standard_error = math.sqrt(float((mixture * weighted_k3 ** 2).sum() - exact ** 2) / n)
    assert stats["sequences"] == n and exact > 0.05
    assert abs(stats["rev_kl_k3"] / n - exact) < 4 * standard_error, (stats["rev_kl_k3"] / n, exact, standard_error)


def test_policy_gradient_loss_is_aligned_for_every_sequence_of_a_mixed_batch(models):
    """At theta = theta_old the ratio is exactly the importance weight on every valid token of every sequence, and
    every sequence contributes a loss (no decoder-only prompt-length offsets)."""
    student, teacher = models
    adapter = adapter_for(student)
    objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=6, teacher_mixed_alpha=0.2, gamma=0.95,
                                                length_norm=True, whiten_advantages=True, cliprange=0.2,
                                                reward_scaling=0.5, single_step_reg=True),
                                 adapter, lambda path: teacher)
    input_ids, attention_mask = prompts(24, seed=5)
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


def test_teacher_runs_once_per_rollout_and_never_in_the_ppo_epochs(models):
    """Per sampling batch: one teacher encoder pass and one incremental decoder step per generated position; the
    PPO updates read what was recorded and call the teacher no more."""
    student, teacher = models
    calls = {"encoder": 0, "decoder_steps": 0}
    hooks = [teacher.encoder.register_forward_hook(lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1)),
             teacher.decoder.register_forward_hook(
                 lambda *a: calls.__setitem__("decoder_steps", calls["decoder_steps"] + 1))]
    try:
        objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=6, teacher_mixed_alpha=0.2,
                                                    single_step_reg=True, cliprange=0.2, whiten_advantages=True),
                                     adapter_for(student), lambda path: teacher)
        input_ids, attention_mask = prompts(16, seed=7)
        store, _ = objective.collect(student, [{"input_ids": input_ids[:8], "attention_mask": attention_mask[:8]},
                                               {"input_ids": input_ids[8:], "attention_mask": attention_mask[8:]}],
                                     torch.Generator().manual_seed(2))
        assert calls["encoder"] == 2 and 2 <= calls["decoder_steps"] <= 12
        after_sampling = dict(calls)
        for _ in range(4):  # PPO epochs
            objective(student, objective.micro_batch(store, range(16))).loss_sum.backward()
        assert calls == after_sampling
    finally:
        for hook in hooks:
            hook.remove()


def test_teacher_top_k_plus_remainder(models):
    """Kept as its top K tokens plus one remainder bin, the teacher's distribution sums to 1; the single-step KL over
    those K + 1 bins equals the hand-computed coarse KL, is at most the full KL, and equals it when K covers the
    vocabulary."""
    student, teacher = models
    settings = SETTINGS["plain"]
    full = sample(models, settings, n=16, seed=3)
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
    q = torch.softmax(ban(teacher_forced(student, full), (PAD,)), -1)
    p = full.teacher_log_dist.exp()
    ids = coarse.teacher_dist_ids
    assert torch.equal(ids[mask].sort(-1).values, p.topk(3, dim=-1).indices[mask].sort(-1).values)
    q_bins = torch.cat([q.gather(-1, ids), 1 - q.gather(-1, ids).sum(-1, keepdim=True)], -1)
    p_bins = torch.cat([p.gather(-1, ids), 1 - p.gather(-1, ids).sum(-1, keepdim=True)], -1)
    by_hand = (q_bins * (q_bins / p_bins).log()).sum(-1)
    torch.testing.assert_close(kl_coarse[mask], by_hand[mask], atol=1e-5, rtol=0)

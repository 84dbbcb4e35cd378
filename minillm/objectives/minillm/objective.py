"""MiniLLM (``--type minillm``): reverse-KL policy-gradient distillation.

The objective has two halves, which its batch source (:class:`~minillm.objectives.minillm.batches.RolloutBatches`,
from :meth:`MiniLLMObjective.batch_source`) and the loop call at different times:

- :meth:`MiniLLMObjective.collect` (once per rollout collection, no gradient): sample targets for a list of prompt
  batches with :func:`~minillm.objectives.minillm.rollouts.sample_rollouts` (student and frozen teacher decoding
  together, teacher-mixed), then compute per-token rewards, returns and advantages once, from the recorded log-probs. The teacher is not run
  again: everything the loss needs from it was recorded while sampling (1 teacher pass per rollout sample).
- :meth:`MiniLLMObjective.__call__` (every PPO micro-batch): one teacher-forced student pass over stored rollouts
  (and, with ``--lm-coef`` > 0, over a gold batch) gives the loss below.

Loss, summed over the valid rollout tokens of the micro-batch (the loop divides by the global count N):

    L = sum_t max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))         policy gradient (long-term)
      + [single-step-reg] sum_t KL(q_theta(. | y_<t, x) || p(. | y_<t, x))  exact, over the vocabulary (or, with
                                                                          --teacher-topk K, over the teacher's top K
                                                                          tokens plus one bin for the rest)
      + lm_coef (N_local / N_lm) sum_{gold t} -log q_theta(y*_t | y*_<t, x)   the LM term on gold targets

with rho_t = q_theta(y_t) / q_old(y_t) x w_t, w_t = q_old(y_t) / m_t(y_t) (MiniLLM's per-token importance
weight for teacher-mixed sampling), eps = ``--cliprange``, and the advantage

    A_t = whiten( G_t / n_t ),  G_t = sum_{t' in S_t} gamma^(t' - min S_t) r_t',
    r_t = clip((log p(y_t) - log q_old(y_t)) / reward_scaling, +-cliprange_reward),

where S_t = {t' > t} when the single-step term is on (it accounts for r_t exactly: the decomposition of
``docs/math.md`` section 3) and {t' >= t} when it is off; n_t = |S_t| with ``--length-norm`` (else 1); whitening
(``--whiten-advantages``) over the valid tokens of all processes' rollouts.

What is minimised is KL(q~ || p): q~ the student as it samples (temperature, top-k / top-p keep-set recorded per
position and reused when scoring), p the raw teacher (temperature 1, no cut). The reward r_t and the single-step
term both use the raw p, because they are the two halves of one decomposition of that KL's gradient
(R_t = r_t + R_{t+1}); the tempered, cut teacher p~ enters only the proposal m_t the tokens are drawn from, which
w_t = q_old / m_t accounts for (exact at alpha = 0 under every sampling setting: tests/test_minillm_gradient.py).

Whitening scope (``--whiten-scope``): ``collection`` (default) whitens once per collection, one statistic over all
N rollouts of all processes, so every micro-batch's advantages share one scale and the update does not depend on
how the collection is cut; ``micro-batch`` whitens each micro-batch in :meth:`MiniLLMObjective.micro_batch`, over
its valid tokens and those of the other processes' micro-batches formed with it (the reference's behaviour, for
replication). The engine passes the cross-process sum in, so this module needs no torch.distributed.

Choices that differ from the reference implementation, on purpose: the return under the single-step term excludes
r_t (the reference counts r_t in both terms); ``--length-norm`` really switches the normalisation (the reference
always applies it); whitening ignores padding (the reference counts it) and is per collection by default (the
reference's is per micro-batch).

The LM term is the cross-entropy of the (prompt, target) pairs of ``--lm-data-dir``: for a decoder-only student on
a plain-text corpus (prompt = a chunk's first token, target = the rest: ``docs/data.md``) it is MiniLLM's
pre-training loss, -sum_t log q(x_t | x_<t) over every token but the first; for Flan-T5 the corpus is span-corrupted
(an encoder-decoder has no next-token objective over one stream), or gold task pairs. It is a token mean over its
own batch, weighted to enter the loop's normalisation by N like the other terms.
"""

from __future__ import annotations

import dataclasses

import torch

from ...divergences import coarsen, reverse_kl
from ...engine.batches import prompt_batches
from ...engine.distributed import all_reduce_sum
from ...faults import kill_point
from ...losses import token_cross_entropy
from ..base import Objective, ObjectiveOutput, Processes
from .batches import RolloutBatches, evaluation_prompts, rollout_batches
from .policy_gradient import k3_reverse_kl, masked_whiten, ppo_token_losses, returns, token_rewards
from .rollouts import Rollouts, SamplingSettings, policy_log_probs, sample_rollouts


class MiniLLMObjective(Objective):
    """See the module docstring."""

    uses_dropout = False  # the reference samples and trains in eval mode: log q_theta = log q_old at the first step
    evaluate_at_start = True  # where the policy starts: logged, not a candidate for best/

    def __init__(self, config, adapter, load_frozen_model):
        super().__init__(config, adapter)
        self.teacher = load_frozen_model(config.teacher_model_path)
        self.sampling = SamplingSettings(
            max_new_tokens=config.rollout_max_new_tokens, alpha=config.teacher_mixed_alpha,
            temperature=config.temperature, top_k=config.top_k, top_p=config.top_p,
            banned_ids=adapter.banned_ids)
        self.frozen_models = [self.teacher]
        self.teacher_topk = config.teacher_topk

    # -------------------------------------------------------------------------------------- training data

    def batch_source(self, model, config, processes: Processes) -> RolloutBatches:
        return rollout_batches(self, model, config, processes)

    # -------------------------------------------------------------------------------------- rollout collection

    def advantages(self, rollouts: Rollouts, all_reduce_sum=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(rewards, advantages, weights)`` ``[B, T]`` from the recorded log-probs (see the module docstring)."""
        c = self.config
        mask = rollouts.mask
        rewards = token_rewards(rollouts.teacher_logprobs, rollouts.old_logprobs, mask, c.reward_scaling,
                                c.cliprange_reward or None)
        advantages = returns(rewards, mask, c.gamma, include_current=not c.single_step_reg, length_norm=c.length_norm)
        if c.whiten_advantages and c.whiten_scope == "collection":
            advantages = masked_whiten(advantages, mask, all_reduce_sum)
        weights = torch.exp(rollouts.old_logprobs - rollouts.mixed_logprobs).masked_fill(~mask, 0.0)
        return rewards, advantages, weights

    def collect(self, model, prompt_batches: list[dict], generator: torch.Generator | None = None,
                all_reduce_sum=None, all_done=None) -> tuple[dict, dict]:
        """Sample a rollout for every prompt of ``prompt_batches`` (dicts with input_ids and attention_mask on the
        model's device; ``all_done`` as in :func:`sample_rollouts`) and prepare them for the PPO epochs. Returns
        ``(store, stats)``: the store holds the :class:`Rollouts` plus rewards, advantages and weights ``[N, T]``;
        stats are sums over this process's rollouts (reward, rev_kl_k3, mixed_length, sequences, tokens) for the
        engine to reduce and log."""
        parts = []
        for b in prompt_batches:
            parts.append(sample_rollouts(model, self.teacher, b["input_ids"], b["attention_mask"], self.sampling,
                                         self.adapter, generator, self.teacher_topk, all_done))
            kill_point("collect")
        rollouts = Rollouts.concatenate(parts, self.adapter.pad_token_id)
        rewards, advantages, weights = self.advantages(rollouts, all_reduce_sum)
        mask = rollouts.mask
        lengths = mask.sum(-1).clamp(min=1)
        # sums over rollouts of: the per-token mean reward, the per-token mean k3 reverse-KL estimate and the
        # length. k3 is weighted by w_t = q_old / mixture: for y_t drawn from the mixture m, E_m[w_t k3_t] =
        # KL(q_t || p_t) at the visited prefix. Unweighted, it estimates nothing for alpha > 0 and explodes when the
        # teacher's share draws a token the student gives almost no mass (p / q huge); weighted, w_t k3_t stays
        # below about 1 / alpha there.
        k3 = weights * k3_reverse_kl(rollouts.teacher_logprobs, rollouts.old_logprobs, mask)
        stats = {"reward": float((rewards.sum(-1) / lengths).sum()), "rev_kl_k3": float((k3.sum(-1) / lengths).sum()),
                 "mixed_length": float(mask.sum()), "sequences": float(len(rollouts)), "tokens": float(mask.sum())}
        store = {"rollouts": rollouts, "rewards": rewards, "advantages": advantages, "weights": weights}
        return store, stats

    def micro_batch(self, store: dict, index, all_reduce_sum=None) -> dict:
        """The rows ``index`` of a store as a micro-batch (trimmed to their longest prompt and target). With
        ``--whiten-scope micro-batch`` its advantages are whitened here, over its valid tokens and those of the
        micro-batches the other processes form at the same time (``all_reduce_sum`` as in :meth:`collect`)."""
        rollouts = store["rollouts"].select(index)
        width = rollouts.labels.shape[1]
        index = torch.as_tensor(index, dtype=torch.long, device=rollouts.labels.device)
        batch = {"input_ids": rollouts.input_ids, "attention_mask": rollouts.attention_mask,
                 "labels": rollouts.labels, "rollouts": rollouts,
                 **{k: store[k][index, :width] for k in ("rewards", "advantages", "weights")}}
        if self.config.whiten_advantages and self.config.whiten_scope == "micro-batch":
            batch["advantages"] = masked_whiten(batch["advantages"], rollouts.mask, all_reduce_sum)
        return batch

    # -------------------------------------------------------------------------------------- the loss

    def token_losses(self, model, batch: dict) -> dict:
        """Per-token terms ``[B, T]`` of the loss on stored rollouts: ``pg``, ``single`` (zeros when the single-step
        term is off) and ``clipped``; what :meth:`__call__` sums, kept apart for tests that weight sequences."""
        rollouts: Rollouts = batch["rollouts"]
        mask = rollouts.mask
        logits = self.adapter.logits(model, batch)
        log_dist = policy_log_probs(logits, self.sampling, rollouts.keep)
        picked = log_dist.gather(-1, rollouts.labels.masked_fill(~mask, self.adapter.eos_token_id).unsqueeze(-1))
        logprobs = torch.where(mask, picked.squeeze(-1), 0.0)  # padding gathers a finite (never banned) entry
        pg, clipped = ppo_token_losses(logprobs, rollouts.old_logprobs, batch["weights"], batch["advantages"], mask,
                                       self.config.cliprange or None)
        single = torch.zeros_like(pg)
        if self.config.single_step_reg:
            student_dist = log_dist
            if rollouts.teacher_dist_ids is not None:  # the teacher kept as top-k plus remainder: the same bins
                student_dist = coarsen(log_dist, rollouts.teacher_dist_ids)
            single = reverse_kl(student_dist, rollouts.teacher_log_dist, mask, reduction="none")
        return {"pg": pg, "single": single, "clipped": clipped, "logprobs": logprobs}

    def __call__(self, model, batch: dict) -> ObjectiveOutput:
        terms = self.token_losses(model, batch)
        pg, single = terms["pg"].sum(), terms["single"].sum()
        loss = pg + single
        metrics = {"pg": pg.detach(), "single": single.detach(), "clip_frac": terms["clipped"].sum().float()}
        if "lm" in batch:
            lm_sum, lm_tokens = token_cross_entropy(self.adapter.logits(model, batch["lm"]), batch["lm"]["labels"])
            lm = lm_sum * (self.units(batch) / lm_tokens.clamp(min=1))
            loss = loss + self.config.lm_coef * lm
            metrics["lm"] = lm.detach()
        return ObjectiveOutput(loss, metrics)

    # -------------------------------------------------------------------------------------- evaluation

    def extra_evaluation(self, model, config, processes: Processes) -> dict:
        """:meth:`evaluation_metrics` on student-only samples for this rank's share of the evaluation prompts (the
        first --eval-max-examples of each round, cut to a multiple of the process count so that every rank samples
        as many batches), summed over ranks and averaged per sequence. The same prompts and draws each time (the
        generator is seeded with --seed); the model is sampled in eval mode and returned to its mode."""
        mine = evaluation_prompts(config, processes.rank, processes.world_size)
        generator = torch.Generator(device=processes.device).manual_seed(config.seed)
        was_training = model.training
        model.eval()
        with processes.sampling.gathered():
            sums = self.evaluation_metrics(model, prompt_batches(mine, config.chunk_size, self.adapter.pad_token_id,
                                                                 processes.device),
                                           generator, processes.sampling.all_done)
        model.train(was_training)
        names = sorted(sums)
        totals = dict(zip(names, all_reduce_sum([sums[k] for k in names], processes.device)))
        sequences = totals.pop("sequences")
        return {**{k: v / max(sequences, 1.0) for k, v in totals.items()}, "sequences": int(sequences)}

    def extra_summary(self, figures: dict) -> str:
        return f"rev_kl {figures['rev_kl']:.3f}, len {figures['student_length']:.2f}"

    @torch.no_grad()
    def evaluation_metrics(self, model, prompt_batches: list[dict], generator: torch.Generator | None = None,
                           all_done=None) -> dict:
        """Sums over rollouts sampled from the **student alone** (alpha = 0) for ``prompt_batches``: the Monte-Carlo
        estimate of the sequence-level reverse KL, sum_t (log q(y_t) - log p(y_t)) with y ~ q (its mean is
        KL(q || p) at the sampling settings), the per-token mean reward, the length, and the count."""
        settings = dataclasses.replace(self.sampling, alpha=0.0)
        sums = {"rev_kl": 0.0, "reward": 0.0, "student_length": 0.0, "sequences": 0.0}
        for b in prompt_batches:
            rollouts = sample_rollouts(model, self.teacher, b["input_ids"], b["attention_mask"], settings, self.adapter,
                                       generator, all_done=all_done)
            mask = rollouts.mask
            log_ratio = (rollouts.old_logprobs - rollouts.teacher_logprobs).masked_fill(~mask, 0.0)
            lengths = mask.sum(-1)
            sums["rev_kl"] += float(log_ratio.sum())
            sums["reward"] += float((-log_ratio.sum(-1) / lengths.clamp(min=1)).sum())
            sums["student_length"] += float(lengths.sum())
            sums["sequences"] += float(len(rollouts))
        return sums

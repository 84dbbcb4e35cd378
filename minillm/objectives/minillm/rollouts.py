"""On-policy rollouts: two models (student and teacher) decoding together, and what the loss needs from them.

:func:`sample_rollouts` starts one decoding state per model (``adapter.start_decoding``: for an encoder-decoder,
**each model's own encoder** runs once over the prompts, so a teacher decoder never sees the student's encoder
states), then steps both together (``adapter.decode_step``), each with its own key-value cache. Without teacher
mixing (alpha = 0) the proposal is the student alone: only the student is stepped, and the teacher scores the
finished targets in one teacher-forced pass (``adapter.logits``), recording the same values. At step t, with
the student's processed distribution q_old(. | y_<t, x) (temperature, top-k / top-p as a keep-set, the banned ids
removed) and the teacher's p, the next token is drawn from the teacher-mixed distribution

    m_t = (1 - alpha) q_old + alpha p~,

p~ being the teacher at the same temperature on the same keep-set (p~ = p at the defaults: temperature 1, no top-k
/ top-p). The objective is KL(q || p) with q the processed student (as q_old samples) and p the raw teacher, so the
reward and the single-step term use p; p~ only shapes the proposal m_t, which the importance weight q_old / m_t
corrects (docs/math.md sections 3 and 5). Recorded per token: log q_old(y_t), log p(y_t) (the raw teacher,
temperature 1: the reward), log m_t(y_t), and the teacher's log-distribution at the position (for the single-step
term: in full, or with ``teacher_topk = K`` as its K most likely tokens plus one bin for the rest, see
:func:`minillm.divergences.coarsen`), so that the frozen teacher runs exactly once per rollout. Sequences stop at
EOS (kept as a target token) and are padded with -100 after it.

Targets are stored as the adapter's labels: y_1..y_T **without** what starts a target (T5: the decoder start
token), which the adapter adds exactly once when they are fed back; :func:`policy_log_probs` on teacher-forced
logits of the stored targets gives back the recorded log q_old (tests/test_rollouts.py).

The adapter's banned ids (T5: the pad id, which is the decoder start and the padding, never a target) are banned
from both models (a -inf logit, ``settings.banned_ids``) in sampling, scoring and the token-level KL: one support
for every distribution keeps the math exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from ...divergences import coarsen
from ...models.base import IGNORE_INDEX, ban


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int
    alpha: float = 0.0  # teacher-mixing weight
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k cut
    top_p: float = 1.0  # 1: no nucleus cut
    banned_ids: tuple = ()  # ids no distribution may put mass on

    @property
    def cuts(self) -> bool:
        """Whether top-k / top-p restrict the support (then the keep-set is recorded per token)."""
        return self.top_k > 0 or self.top_p < 1.0


@dataclass
class Rollouts:
    """A batch of rollouts, right-padded: prompts ``[B, S]``, targets and per-token records ``[B, T]``, the teacher's
    log-distributions (``[B, T, V]``, or ``[B, T, K + 1]`` coarsened to the ids ``teacher_dist_ids`` ``[B, T, K]``)
    and, when top-k / top-p cut the support, the student's keep-sets ``[B, T, V]``."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor
    old_logprobs: torch.Tensor
    teacher_logprobs: torch.Tensor
    mixed_logprobs: torch.Tensor
    teacher_log_dist: torch.Tensor
    teacher_dist_ids: torch.Tensor | None = None
    keep: torch.Tensor | None = None

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != IGNORE_INDEX

    def lengths(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def __len__(self) -> int:
        return self.labels.shape[0]

    def select(self, index) -> "Rollouts":
        """The rows ``index``, trimmed to their longest prompt and target."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.labels.device)
        width_s = max(int(self.attention_mask[index].sum(-1).max()), 1)
        width_t = max(int(self.mask[index].sum(-1).max()), 1)
        values = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                values[f.name] = None
                continue
            value = value[index]
            values[f.name] = value[:, :width_s] if f.name in ("input_ids", "attention_mask") else value[:, :width_t]
        return Rollouts(**values)

    @staticmethod
    def concatenate(parts: list["Rollouts"], pad_token_id: int) -> "Rollouts":
        """Rows of every part, padded to the widest prompt and target."""
        width_s = max(p.input_ids.shape[1] for p in parts)
        width_t = max(p.labels.shape[1] for p in parts)
        pad_values = {"input_ids": pad_token_id, "attention_mask": 0, "labels": IGNORE_INDEX, "old_logprobs": 0.0,
                      "teacher_logprobs": 0.0, "mixed_logprobs": 0.0, "teacher_log_dist": 0.0, "teacher_dist_ids": 0,
                      "keep": False}
        values = {}
        for f in fields(Rollouts):
            if getattr(parts[0], f.name) is None:
                values[f.name] = None
                continue
            width = width_s if f.name in ("input_ids", "attention_mask") else width_t
            padded = []
            for p in parts:
                value = getattr(p, f.name)
                shape = (value.shape[0], width - value.shape[1], *value.shape[2:])
                padded.append(torch.cat([value, value.new_full(shape, pad_values[f.name])], dim=1))
            values[f.name] = torch.cat(padded)
        return Rollouts(**values)


def keep_set(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Tokens kept by top-k, then top-p (the smallest set of most likely tokens with mass >= top_p; the most likely
    token always stays), from already temperature-scaled and banned fp32 logits; bool, same shape."""
    keep = logits > -math.inf
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        keep &= logits >= kth
    if top_p < 1.0:
        sorted_logits, order = logits.masked_fill(~keep, -math.inf).sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        mass_before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        keep_sorted = mass_before < top_p
        keep &= torch.zeros_like(keep).scatter(-1, order, keep_sorted)
    return keep


def policy_log_probs(logits: torch.Tensor, settings: SamplingSettings,
                     keep: torch.Tensor | None = None) -> torch.Tensor:
    """The log-distribution a policy samples from: fp32 logits / temperature, banned ids and tokens outside
    ``keep`` at -inf, log-softmax. Used alike for sampling (q_old) and for teacher-forced scoring (q_theta)."""
    logits = ban(logits, settings.banned_ids) / settings.temperature
    if keep is not None:
        logits = logits.masked_fill(~keep, -math.inf)
    return torch.log_softmax(logits, dim=-1)


def invert_cdf(log_probs: torch.Tensor, uniform: torch.Tensor) -> torch.Tensor:
    """The id drawn by inversion for each row of ``log_probs`` ``[..., V]`` and its ``uniform`` in [0, 1) ``[...]``:
    the first id ``i`` with ``C_i > u * C_V``, ``C`` the cumulative mass (summed in fp64, so rounding cannot move a
    draw by more than ~1e-16 of mass). A zero-mass id is never drawn: its ``C_i`` equals its predecessor's, which
    was already greater; when ``u * C_V`` rounds up to ``C_V`` itself, the last id with mass is drawn. A row with
    no positive mass (NaN logits from non-finite weights) still gets an id in range, where ``torch.multinomial``
    raised: its recorded log-probabilities are NaN, so the step's loss is non-finite and the trainer's non-finite
    check skips the step (``--max-nonfinite-steps``) instead of the sampler stopping the run."""
    probs = log_probs.double().exp()
    cdf = probs.cumsum(-1)
    target = uniform.double().unsqueeze(-1) * cdf[..., -1:]
    drawn = torch.searchsorted(cdf, target, right=True).squeeze(-1)
    last_with_mass = probs.shape[-1] - 1 - (probs > 0).flip(-1).long().argmax(-1)
    return torch.minimum(drawn, last_with_mass)


def draw(log_probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One id per row from ``exp(log_probs)`` ``[B, V]``: :func:`invert_cdf` with one uniform per row. It draws
    from the same distribution as ``torch.multinomial(probs, 1)``, which spends one exponential variate per
    vocabulary entry (32,100 per row and step for T5's vocabulary, several milliseconds on a CPU)."""
    uniform = torch.rand(log_probs.shape[:-1], generator=generator, device=log_probs.device, dtype=torch.float64)
    return invert_cdf(log_probs, uniform)


@torch.no_grad()
def sample_rollouts(student, teacher, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    settings: SamplingSettings, adapter, generator: torch.Generator | None = None,
                    teacher_topk: int = 0, all_done=None, defer_teacher: bool | None = None) -> Rollouts:
    """Sample one target per prompt from the teacher-mixed distribution (module docstring); both models in their
    current mode (the caller puts the student in eval mode: MiniLLM samples and trains without dropout).
    ``teacher_topk`` > 0 keeps the teacher's distributions as top-k plus remainder (module docstring).
    ``all_done(done)`` says whether decoding may stop (default: every sequence of the batch has ended); processes
    whose models gather ZeRO-3 parameters at every call pass one that waits for every process.

    Two paths, the same records:

    - **deferred** (the default at ``alpha == 0``): the proposal is the student alone, so only the student is
      stepped (``adapter.decode_step``); the teacher then scores the finished targets once, teacher-forced
      (``adapter.logits``: one pass over prompts + targets, one model call per process, so ZeRO-3 processes stay in
      step). The draws do not depend on the teacher at ``alpha == 0``, so the tokens are those of the stepwise path
      with the same generator.
    - **stepwise** (always at ``alpha > 0``): with teacher mixing the proposal m_t needs the teacher's distribution
      at every step, before the token is drawn, so student and teacher are stepped together, each with its own
      decoding state. ``defer_teacher=False`` forces it at ``alpha == 0`` too (tests compare the two paths);
      ``defer_teacher=True`` with ``alpha > 0`` is an error."""
    if defer_teacher is None:
        defer_teacher = settings.alpha == 0
    if defer_teacher and settings.alpha > 0:
        raise ValueError("the teacher can only be deferred without teacher mixing (alpha = 0)")
    models = {"student": student} if defer_teacher else {"student": student, "teacher": teacher}
    states = {name: adapter.start_decoding(model, input_ids, attention_mask) for name, model in models.items()}
    tokens = None  # the first step feeds what starts a target (T5: the decoder start token)
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
    log_1m_alpha, log_alpha = math.log1p(-settings.alpha), math.log(settings.alpha) if settings.alpha > 0 else None
    columns: dict[str, list] = {k: [] for k in ("labels", "old", "teacher", "mixed", "dist", "ids", "keep")}
    for _ in range(settings.max_new_tokens):
        logits = {}
        for name, model in models.items():
            logits[name], states[name] = adapter.decode_step(model, states[name], tokens)
        keep = None
        if settings.cuts:
            keep = keep_set(ban(logits["student"], settings.banned_ids) / settings.temperature, settings.top_k,
                            settings.top_p)
        student_log = policy_log_probs(logits["student"], settings, keep)
        mixed_log = student_log
        if settings.alpha > 0:
            mixed_log = torch.logaddexp(student_log + log_1m_alpha,
                                        policy_log_probs(logits["teacher"], settings, keep) + log_alpha)
        sampled = draw(mixed_log, generator)
        picked = sampled.unsqueeze(-1)
        columns["labels"].append(sampled.masked_fill(done, IGNORE_INDEX))
        columns["old"].append(student_log.gather(-1, picked).squeeze(-1).masked_fill(done, 0.0))
        columns["mixed"].append(mixed_log.gather(-1, picked).squeeze(-1).masked_fill(done, 0.0))
        if not defer_teacher:
            teacher_log = torch.log_softmax(ban(logits["teacher"], settings.banned_ids), dim=-1)
            columns["teacher"].append(teacher_log.gather(-1, picked).squeeze(-1).masked_fill(done, 0.0))
            if teacher_topk:
                ids = teacher_log.topk(teacher_topk, dim=-1).indices
                columns["ids"].append(ids)
                columns["dist"].append(coarsen(teacher_log, ids))
            else:
                columns["dist"].append(teacher_log)
        if keep is not None:
            columns["keep"].append(keep)
        done = done | (sampled == adapter.eos_token_id)
        if all_done(done) if all_done is not None else bool(done.all()):
            break
        tokens = sampled.masked_fill(done, adapter.pad_token_id)
    labels = torch.stack(columns["labels"], 1)
    old_logprobs = torch.stack(columns["old"], 1)
    if defer_teacher:  # one teacher-forced pass over the finished targets: the same p(. | y_<t, x) at every position
        teacher_log = torch.log_softmax(ban(adapter.logits(teacher, {"input_ids": input_ids,
                                                                     "attention_mask": attention_mask,
                                                                     "labels": labels}), settings.banned_ids), dim=-1)
        mask = labels != IGNORE_INDEX
        teacher_logprobs = teacher_log.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
        teacher_logprobs = teacher_logprobs.masked_fill(~mask, 0.0)  # replaced, not multiplied: a banned pick is -inf
        teacher_dist_ids = teacher_log.topk(teacher_topk, dim=-1).indices if teacher_topk else None
        teacher_log_dist = coarsen(teacher_log, teacher_dist_ids) if teacher_topk else teacher_log
    else:
        teacher_logprobs = torch.stack(columns["teacher"], 1)
        teacher_log_dist = torch.stack(columns["dist"], 1)
        teacher_dist_ids = torch.stack(columns["ids"], 1) if teacher_topk else None
    return Rollouts(input_ids=input_ids, attention_mask=attention_mask, labels=labels, old_logprobs=old_logprobs,
                    teacher_logprobs=teacher_logprobs, mixed_logprobs=torch.stack(columns["mixed"], 1),
                    teacher_log_dist=teacher_log_dist, teacher_dist_ids=teacher_dist_ids,
                    keep=torch.stack(columns["keep"], 1) if settings.cuts else None)

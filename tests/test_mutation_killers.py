"""Tests written for the mutants that survived mutation testing (tools/mutation_test.sh, docs/mutation.md) in
minillm/rollouts.py, minillm/policy_gradient.py and minillm/objectives/minillm.py. Each test's docstring names the
mutants it kills (file, function and mutation; docs/mutation.md gives mutmut's names) and what it checks; the
expectations are hand-computed or, for the objective's wiring, the functions it is meant to call."""

import contextlib
import dataclasses
import math
from types import SimpleNamespace

import torch

from minillm.losses import token_cross_entropy
from minillm.models.base import IGNORE_INDEX
from minillm.objectives.base import Processes
from minillm.objectives.minillm import MiniLLMObjective
from minillm.objectives.minillm.policy_gradient import masked_whiten, returns, token_rewards
from minillm.objectives.minillm.rollouts import Rollouts, SamplingSettings, ban, keep_set, sample_rollouts
from minillm_helpers import EOS, PAD, Engine, adapter_for, minillm_config, tiny_t5

NEG_INF = -math.inf


# ------------------------------------------------------------------------------------------------ policy_gradient.py

def test_policy_gradient_defaults():
    """policy_gradient.py, token_rewards: default ``scaling = 1.0`` -> 2.0; returns: default ``gamma = 1.0`` -> 2.0.
    With the defaults the rewards are log p - log q_old unscaled and unclipped, and the return is the plain suffix
    sum: rewards (0.5, -1, 2) give returns (1.5, 1, 2)."""
    mask = torch.tensor([[True, True, True]])
    teacher = torch.tensor([[-1.0, -3.0, -0.5]], dtype=torch.float64)
    old = torch.tensor([[-1.5, -2.0, -2.5]], dtype=torch.float64)
    rewards = token_rewards(teacher, old, mask)
    assert rewards.tolist() == [[0.5, -1.0, 2.0]]
    assert returns(rewards, mask).tolist() == [[1.5, 1.0, 2.0]]


# ------------------------------------------------------------------------------------------------ rollouts.py: keep_set

def test_keep_set_without_cuts_keeps_every_finite_logit():
    """rollouts.py, keep_set: ``logits > -inf`` -> ``>=`` (a banned token kept); ``top_p < 1.0`` -> ``<= 1.0`` and
    -> ``< 2.0`` (the nucleus step run at top_p = 1). Logits (0, -100, -inf) in fp32: token 1 has probability
    e^-100 (3.7e-44), so the mass before it rounds to 1.0, which is not below 1; top_p = 1 must keep it anyway."""
    logits = torch.tensor([[0.0, -100.0, NEG_INF]])
    assert keep_set(logits, 0, 1.0).tolist() == [[True, True, False]]


def test_keep_set_top_k():
    """rollouts.py, keep_set: ``top_k > 0`` -> ``>= 0`` (top-k with k = 0 runs and fails) and -> ``> 1`` (k = 1
    ignored); ``keep &= logits >= kth`` -> ``keep = ...`` (a -inf token comes back when k reaches it). Logits
    (3, 1, 2, -inf, 0): k = 1 keeps token 0, k = 2 tokens 0 and 2, k = 5 every finite one."""
    logits = torch.tensor([[3.0, 1.0, 2.0, NEG_INF, 0.0]])
    assert keep_set(logits, 1, 1.0).tolist() == [[True, False, False, False, False]]
    assert keep_set(logits, 2, 1.0).tolist() == [[True, False, True, False, False]]
    assert keep_set(logits, 5, 1.0).tolist() == [[True, True, True, False, True]]
    assert keep_set(logits, 0, 0.5).tolist() == [[True, False, False, False, False]]  # e^3 / (e^3 + e^2 + ...) > 0.5


def test_keep_set_top_p_stops_once_the_mass_reaches_top_p():
    """rollouts.py, keep_set: ``mass_before < top_p`` -> ``<=``. Four equal logits: the masses before each token are
    exactly 0, 1/4, 1/2, 3/4; top_p = 1/2 is reached by two tokens, so the third (mass before it exactly 1/2) is cut."""
    assert int(keep_set(torch.zeros(1, 4), 0, 0.5).sum()) == 2


def test_keep_set_on_batched_positions_works_on_the_last_dimension():
    """rollouts.py, keep_set, on logits [B, T, V] (B = 1, T = 2, V = 5): ``logits.shape[-1]`` -> ``shape[+1]`` and
    -> ``shape[-2]`` (k capped at T = 2), ``topk(..., dim=-1)`` -> ``dim=+1``; with top-p: ``sort(dim=-1)`` ->
    ``dim=+1``, ``softmax(-1)`` -> ``(+1)``, ``cumsum(-1)`` -> ``(+1)``, ``scatter(-1, ...)`` -> ``(+1)``.
    Position 0 has probabilities (0.4, 0.3, 0.2, 0.1, 0) in token order, position 1 (0.04, 0.05, 0, 0.85, 0.06).
    Top-3: tokens {0, 1, 2} and {3, 4, 1}. Top-p 0.8: 0.4 + 0.3 + 0.2 reaches it at position 0, 0.85 at position 1.
    (Across positions instead of tokens, the masses before the second-ranked tokens would be 0.4 / 1.25 and 0.3 / 0.35
    + 0.32: position 0 would keep only two.)"""
    probabilities = torch.tensor([[[0.4, 0.3, 0.2, 0.1, 0.0], [0.04, 0.05, 0.0, 0.85, 0.06]]])
    logits = probabilities.log()
    assert keep_set(logits, 3, 1.0).tolist() == [[[True, True, True, False, False], [False, True, False, True, True]]]
    assert keep_set(logits, 0, 0.8).tolist() == [[[True, True, True, False, False], [False, False, False, True, False]]]


def test_keep_set_top_k_cut_survives_top_p_rounding():
    """rollouts.py, keep_set: ``keep &= zeros.scatter(...)`` -> ``keep = ...`` (the nucleus step overwriting the top-k
    cut). With top_p = 1 - 2^-24 (the largest fp32 below 1), rows whose three top-k probabilities, renormalised in
    fp32, sum to less than top_p exist; the nucleus alone would then let the cut tokens (mass before them = that sum)
    back in. Every row must keep exactly its 3 most likely tokens."""
    logits = torch.randn(2000, 6, generator=torch.Generator().manual_seed(0)) * 3
    top_p = 1 - 2 ** -24
    kth = logits.topk(3, dim=-1).values[..., -1:]
    top3 = logits.masked_fill(logits < kth, NEG_INF).softmax(-1)
    assert bool((top3.sum(-1) < top_p).any())  # the rounding case occurs
    keep = keep_set(logits, 3, top_p)
    assert torch.equal(keep, logits >= kth)


# ------------------------------------------------------------------------------------------------ rollouts.py: ban

def test_ban_returns_fp32_on_the_logits_device():
    """rollouts.py, ban: ``logits.to(promote_types(...))`` -> ``logits.to(None)`` (bf16 kept); ``as_tensor(banned_ids,
    device=logits.device)`` -> ``device=None`` and the device dropped (the index left on the CPU). bf16 logits come
    back in fp32 with the banned ids at -inf; on the meta device (standing in for an accelerator: a CPU index is
    refused there, as on CUDA) the result stays on that device."""
    banned = ban(torch.tensor([[1.5, -2.0, 0.25]], dtype=torch.bfloat16), (0, 2))
    assert banned.dtype == torch.float32 and banned.tolist() == [[NEG_INF, -2.0, NEG_INF]]
    assert ban(torch.zeros(2, 5, device="meta"), (0,)).device.type == "meta"


# ------------------------------------------------------------------------------------------------ rollouts.py: Rollouts

def hand_rollouts(prompt_lengths, target_lengths, width_s, width_t, vocab=4, top_k_ids=None, keep=False, offset=0.0):
    """Rollouts whose every valid entry is distinct and non-zero: row r, position j holds 10 (r + 1) + j + 1 (plus
    ``offset``; the log-probs negated), and padding holds the pad values (pad id 0, attention 0, labels -100,
    records 0, ids 0, keep False)."""
    rows = len(prompt_lengths)
    s = torch.arange(width_s).expand(rows, width_s)
    t = torch.arange(width_t).expand(rows, width_t)
    base = (torch.arange(rows).unsqueeze(-1) + 1) * 10.0
    prompt_mask = s < torch.tensor(prompt_lengths).unsqueeze(-1)
    target_mask = t < torch.tensor(target_lengths).unsqueeze(-1)
    value = torch.where(target_mask, base + t + 1 + offset, 0.0)
    dist = torch.where(target_mask.unsqueeze(-1), -(value.unsqueeze(-1) + torch.arange(vocab) / 10), 0.0)
    return Rollouts(
        input_ids=torch.where(prompt_mask, (base + s + 1).long(), PAD),
        attention_mask=prompt_mask.long(),
        labels=torch.where(target_mask, value.long(), IGNORE_INDEX),
        old_logprobs=-value, teacher_logprobs=-2 * value, mixed_logprobs=-3 * value, teacher_log_dist=dist,
        teacher_dist_ids=(torch.where(target_mask.unsqueeze(-1), torch.tensor(top_k_ids), 0)
                          if top_k_ids is not None else None),
        keep=(target_mask.unsqueeze(-1) & (torch.arange(vocab) % 2 == 0)) if keep else None)


def assert_same_rollouts(actual: Rollouts, expected: Rollouts) -> None:
    for name in ("input_ids", "attention_mask", "labels", "old_logprobs", "teacher_logprobs", "mixed_logprobs",
                 "teacher_log_dist", "teacher_dist_ids", "keep"):
        a, e = getattr(actual, name), getattr(expected, name)
        assert (a is None and e is None) or torch.equal(a, e), name


def test_rollouts_select_trims_to_the_longest_selected_row():
    """rollouts.py, Rollouts.select, for the prompt width and for the target width alike: the width set to None (no
    trim), ``sum(-1)`` -> ``sum(None)`` (all rows' tokens together) and -> ``sum(-2)`` (a column count), the floor
    ``max(..., 1)`` -> ``max(..., 2)``. Rows with prompts of 3, 1, 1 tokens and targets of 3, 1, 1 tokens: rows 1
    and 2 together are 1 prompt token and 1 target token wide."""
    rollouts = hand_rollouts([3, 1, 1], [3, 1, 1], width_s=3, width_t=3, top_k_ids=[2, 1], keep=True)
    selected = rollouts.select([1, 2])
    expected = hand_rollouts([1, 1], [1, 1], width_s=1, width_t=1, top_k_ids=[2, 1], keep=True, offset=10.0)
    expected.input_ids += 10 * (expected.input_ids != PAD)
    assert_same_rollouts(selected, expected)


def test_rollouts_concatenate_pads_every_field_with_its_pad_value():
    """rollouts.py, Rollouts.concatenate: the pad values of attention_mask (0 -> 1), old_logprobs, teacher_logprobs,
    mixed_logprobs and teacher_log_dist (0.0 -> 1.0), teacher_dist_ids (key renamed, 0 -> 1), keep (key renamed,
    False -> True); the pad width ``width - value.shape[1]`` -> ``width + ...``; ``continue`` -> ``break`` after a
    field that is None (teacher_dist_ids None, keep not). A part 2 prompt tokens and 1 target token wide joined
    with one 3 and 2 wide gives the first part's row padded to 3 and 2 (as hand_rollouts pads), then the second's."""
    for ids in ([3, 0], None):
        narrow = hand_rollouts([2], [1], width_s=2, width_t=1, top_k_ids=ids, keep=True)
        wide = hand_rollouts([3], [2], width_s=3, width_t=2, top_k_ids=ids, keep=True)
        padded = hand_rollouts([2], [1], width_s=3, width_t=2, top_k_ids=ids, keep=True)
        expected = Rollouts(**{f.name: None if getattr(wide, f.name) is None else
                                torch.cat([getattr(padded, f.name), getattr(wide, f.name)])
                                for f in dataclasses.fields(Rollouts)})
        assert_same_rollouts(Rollouts.concatenate([narrow, wide], PAD), expected)


# ------------------------------------------------------------------------------------------------ sampling with models

VOCAB = 12


def two_models():
    return (tiny_t5(VOCAB, d_model=16, seed=3, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True),
            tiny_t5(VOCAB, d_model=24, seed=4, dtype=torch.float32, sharpen=0.1, eos_logit_zero=True))


PROMPTS = torch.tensor([[5, 7, 3, EOS]] * 16)


def test_sample_rollouts_unwraps_an_engine():
    """rollouts.py, _unwrap: ``getattr(model, "module", model)`` -> ``getattr(None, ...)`` and the attribute name
    changed (the engine itself asked for its encoder). Wrapped student and teacher sample the same rollouts as the
    bare models under the same seed."""
    student, teacher = two_models()
    settings = SamplingSettings(max_new_tokens=4, banned_ids=(PAD,))
    bare = sample_rollouts(student, teacher, PROMPTS, torch.ones_like(PROMPTS), settings, adapter_for(student),
                           torch.Generator().manual_seed(0))
    wrapped = sample_rollouts(Engine(student), Engine(teacher), PROMPTS, torch.ones_like(PROMPTS), settings,
                              adapter_for(student), torch.Generator().manual_seed(0))
    assert_same_rollouts(wrapped, bare)


# ------------------------------------------------------------------------------------------------ objectives/minillm.py

def test_objective_takes_its_settings_from_the_config():
    """objectives/minillm.py, MiniLLMObjective.__init__: the teacher path passed as None, ``top_k=`` and ``top_p=``
    dropped from the sampling settings, ``frozen_models = None``, ``teacher_topk = None``."""
    loaded = []
    config = minillm_config(teacher_model_path="teacher-dir", rollout_max_new_tokens=5, teacher_mixed_alpha=0.2,
                            temperature=0.7, top_k=4, top_p=0.8, teacher_topk=3)
    objective = MiniLLMObjective(config, SimpleNamespace(pad_token_id=PAD, banned_ids=(PAD,)),
                                 lambda path: loaded.append(path) or "T")
    assert loaded == ["teacher-dir"] and objective.teacher == "T" and objective.frozen_models == ["T"]
    assert objective.sampling == SamplingSettings(max_new_tokens=5, alpha=0.2, temperature=0.7, top_k=4, top_p=0.8,
                                                  banned_ids=(PAD,))
    assert objective.teacher_topk == 3


def collect_setup(**config):
    student, teacher = two_models()
    objective = MiniLLMObjective(minillm_config(rollout_max_new_tokens=6, **config), adapter_for(student),
                                 lambda path: teacher)
    return student, teacher, objective, [{"input_ids": PROMPTS, "attention_mask": torch.ones_like(PROMPTS)}]


def add_a_second_process(stats):
    """The all-reduce of a second process whose valid advantages are 40 tokens of value 3: (120, 360, 40)."""
    stats += torch.tensor([120.0, 360.0, 40.0], dtype=torch.float64)


def test_collect_samples_as_configured_and_sums_its_stats():
    """objectives/minillm.py, MiniLLMObjective.collect: the EOS id, ``teacher_topk`` and ``all_reduce_sum`` passed as
    None or dropped; the stats' keys renamed, ``rewards.sum(-1)`` -> ``sum(None)``, ``/ lengths`` -> ``* lengths``
    (reward and k3). MiniLLMObjective.advantages: ``all_reduce_sum`` passed as None or dropped. The store holds what
    sample_rollouts gives under the same seed (stopped at EOS, teacher kept as top-3 plus remainder), whitened
    advantages use the other process's statistics, and the stats are the sums over rollouts of the per-token mean
    reward and mean weighted k3, and the token and sequence counts, summed here position by position."""
    student, teacher, objective, batches = collect_setup(teacher_topk=3, whiten_advantages=True, gamma=0.9)
    store, stats = objective.collect(student, batches, torch.Generator().manual_seed(0), add_a_second_process)
    expected = sample_rollouts(student, teacher, PROMPTS, torch.ones_like(PROMPTS), objective.sampling,
                               adapter_for(student), torch.Generator().manual_seed(0), teacher_topk=3)
    assert_same_rollouts(store["rollouts"], expected)
    mask = expected.mask
    assert bool((expected.labels == EOS).any()) and expected.teacher_dist_ids.shape[-1] == 3
    assert not bool(mask.all())  # some rollouts stopped at EOS before the others
    rewards = token_rewards(expected.teacher_logprobs, expected.old_logprobs, mask)
    raw = returns(rewards, mask, gamma=0.9)
    torch.testing.assert_close(store["advantages"], masked_whiten(raw, mask, add_a_second_process), atol=1e-12, rtol=0)
    assert float((store["advantages"] - masked_whiten(raw, mask)).abs().max()) > 0.1
    reward_sum = k3_sum = 0.0
    for row in range(len(expected)):
        n = int(mask[row].sum())
        reward_sum += sum(float(rewards[row, t]) for t in range(n)) / n
        k3 = [math.exp(d) - 1 - d for d in (expected.teacher_logprobs[row, :n] - expected.old_logprobs[row, :n]).tolist()]
        weights = torch.exp(expected.old_logprobs[row, :n] - expected.mixed_logprobs[row, :n]).tolist()
        k3_sum += sum(w * k for w, k in zip(weights, k3)) / n
    assert set(stats) == {"reward", "rev_kl_k3", "mixed_length", "sequences", "tokens"}
    assert math.isclose(stats["reward"], reward_sum, rel_tol=1e-6) and abs(stats["reward"]) > 0.1
    assert math.isclose(stats["rev_kl_k3"], k3_sum, rel_tol=1e-6) and stats["rev_kl_k3"] > 0.01
    assert stats["mixed_length"] == stats["tokens"] == float(mask.sum()) and stats["sequences"] == 16.0


def test_collect_asks_all_done_whether_to_stop():
    """objectives/minillm.py, MiniLLMObjective.collect: ``all_done`` passed as None, dropped, or shifted into
    ``teacher_topk``'s place. An ``all_done`` that always says yes stops decoding after one token, although no
    rollout has ended."""
    student, _, objective, batches = collect_setup()
    asked = []
    store, _ = objective.collect(student, batches, torch.Generator().manual_seed(0),
                                 all_done=lambda done: asked.append(int(done.sum())) or True)
    assert len(asked) == 1 and store["rollouts"].labels.shape == (16, 1)
    assert asked[0] < 16  # decoding stopped although not every rollout had ended


def test_loss_adds_the_single_step_term_and_the_lm_term():
    """objectives/minillm.py, MiniLLMObjective.token_losses: padding's log-prob 0.0 -> 1.0. MiniLLMObjective.__call__:
    ``pg + single`` -> ``pg - single``; the ``"lm"`` key renamed; the LM term's inputs set to None, dropped or
    renamed; ``lm_sum * (units / lm_tokens)`` -> ``/`` and ``units * lm_tokens``; ``clamp(min=1)`` -> ``min=None``
    and ``min=2``; ``loss + lm_coef * lm`` -> ``-`` and ``lm_coef / lm``; metrics["lm"] set to None or renamed. At
    theta = theta_old the teacher-forced log-probs are the recorded ones, padding 0 included; the loss is pg + single
    + 0.5 lm, lm the gold batch's cross-entropy sum times the rollout tokens over the gold tokens (1, then 3)."""
    student, _, objective, batches = collect_setup(single_step_reg=True, lm_coef=0.5)
    store, _ = objective.collect(student, batches, torch.Generator().manual_seed(0))
    batch = objective.micro_batch(store, range(16))
    mask = batch["rollouts"].mask
    assert not bool(mask.all())
    with torch.no_grad():
        terms = objective.token_losses(student, batch)
    torch.testing.assert_close(terms["logprobs"], batch["rollouts"].old_logprobs, atol=1e-5, rtol=0)
    assert bool((terms["logprobs"][~mask] == 0).all())
    pg, single = terms["pg"].sum(), terms["single"].sum()
    assert float(single) > 1e-3
    for labels, tokens in (([[4, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX]], 1), ([[4, EOS], [6, IGNORE_INDEX]], 3)):
        gold = {"input_ids": PROMPTS[:2], "attention_mask": torch.ones_like(PROMPTS[:2]), "labels": torch.tensor(labels)}
        with torch.no_grad():
            output = objective(student, {**batch, "lm": gold})
            lm_sum, lm_tokens = token_cross_entropy(adapter_for(student).logits(student, gold), gold["labels"])
        assert int(lm_tokens) == tokens
        lm = lm_sum * int(mask.sum()) / tokens
        assert float(lm) > 1.0
        torch.testing.assert_close(output.loss_sum, pg + single + 0.5 * lm, atol=1e-5, rtol=1e-6)
        torch.testing.assert_close(output.metrics["lm"], lm, atol=1e-5, rtol=1e-6)
        assert set(output.metrics) == {"pg", "single", "clip_frac", "lm"}


class RecordingScope:
    """The engine's sampling scope, recording whether the sampling ran inside ``gathered()``."""

    def __init__(self):
        self.inside = False
        self.all_done = object()

    @contextlib.contextmanager
    def gathered(self):
        self.inside = True
        yield
        self.inside = False


def test_extra_evaluation_averages_every_process_s_sums_per_sequence(monkeypatch):
    """objectives/minillm/objective.py, MiniLLMObjective.extra_evaluation: the prompts of this rank (its rank and the
    process count passed on), batched by --chunk-size with the adapter's pad on the process's device, sampled inside
    the sampling scope with its stopping rule, in eval mode with a generator seeded by --seed, the model's mode given
    back; the sums added over processes (a second process's, here) and divided by the sequence count."""
    import minillm.objectives.minillm.objective as module

    config = minillm_config(seed=7, chunk_size=5)
    objective = MiniLLMObjective(config, SimpleNamespace(pad_token_id=PAD, banned_ids=(PAD,)), lambda path: "T")
    scope = RecordingScope()
    processes = Processes(rank=1, world_size=3, device=torch.device("cpu"), sampling=scope)
    model = torch.nn.Linear(2, 2)
    calls = {}
    monkeypatch.setattr(module, "evaluation_prompts", lambda *args: calls.setdefault("prompts", args) and ["p"])
    monkeypatch.setattr(module, "prompt_batches", lambda *args: calls.setdefault("batches", args) and ["b"])

    def other_process(values, device):
        calls["reduce_device"] = device
        return [v + other for v, other in zip(values, (1.0, 2.0, 2.0, 4.0))]  # rev_kl, reward, sequences, student_length

    monkeypatch.setattr(module, "all_reduce_sum", other_process)

    def metrics(model_, batches, generator, all_done):
        calls["metrics"] = (model_, batches, generator.initial_seed(), all_done, model_.training, scope.inside)
        return {"student_length": 11.0, "reward": -3.0, "rev_kl": 5.0, "sequences": 0.0}

    objective.evaluation_metrics = metrics
    figures = objective.extra_evaluation(model, config, processes)
    assert calls["prompts"] == (config, 1, 3)
    assert calls["batches"] == (["p"], 5, PAD, torch.device("cpu"))
    assert calls["metrics"] == (model, ["b"], 7, scope.all_done, False, True)
    assert model.training and not scope.inside and calls["reduce_device"] == torch.device("cpu")
    assert figures == {"rev_kl": 6.0 / 2.0, "reward": -1.0 / 2.0, "sequences": 2, "student_length": 15.0 / 2.0}
    model.eval()
    objective.extra_evaluation(model, config, processes)
    assert not model.training  # a model in eval mode stays in it


def test_extra_evaluation_of_no_sequence_divides_by_one(monkeypatch):
    """MiniLLMObjective.extra_evaluation: ``max(sequences, 1.0)`` (mutated to 2.0 or min): no sampled sequence anywhere
    gives the sums themselves, not a division by zero."""
    import minillm.objectives.minillm.objective as module

    config = minillm_config(seed=0, chunk_size=1)
    objective = MiniLLMObjective(config, SimpleNamespace(pad_token_id=PAD, banned_ids=(PAD,)), lambda path: "T")
    monkeypatch.setattr(module, "evaluation_prompts", lambda *args: [])
    monkeypatch.setattr(module, "prompt_batches", lambda *args: [])
    objective.evaluation_metrics = lambda *args: {"rev_kl": 0.5, "reward": 0.25, "student_length": 0.0,
                                                  "sequences": 0.0}
    figures = objective.extra_evaluation(torch.nn.Linear(1, 1), config,
                                         Processes(0, 1, torch.device("cpu"), RecordingScope()))
    assert figures == {"rev_kl": 0.5, "reward": 0.25, "student_length": 0.0, "sequences": 0}


def test_extra_summary_gives_the_reverse_kl_and_the_length():
    """MiniLLMObjective.extra_summary: the clause of the evaluation line (names, separators, digits)."""
    objective = MiniLLMObjective(minillm_config(), SimpleNamespace(pad_token_id=PAD, banned_ids=(PAD,)),
                                 lambda path: "T")
    assert objective.extra_summary({"rev_kl": 0.12345, "student_length": 4.5}) == "rev_kl 0.123, len 4.50"


def test_batch_source_is_the_rollout_batch_source_of_this_objective(monkeypatch):
    """MiniLLMObjective.batch_source: the objective, model, config and processes handed on, its result returned."""
    import minillm.objectives.minillm.objective as module

    objective = MiniLLMObjective(minillm_config(), SimpleNamespace(pad_token_id=PAD, banned_ids=(PAD,)),
                                 lambda path: "T")
    monkeypatch.setattr(module, "rollout_batches", lambda *args: ("source", args))
    assert objective.batch_source("model", "config", "processes") == ("source", (objective, "model", "config",
                                                                                  "processes"))


def test_collect_passes_the_collect_kill_point_once_per_sampling_batch(monkeypatch):
    """MiniLLMObjective.collect: the fault hook's point is named ``collect`` (tests/faults/test_kill_resume.py kills
    the process there), reached after each sampling batch."""
    import minillm.objectives.minillm.objective as module

    reached = []
    monkeypatch.setattr(module, "kill_point", reached.append)
    student, _, objective, batches = collect_setup()
    objective.collect(student, batches + batches, torch.Generator().manual_seed(0))
    assert reached == ["collect", "collect"]

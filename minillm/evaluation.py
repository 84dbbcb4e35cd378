"""Evaluation of a model on processed data, per round and over their union: ANLI (r1, r2, r3, ``all``), whose
records carry three answer options, and open-ended data such as Dolly (round ``dolly``), whose records carry none
(``options == []``). Every record of one evaluation must be of one kind (three options, or none).

What is computed for each example (prompt x, gold target y; with options, o_0, o_1, o_2 for labels 0/1/2):

- **rank classification** (records with options only): ``s_k = sum_t log q(o_k,t | o_k,<t, x)`` over the option's
  tokens including EOS, in fp32, under the distribution the decoder samples from: the adapter's banned ids get a
  -inf logit before the log-softmax (:func:`minillm.models.base.ban`; for T5 the pad id, which is the decoder start
  and the padding, never an output), and generation never emits them either (the adapter's ``generate``). The
  options are tokenised as training targets are for the data's model type (``meta.json``'s ``model_type``,
  :func:`minillm.data.process.encode_targets`): seq2seq, each option encoded with the tokenizer's special tokens
  (T5: ending in EOS); causal, the ids that follow the prompt's in the encoding of prompt + option (no BOS), then
  EOS, so that ``s_k`` is the log-probability of the continuation prompt -> option -> EOS. The predicted label is
  ``argmax_k s_k`` (the first on a tie). For ``label_reason`` targets (answer, then a rationale) the options are
  still the bare answers, so the answer alone is scored.
- **the option distribution** (records with options only): the three scores normalised over the answer set,
  ``q(o_k | x) = exp(s_k) / sum_j exp(s_j)``; with a ``teacher``, its own ``p(o_k | x)`` likewise, from the
  teacher's own encoder and decoder on the same batch (``teacher_option_scores``).
- **loss**: ``-sum_t log q(y_t | y_<t, x)`` and the token count of y; a round's loss is the sum of those sums over
  the sum of the counts (mean token cross-entropy). This is the training cross-entropy (pad not banned), so that it
  compares with the training loss. (MiniLLM's evaluation averages per-example mean token losses instead.)
- **generation** (:class:`Decoding`: greedy, or sampled once per seed; ``max_new_tokens`` new tokens at most),
  decoded up to EOS without special tokens and stripped of surrounding whitespace, and
  - its label (records with options): the option that the normalised text equals or starts with, followed by a
    non-alphanumeric character (lowercase, whitespace collapsed, punctuation and whitespace stripped at both ends;
    the longest matching option wins, so "No way" can beat "No"); ``None`` when no option matches, which counts as
    wrong and is reported;
  - Rouge-L F-measure x 100 against the target text, MiniLLM's figure (its ``rouge_metric.compute_metrics`` with one
    reference): ``rouge_score``'s rougeL on the raw texts, whose own normalisation lowercases, turns every character
    outside [a-z0-9] into a space, splits on whitespace and Porter-stems tokens longer than 3 characters; with
    LCS the longest common token subsequence, P = LCS / |prediction|, R = LCS / |target|, F = 2PR / (P + R);
  - exact match x 100 of the normalised texts (lowercase, punctuation removed, whitespace collapsed); with options
    also the articles a/an/the are removed (SQuAD's rule), without options they are kept (MiniLLM's
    ``normalize_answer``, "without removing the articles").

Per round and overall: n, loss, Rouge-L, exact match and, with options, accuracy of both predictions, unparsed
generations (count and a few examples), 3x3 confusion matrices (rows gold label, columns predicted label, ids 0/1/2)
and the share of each predicted label. Every rate is a percentage; a generation share counts unparsed texts in the
denominator. Without options the rank and option figures are None (not computed), never zero.

Several generation passes (``Decoding.seeds``, one pass each, ``torch.manual_seed(seed)`` before it): the loss and
the rank and option figures are computed once (they do not sample); Rouge-L, exact match and generation accuracy
are computed per pass (``per_seed``), and the summary's ``rougeL``, ``exact_match`` and ``accuracy_generate`` are
their means over the passes (MiniLLM reports the mean over its 5 seeds), with ``rougeL_std``, ``exact_match_std``
and ``accuracy_generate_std`` the sample standard deviations (n - 1 in the denominator; None with one pass). The
counts (unparsed, confusion matrix, label shares) pool the generations of every pass.

Option figures (records with options), means over the n examples x, exact functions of the option scores (no
sampling; see docs/metrics.md for what each one says):

- ``gold_option_nll`` = mean_x -log q(o_gold | x), nats;
- ``ece`` (expected calibration error, percent): the confidence ``c(x) = max_k q(o_k | x)`` falls in bin
  ``b = ceil(15 c) - 1`` of 15 equal-width bins (bin b holds (b/15, (b+1)/15], confidence 0 bin 0); with B_b the
  examples of bin b and acc the rank prediction being gold, ``ECE = 100 sum_b |B_b|/n |acc(B_b) - mean c(B_b)|``;
- ``off_option_mass`` = 100 mean_x (1 - sum_k exp(s_k)): the options are distinct EOS-terminated sequences, hence
  disjoint events, so this is exactly the probability that the free-running decoder outputs none of them;
- ``option_rev_kl`` = mean_x sum_k q_k log(q_k / p_k) and ``option_fwd_kl`` = mean_x sum_k p_k log(p_k / q_k), nats,
  with q = q(. | x), p = p(. | x) over the three options; None without a teacher.

Batching: a process's examples are sorted by prompt length (longest first) and cut into batches of ``batch_size``,
so that little padding is computed. Per batch of prompts the adapter computes one prompt context
(``encode_prompts``; for an encoder-decoder the encoder runs once), scores all (prompt, option) rows in a single
pass with the context repeated three times (``context_logits(..., repeat=3)``), reuses it for one pass over the
gold targets, and hands it to ``generate``, so no prompt is encoded twice in the first generation pass; each further
pass (seed) encodes its batch again. A teacher adds one context and one pass over the option rows per batch (none
over the gold targets, no generation), from its own context: a teacher never reads the student's encoder states.

Distributed: under ``torch.distributed`` each rank takes the strided part ``rank::world_size`` of the examples,
padded by repeating one of its examples to ``ceil(n / world_size)`` so that every rank makes the same number of
encoder, decoder and ``generate`` calls (ZeRO-3 gathers parameters collectively on each call; ``generate`` also gets
``synced_gpus=True``; a teacher is called as often on every rank). The padding is dropped and the per-example
results are gathered to every rank with ``all_gather_object``, so every rank returns the full result, in the same
order as a single process would.
Pass the bare model (``engine.module`` under DeepSpeed; a teacher may be a DeepSpeed inference engine, whose
``.module`` is used), and write files from one rank only. A model too large for one device is sharded for inference
by :func:`minillm.engine.gathering.shard_for_inference` (ZeRO-3: each rank holds 1/P of every parameter;
``minillm.evaluate`` and ``minillm.generate_seqkd`` with ``--deepspeed-config``); the figures are the same as
unsharded.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import statistics
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from .console import progress
from .data.process import encode_prompts, encode_targets
from .data.seq2seq import Seq2SeqExamples, collate, pad_right, read_meta
from .data.templates import LABEL_NAMES
from .divergences import kl_from_log_probs
from .models import IGNORE_INDEX, adapter_for, unwrap
from .models.base import ban

NUM_LABELS = len(LABEL_NAMES)
UNPARSED_EXAMPLES_KEPT = 5
ECE_BINS = 15
# k / 15 is no binary fraction: a confidence that equals it in exact arithmetic (1/3 for three equal scores) can
# come out a rounding error above it, and still belongs to the bin the boundary closes.
_BIN_EDGE_TOLERANCE = 1e-9
_STRIP_CHARS = string.punctuation + string.whitespace


# ------------------------------------------------------------------------------------------- text metrics

def parse_answer(text: str, options) -> int | None:
    """Index of the option that ``text`` states, or None (see the module docstring for the rule)."""
    normalised = _normalise_for_parsing(text)
    best, best_length = None, 0
    for index, option in enumerate(options):
        wanted = _normalise_for_parsing(option)
        if not wanted or not normalised.startswith(wanted):
            continue
        rest = normalised[len(wanted):]
        if rest and rest[0].isalnum():  # "Nothing" does not state "No"
            continue
        if len(wanted) > best_length:
            best, best_length = index, len(wanted)
    return best


def _normalise_for_parsing(text: str) -> str:
    return " ".join(text.lower().split()).strip(_STRIP_CHARS)


def normalize_answer(text: str, drop_articles: bool = True) -> str:
    """Lowercase, drop punctuation, collapse whitespace and, with ``drop_articles``, drop the articles a/an/the
    (SQuAD's normalisation; without them, MiniLLM's ``rouge_metric.normalize_answer``)."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    if drop_articles:
        text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, target: str, drop_articles: bool = True) -> float:
    """100 when both texts are equal after :func:`normalize_answer`, else 0."""
    return 100.0 * (normalize_answer(prediction, drop_articles) == normalize_answer(target, drop_articles))


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, target: str) -> float:
    """Rouge-L F-measure x 100 of ``prediction`` against ``target`` (``rouge_score``'s rougeL with the Porter
    stemmer on the raw texts, as MiniLLM computes it; its tokenisation is in the module docstring)."""
    return 100.0 * _rouge_scorer().score(target, prediction)["rougeL"].fmeasure


# ------------------------------------------------------------------------------------------- aggregation

def confusion_matrix(gold: list[int], predicted: list) -> list[list[int]]:
    """Counts ``[gold][predicted]`` over label ids; a None prediction (unparsed) is left out."""
    matrix = [[0] * NUM_LABELS for _ in range(NUM_LABELS)]
    for g, p in zip(gold, predicted):
        if p is not None:
            matrix[g][p] += 1
    return matrix


def label_shares(predicted: list) -> dict[str, float]:
    """Percentage of the predictions that are each label (None counts in the denominator only)."""
    return {name: 100.0 * sum(p == label for p in predicted) / len(predicted)
            for label, name in enumerate(LABEL_NAMES)}


def off_option_mass(scores: torch.Tensor) -> torch.Tensor:
    """``1 - sum_k exp(s_k)`` per row of option scores ``[n, 3]``: the probability of a complete output that is none
    of the options, clamped at 0 (the fp32 scores of a model that puts all its mass on the options can sum past 1 by
    a rounding error); expm1 keeps it exact also when the mass off the options is tiny."""
    return (-torch.expm1(scores.logsumexp(-1))).clamp(min=0.0)


def calibration_bin(confidence: float, bins: int = ECE_BINS) -> int:
    """The bin ``b`` whose interval (b/bins, (b+1)/bins] holds ``confidence`` (0 goes to bin 0)."""
    return min(bins - 1, max(0, math.ceil(confidence * bins - _BIN_EDGE_TOLERANCE) - 1))


def expected_calibration_error(confidences, correct, bins: int = ECE_BINS) -> float:
    """``100 sum_b |B_b|/n |acc(B_b) - mean conf(B_b)|`` over equal-width bins (:func:`calibration_bin`); each term
    is ``|sum of correct - sum of conf over B_b| / n``."""
    gaps = [0.0] * bins
    for confidence, is_correct in zip(confidences, correct):
        gaps[calibration_bin(confidence, bins)] += float(is_correct) - confidence
    return 100.0 * sum(abs(gap) for gap in gaps) / len(confidences)


def option_figures(predictions: list[dict]) -> dict:
    """``gold_option_nll``, ``ece``, ``off_option_mass`` and, when every prediction carries teacher option scores,
    ``option_rev_kl`` and ``option_fwd_kl`` (else None) of a non-empty list (module docstring). In float64: the
    option scores normalised over the answer set are ``log q(o_k | x) = s_k - log sum_j exp(s_j)``."""
    scores = torch.tensor([p["option_scores"] for p in predictions], dtype=torch.float64)
    student = scores.log_softmax(-1)
    gold = torch.tensor([p["gold_label"] for p in predictions])
    figures = {
        "gold_option_nll": float(-student.gather(-1, gold[:, None]).mean()),
        "ece": expected_calibration_error(student.max(-1).values.exp().tolist(),
                                          [p["rank_label"] == p["gold_label"] for p in predictions]),
        "off_option_mass": 100.0 * float(off_option_mass(scores).mean()),
        "option_rev_kl": None, "option_fwd_kl": None,
    }
    if all(p["teacher_option_scores"] is not None for p in predictions):
        teacher = torch.tensor([p["teacher_option_scores"] for p in predictions], dtype=torch.float64).log_softmax(-1)
        figures.update(option_rev_kl=float(kl_from_log_probs(student, teacher).mean()),
                       option_fwd_kl=float(kl_from_log_probs(teacher, student).mean()))
    return figures


def generation_passes(prediction: dict) -> list[dict]:
    """The generation passes of a prediction, each with ``seed``, ``generated``, ``generated_label``, ``rougeL`` and
    ``exact_match``: its ``generations``; a prediction without that field is its own single pass."""
    return prediction.get("generations") or [prediction]


def _mean_and_std(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1 in the denominator; None for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def summarize(predictions: list[dict]) -> dict:
    """The figures of one round (or of the union) from per-example predictions as :func:`evaluate` returns them.

    Generation figures are None when the predictions carry no generated text (``generate=False``), the rank and
    option figures when they carry no options (open-ended data such as Dolly), the option KLs when they carry no
    teacher option scores; every figure but ``n`` is None for an empty list. With several generation passes,
    ``rougeL``, ``exact_match`` and ``accuracy_generate`` are means over the passes, ``*_std`` their sample
    standard deviations and ``per_seed`` each seeded pass's figures (None for one unseeded pass); the counts pool
    every pass (module docstring).
    """
    n = len(predictions)
    summary = {"n": n, "loss": None, "accuracy_rank": None, "accuracy_generate": None, "unparsed": None,
               "unparsed_examples": None, "rougeL": None, "exact_match": None, "confusion_rank": None,
               "confusion_generate": None, "label_share_rank": None, "label_share_generate": None,
               "gold_option_nll": None, "ece": None, "off_option_mass": None, "option_rev_kl": None,
               "option_fwd_kl": None, "rougeL_std": None, "exact_match_std": None, "accuracy_generate_std": None,
               "per_seed": None}
    if n == 0:
        return summary
    tokens = sum(p["target_tokens"] for p in predictions)
    summary["loss"] = sum(p["target_nll"] for p in predictions) / tokens
    has_options = all(p["option_scores"] is not None for p in predictions)
    gold = [p["gold_label"] for p in predictions]
    if has_options:
        ranked = [p["rank_label"] for p in predictions]
        summary.update(
            accuracy_rank=100.0 * sum(g == r for g, r in zip(gold, ranked)) / n,
            confusion_rank=confusion_matrix(gold, ranked),
            label_share_rank=label_shares(ranked),
            **option_figures(predictions),
        )
    if any(p["generated"] is None for p in predictions):
        return summary
    passes = list(zip(*(generation_passes(p) for p in predictions)))  # passes[j][x]: pass j of example x
    per_pass = [{"seed": generations[0].get("seed"),
                 "rougeL": sum(g["rougeL"] for g in generations) / n,
                 "exact_match": sum(g["exact_match"] for g in generations) / n,
                 "accuracy_generate": (100.0 * sum(y == g["generated_label"] for y, g in zip(gold, generations)) / n
                                       if has_options else None)} for generations in passes]
    for key in ("rougeL", "exact_match") + (("accuracy_generate",) if has_options else ()):
        summary[key], summary[f"{key}_std"] = _mean_and_std([figures[key] for figures in per_pass])
    if per_pass[0]["seed"] is not None:
        summary["per_seed"] = per_pass
    if has_options:
        pooled_gold = gold * len(passes)
        pooled = [g for generations in passes for g in generations]
        generated = [g["generated_label"] for g in pooled]
        unparsed = [(p["uid"], g["generated"]) for p, g in zip(predictions * len(passes), pooled)
                    if g["generated_label"] is None]
        summary.update(
            unparsed=len(unparsed),
            unparsed_examples=[{"uid": uid, "generated": text} for uid, text in unparsed[:UNPARSED_EXAMPLES_KEPT]],
            confusion_generate=confusion_matrix(pooled_gold, generated),
            label_share_generate=label_shares(generated),
        )
    return summary


# ------------------------------------------------------------------------------------------- data

@dataclass
class EvalExample:
    """Prompt and gold target ids (both ending in EOS, as in the shards), the example's jsonl record, and the round
    folder it was read from (``all`` holds records of r1-r3, so the record's own round does not say)."""

    prompt_ids: np.ndarray
    target_ids: np.ndarray
    record: dict
    shard_round: str


def check_split(data_dir, split: str, rounds) -> None:
    """FileNotFoundError naming the first missing shard or record file of ``split`` in ``rounds``."""
    for round_name in rounds:
        directory = Path(data_dir) / "full" / round_name
        for path in (directory / f"{split}_0.idx", directory / f"{split}.jsonl"):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: missing; split {split!r} of round {round_name} was not processed")


def load_examples(data_dir, split: str, rounds, max_examples: int | None = None, max_prompt_length: int = 512,
                  max_target_length: int = 128) -> list[EvalExample]:
    """The first ``max_examples`` (None or 0: all) examples of each round, rounds in the order given.

    FileNotFoundError names the first missing shard or record file (checked for every round before any is read);
    ValueError names the first record with a number of options other than 3 or 0, or the first whose kind (with or
    without options) differs from the first record's.
    """
    check_split(data_dir, split, rounds)
    examples = []
    for round_name in rounds:
        data = Seq2SeqExamples(data_dir, round_name, split, max_prompt_length, max_target_length)
        records = data.records()
        if len(records) != len(data):
            raise ValueError(f"{data.records_path}: {len(records)} records but {len(data)} shard items")
        count = min(len(data), max_examples) if max_examples else len(data)
        for i in range(count):
            options = records[i]["options"]
            if len(options) not in (NUM_LABELS, 0):
                raise ValueError(f"{data.records_path}: uid {records[i]['uid']} has {len(options)} options, "
                                 f"expected {NUM_LABELS} (or none, for open-ended data)")
            if examples and bool(options) != bool(examples[0].record["options"]):
                raise ValueError(f"{data.records_path}: uid {records[i]['uid']} has {len(options)} options but uid "
                                 f"{examples[0].record['uid']} (round {examples[0].shard_round}) has "
                                 f"{len(examples[0].record['options'])}; evaluate rounds of one kind together")
            prompt, target = data[i]
            examples.append(EvalExample(prompt, target, records[i], round_name))
    return examples


def data_model_type(data_dir, model) -> str:
    """``seq2seq`` or ``causal``: how ``data_dir`` was tokenised (``meta.json``'s ``model_type``; folders that
    predate the field were all seq2seq). ValueError when that is not ``model``'s family."""
    model_type = read_meta(data_dir).get("model_type", "seq2seq")
    family = "seq2seq" if unwrap(model).config.is_encoder_decoder else "causal"
    if model_type != family:
        raise ValueError(f"{data_dir}: processed for {model_type} models but the model is {family}; process the "
                         f"data with the model's tokenizer (--model-type {family})")
    return model_type


# ------------------------------------------------------------------------------------------- decoding

DECODING_MODES = ("greedy", "sample")


@dataclass(frozen=True)
class Decoding:
    """How answers are generated.

    ``greedy``: the most likely token at every step. ``sample``: a token drawn from ``softmax(logits /
    temperature)`` restricted to the ``top_k`` most likely tokens (0: no restriction) and to the smallest set of
    most likely tokens whose probability reaches ``top_p`` (1: no restriction), renormalised. Either way no n-gram
    of ``no_repeat_ngram_size`` tokens (prompt included, as in Hugging Face ``generate``) occurs twice (0: no such
    rule). ``seeds``: one generation pass per seed, ``torch.manual_seed(seed)`` before it; empty, one unseeded
    pass (greedy only: a sampled pass must be reproducible). Greedy passes under several seeds would be identical,
    so they are refused. The defaults are today's greedy evaluation; MiniLLM's Dolly evaluation is ``sample`` with
    temperature 1, top_k 0, top_p 1, no_repeat_ngram_size 6 and seeds 10 20 30 40 50.
    """

    mode: str = "greedy"
    seeds: tuple[int, ...] = ()
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    no_repeat_ngram_size: int = 0

    def __post_init__(self):
        """ValueError naming the first setting that is out of range or does not fit the mode."""
        if self.mode not in DECODING_MODES:
            raise ValueError(f"decoding {self.mode!r}: choose {' or '.join(DECODING_MODES)}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {' '.join(map(str, self.seeds))}: a seed is repeated")
        if self.mode == "greedy" and len(self.seeds) > 1:
            raise ValueError(f"{len(self.seeds)} seeds with greedy decoding: every pass would give the same text; "
                             "sample, or give one seed")
        if self.mode == "sample" and not self.seeds:
            raise ValueError("sampling needs seeds: give --seeds (MiniLLM's: 10 20 30 40 50), so that its figures "
                             "can be reproduced")
        if not self.temperature > 0:
            raise ValueError(f"temperature {self.temperature}: must be > 0")
        if self.top_k < 0:
            raise ValueError(f"top_k {self.top_k}: must be >= 0 (0: no top-k cut)")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p {self.top_p}: must be in (0, 1] (1: no nucleus cut)")
        if self.no_repeat_ngram_size < 0:
            raise ValueError(f"no_repeat_ngram_size {self.no_repeat_ngram_size}: must be >= 0 (0: off)")

    def passes(self) -> tuple[int | None, ...]:
        """The seed of each generation pass (None: an unseeded greedy pass)."""
        return self.seeds or (None,)

    def generate_kwargs(self) -> dict:
        """The Hugging Face ``generate`` arguments (every one explicit, so a checkpoint's generation config cannot
        change the figures)."""
        kwargs = {"do_sample": self.mode == "sample", "num_beams": 1, "no_repeat_ngram_size": self.no_repeat_ngram_size}
        if self.mode == "sample":
            kwargs.update(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p)
        return kwargs

    def settings(self) -> dict:
        """The decoding as results.json records it (the sampling parameters None for greedy decoding)."""
        sampled = self.mode == "sample"
        return {"mode": self.mode, "seeds": list(self.seeds) or None,
                "temperature": self.temperature if sampled else None, "top_k": self.top_k if sampled else None,
                "top_p": self.top_p if sampled else None, "no_repeat_ngram_size": self.no_repeat_ngram_size}


# ------------------------------------------------------------------------------------------- model passes

def option_labels(tokenizer, examples: list[EvalExample], model_type: str) -> torch.Tensor:
    """The options of every example as label rows ``[3 B, T]`` (right-padded with -100, row ``3 b + k`` option k of
    example b), tokenised as training targets are for ``model_type``
    (:func:`minillm.data.process.encode_targets`; module docstring)."""
    prompts = [e.record["prompt"] for e in examples for _ in range(NUM_LABELS)]
    options = [option for e in examples for option in e.record["options"]]
    prompt_ids = encode_prompts(tokenizer, prompts, model_type) if model_type == "causal" else [None] * len(prompts)
    ids, _ = encode_targets(tokenizer, prompts, prompt_ids, options, model_type)
    return pad_right(ids, IGNORE_INDEX)


def _option_scores(model, adapter, context, labels: torch.Tensor) -> list[list[float]]:
    """``s_k = sum_t log q(o_k,t | o_k,<t, x)`` (EOS included, the adapter's banned ids at -inf) of the three options
    of each prompt, in one pass over the option ``labels`` (three rows per prompt) from the prompts' context."""
    logits = adapter.context_logits(model, context, labels, repeat=NUM_LABELS)
    logprobs = adapter.token_logprobs(ban(logits, adapter.banned_ids), labels)
    return logprobs.sum(-1).view(-1, NUM_LABELS).tolist()


def _prompt_batch(adapter, examples: list[EvalExample], device) -> dict:
    batch = collate([(e.prompt_ids, e.target_ids) for e in examples], adapter.pad_token_id)
    return {k: v.to(device) for k, v in batch.items()}


def _score_batch(model, teacher, tokenizer, adapter, model_type: str, examples: list[EvalExample], batch: dict,
                 context) -> list[dict]:
    """The predictions of a batch without their generations: gold loss and, with options, the option scores (the
    teacher's too) and the rank label."""
    gold_logprobs = adapter.token_logprobs(adapter.context_logits(model, context, batch["labels"]), batch["labels"])
    target_nll = (-gold_logprobs.sum(-1)).tolist()
    target_tokens = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()

    option_scores = teacher_scores = [None] * len(examples)
    if examples[0].record["options"]:
        labels = option_labels(tokenizer, examples, model_type).to(batch["labels"].device)
        option_scores = _option_scores(model, adapter, context, labels)
        if teacher is not None:  # its own context: a teacher never reads the student's encoder states
            teacher_context = adapter.encode_prompts(teacher, batch["input_ids"], batch["attention_mask"])
            teacher_scores = _option_scores(teacher, adapter, teacher_context, labels)

    return [{"uid": example.record["uid"], "round": example.record["round"], "gold_label": example.record["label"],
             "rank_label": None if scores is None else max(range(NUM_LABELS), key=scores.__getitem__),
             "option_scores": scores, "teacher_option_scores": teacher_option_scores,
             "generated": None, "generated_label": None, "rougeL": None, "exact_match": None, "generations": [],
             "target": example.record["target"], "target_nll": nll, "target_tokens": count}
            for example, scores, teacher_option_scores, nll, count in zip(examples, option_scores, teacher_scores,
                                                                          target_nll, target_tokens)]


def _generate_batch(model, tokenizer, adapter, examples: list[EvalExample], batch: dict, context, seed: int | None,
                    max_new_tokens: int, decoding: Decoding, synced_gpus: bool) -> list[dict]:
    """One generation pass over a batch: per example its seed, text, label (None without options), Rouge-L and
    exact match."""
    generated = adapter.generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens, context=context,
                                 synced_gpus=synced_gpus, **decoding.generate_kwargs())
    texts = [text.strip() for text in tokenizer.batch_decode(
        [row[row != IGNORE_INDEX].tolist() for row in generated.cpu()], skip_special_tokens=True)]
    passes = []
    for example, text in zip(examples, texts):
        options, target = example.record["options"], example.record["target"]
        passes.append({"seed": seed, "generated": text, "generated_label": parse_answer(text, options),
                       "rougeL": rouge_l(text, target), "exact_match": exact_match(text, target, bool(options))})
    return passes


# ------------------------------------------------------------------------------------------- distribution

def rank_part(n: int, rank: int, world_size: int) -> list[tuple[int, bool]]:
    """``(example index, is_padding)`` for one rank: the indices ``rank::world_size``, padded with repeats of its
    first index (of index 0 when it has none) to ``ceil(n / world_size)`` so that all ranks do equal work."""
    own = list(range(rank, n, world_size))
    filler = own[0] if own else 0
    return [(i, False) for i in own] + [(filler, True)] * (math.ceil(n / world_size) - len(own))


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


# ------------------------------------------------------------------------------------------- sharded inference

def read_inference_config(path) -> dict:
    """What inference takes from a DeepSpeed JSON (``--deepspeed-config``; training's files in configs/deepspeed/
    serve): ``{"path", "zero_stage", "precision" (fp32, bf16 or fp16), "zero_optimization"}``. A ValueError naming
    ``--deepspeed-config`` for a file that is not a readable JSON object."""
    from .engine.deepspeed_config import precision, zero_stage

    try:
        config = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--deepspeed-config {path}: cannot read a JSON object ({err})") from None
    if not isinstance(config, dict) or not isinstance(config.get("zero_optimization", {}), dict):
        raise ValueError(f"--deepspeed-config {path}: not a DeepSpeed JSON object")
    return {"path": str(path), "zero_stage": zero_stage(config), "precision": precision(config),
            "zero_optimization": dict(config.get("zero_optimization", {}))}


# ------------------------------------------------------------------------------------------- entry points

PROGRESS_DELAY = 5.0  # seconds an evaluation runs before it reports progress (a line every fifth of its batches)

def evaluate(model, tokenizer, data_dir, split: str = "dev", rounds=("r1", "r2", "r3"), batch_size: int = 32,
             max_new_tokens: int = 16, generate: bool = True, max_examples: int | None = None, adapter=None,
             max_prompt_length: int = 512, max_target_length: int = 128, teacher=None,
             decoding: Decoding = Decoding()) -> dict:
    """Evaluate ``model`` on ``split`` of each round in ``rounds``; see the module docstring for the figures.

    Returns ``{"rounds": {round: summary}, "overall": summary, "predictions": [...], "settings": {...}}`` with
    summaries as :func:`summarize` gives them and one prediction per example, in data order: uid, round,
    gold_label (None without options), rank_label, option_scores (3 log-likelihoods), teacher_option_scores (the
    teacher's; all three None without options or teacher), generations (one entry per generation pass: seed,
    generated, generated_label, rougeL, exact_match; empty without generation), generated (text), generated_label
    (label id or None), rougeL and exact_match (the first pass's, None without generation), target (text),
    target_nll and target_tokens.

    ``decoding``: how generation decodes and with which seeds (:class:`Decoding`; default one greedy pass, which
    leaves the global random state alone; seeded passes run inside ``torch.random.fork_rng``, so the caller's
    random state is unchanged after them too). ``teacher``: a model sharing the student's tokenizer (scored through
    the student's adapter), for the option KLs; a DeepSpeed engine is unwrapped to its ``.module``.
    ``max_examples`` (None or 0: all) caps each round. A missing round or split raises FileNotFoundError naming the
    path, data processed for the other model family a ValueError, before the model is run. The models are put in
    eval mode and returned to their previous modes. Process 0 reports progress over the batches (after
    :data:`PROGRESS_DELAY` seconds: a quick evaluation prints nothing).
    """
    rounds = tuple(rounds)
    examples = load_examples(data_dir, split, rounds, max_examples, max_prompt_length, max_target_length)
    model_type = data_model_type(data_dir, model)
    adapter = adapter or adapter_for(model, tokenizer)
    device = next(model.parameters()).device
    rank, world_size = _world()
    if teacher is not None:  # the bare model, whose mode can be set; ZeRO-3 still gathers through its hooks
        teacher = unwrap(teacher)
    models = [model] if teacher is None else [model, teacher]

    part = rank_part(len(examples), rank, world_size)
    part.sort(key=lambda item: -len(examples[item[0]].prompt_ids))  # similar lengths share a batch: less padding
    chunks = [part[start:start + batch_size] for start in range(0, len(part), batch_size)]
    scored: list[dict] = []  # aligned with part
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    seeds = decoding.passes() if generate else (None,)
    total = len(chunks) * len(seeds)
    report = progress(total, f"eval {split}", enabled=rank == 0, unit="batches", every=max(1, total // 5),
                      delay=PROGRESS_DELAY, nested=True)
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for pass_index, seed in enumerate(seeds):
                if seed is not None:
                    torch.manual_seed(seed)
                position = 0
                for chunk in chunks:
                    chunk_examples = [examples[i] for i, _ in chunk]
                    batch = _prompt_batch(adapter, chunk_examples, device)
                    context = adapter.encode_prompts(model, batch["input_ids"], batch["attention_mask"])
                    if pass_index == 0:
                        scored.extend(_score_batch(model, teacher, tokenizer, adapter, model_type, chunk_examples,
                                                   batch, context))
                    if generate:
                        passes = _generate_batch(model, tokenizer, adapter, chunk_examples, batch, context, seed,
                                                 max_new_tokens, decoding, synced_gpus=world_size > 1)
                        for prediction, generation in zip(scored[position:position + len(chunk)], passes):
                            prediction["generations"].append(generation)
                    position += len(chunk)
                    report.update(1)
    finally:
        report.close()
        for m, was_training in zip(models, modes):
            m.train(was_training)
    for prediction in scored:
        if prediction["generations"]:
            first = prediction["generations"][0]
            prediction.update({key: first[key] for key in ("generated", "generated_label", "rougeL", "exact_match")})

    own = [(i, p) for (i, padding), p in zip(part, scored) if not padding]
    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, own)
        own = [item for part_scored in gathered for item in part_scored]
    predictions = [p for _, p in sorted(own, key=lambda item: item[0])]

    return {
        "rounds": {r: summarize([p for p, e in zip(predictions, examples) if e.shard_round == r]) for r in rounds},
        "overall": summarize(predictions),
        "predictions": predictions,
        "settings": {"data_dir": str(data_dir), "split": split, "rounds": list(rounds), "generate": generate,
                     "max_new_tokens": max_new_tokens, "max_prompt_length": max_prompt_length,
                     "max_examples": max_examples or None, "world_size": world_size, "teacher": teacher is not None,
                     "options": bool(examples) and bool(examples[0].record["options"]),
                     "decoding": decoding.settings() if generate else None},
    }


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def write_results(result: dict, out_dir) -> None:
    """``out_dir/predictions.jsonl`` (one example a line) and ``out_dir/results.json`` (everything else)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomically(out_dir / "predictions.jsonl",
                      "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in result["predictions"]))
    summary = {k: v for k, v in result.items() if k != "predictions"}
    _write_atomically(out_dir / "results.json", json.dumps(summary, indent=1, ensure_ascii=False) + "\n")


_TABLE_COLUMNS = (("n", "n", "{:d}"), ("loss", "loss", "{:.4f}"), ("acc(rank)", "accuracy_rank", "{:.2f}"),
                  ("acc(gen)", "accuracy_generate", "{:.2f}"), ("unparsed", "unparsed", "{:d}"),
                  ("rougeL", "rougeL", "{:.2f}"), ("sd(rougeL)", "rougeL_std", "{:.2f}"),
                  ("EM", "exact_match", "{:.2f}"), ("sd(EM)", "exact_match_std", "{:.2f}"), ("ECE", "ece", "{:.2f}"),
                  ("NLL(gold)", "gold_option_nll", "{:.4f}"), ("off-set%", "off_option_mass", "{:.2f}"))
_TEACHER_COLUMNS = (("rKL(opt)", "option_rev_kl", "{:.4f}"), ("fKL(opt)", "option_fwd_kl", "{:.4f}"))
_OPTION_KEYS = ("accuracy_rank", "accuracy_generate", "unparsed", "ece", "gold_option_nll", "off_option_mass")
_STD_KEYS = ("rougeL_std", "exact_match_std")


def format_table(result: dict) -> str:
    """One row per round plus ``overall``; ``-`` where a figure was not computed. The rank and option columns are
    left out for data without options, the standard deviations unless there were several generation passes, the
    option KL columns unless the evaluation had a teacher."""
    overall = result["overall"]
    left_out = set()
    if overall["n"] and overall["accuracy_rank"] is None:
        left_out.update(_OPTION_KEYS)
    if overall["rougeL_std"] is None:
        left_out.update(_STD_KEYS)
    columns = tuple(column for column in _TABLE_COLUMNS if column[1] not in left_out)
    if overall["option_rev_kl"] is not None:
        columns += _TEACHER_COLUMNS
    rows = [("round", *(title for title, _, _ in columns))]
    for name, summary in (*result["rounds"].items(), ("overall", overall)):
        rows.append((name, *("-" if summary[key] is None else fmt.format(summary[key]) for _, key, fmt in columns)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)

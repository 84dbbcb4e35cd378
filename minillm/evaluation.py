"""ANLI evaluation of a sequence-to-sequence model, per round (r1, r2, r3) and over their union.

What is computed for each example (prompt x, gold target y, answer options o_0, o_1, o_2 for labels 0/1/2):

- **rank classification**: ``s_k = sum_t log q(o_k,t | o_k,<t, x)`` over the option's tokens including EOS
  (the options are tokenised like the targets in the shards), in fp32, under the distribution the decoder samples
  from: the adapter's banned ids get a -inf logit before the log-softmax (:func:`minillm.models.base.ban`; for T5
  the pad id, which is the decoder start and the padding, never an output), and generation never emits them either
  (the adapter's ``generate``). The predicted label is ``argmax_k s_k`` (the first on a tie). For
  ``label_reason`` targets (answer, then a rationale) the options are still the bare answers, so the answer alone
  is scored.
- **the option distribution**: the three scores normalised over the answer set,
  ``q(o_k | x) = exp(s_k) / sum_j exp(s_j)``; with a ``teacher``, its own ``p(o_k | x)`` likewise, from the
  teacher's own encoder and decoder on the same batch (``teacher_option_scores``).
- **loss**: ``-sum_t log q(y_t | y_<t, x)`` and the token count of y; a round's loss is the sum of those sums over
  the sum of the counts (mean token cross-entropy). This is the training cross-entropy (pad not banned), so that it
  compares with the training loss.
- **greedy generation** (``max_new_tokens`` new tokens at most), decoded without special tokens, and
  - its label: the option that the normalised text equals or starts with, followed by a non-alphanumeric character
    (lowercase, whitespace collapsed, punctuation and whitespace stripped at both ends; the longest matching option
    wins, so "No way" can beat "No"); ``None`` when no option matches, which counts as wrong and is reported;
  - Rouge-L F-measure x 100 against the target text (``rouge_score``, Porter stemmer);
  - exact match x 100 after SQuAD normalisation (lowercase, punctuation and the articles a/an/the removed,
    whitespace collapsed).

Per round and overall: n, loss, accuracy of both predictions, unparsed generations (count and a few examples),
Rouge-L, exact match, 3x3 confusion matrices (rows gold label, columns predicted label, ids 0/1/2) and the share
of each predicted label. Every rate is a percentage; a generation share counts unparsed texts in the denominator.

Option figures, means over the n examples x, exact functions of the option scores (no sampling; see
docs/metrics.md for what each one says):

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
gold targets, and hands it to ``generate``, so no prompt is encoded twice. A teacher adds one context and one pass
over the option rows per batch (none over the gold targets, no generation), from its own context: a teacher never
reads the student's encoder states.

Distributed: under ``torch.distributed`` each rank takes the strided part ``rank::world_size`` of the examples,
padded by repeating one of its examples to ``ceil(n / world_size)`` so that every rank makes the same number of
encoder, decoder and ``generate`` calls (ZeRO-3 gathers parameters collectively on each call; ``generate`` also gets
``synced_gpus=True``; a teacher is called as often on every rank). The padding is dropped and the per-example
results are gathered to every rank with ``all_gather_object``, so every rank returns the full result, in the same
order as a single process would.
Pass the bare model (``engine.module`` under DeepSpeed; a teacher may be a DeepSpeed inference engine, whose
``.module`` is used), and write files from one rank only.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from .data.seq2seq import Seq2SeqExamples, collate, pad_right
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


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lowercase, drop punctuation and the articles a/an/the, collapse whitespace."""
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, target: str) -> float:
    """100 when both texts are equal after :func:`normalize_answer`, else 0."""
    return 100.0 * (normalize_answer(prediction) == normalize_answer(target))


@functools.cache
def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, target: str) -> float:
    """Rouge-L F-measure x 100 of ``prediction`` against ``target``."""
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


def summarize(predictions: list[dict]) -> dict:
    """The figures of one round (or of the union) from per-example predictions as :func:`evaluate` returns them.

    Generation figures are None when the predictions carry no generated text (``generate=False``), the option KLs
    when they carry no teacher option scores; every figure but ``n`` is None for an empty list.
    """
    n = len(predictions)
    summary = {"n": n, "loss": None, "accuracy_rank": None, "accuracy_generate": None, "unparsed": None,
               "unparsed_examples": None, "rougeL": None, "exact_match": None, "confusion_rank": None,
               "confusion_generate": None, "label_share_rank": None, "label_share_generate": None,
               "gold_option_nll": None, "ece": None, "off_option_mass": None, "option_rev_kl": None,
               "option_fwd_kl": None}
    if n == 0:
        return summary
    gold = [p["gold_label"] for p in predictions]
    ranked = [p["rank_label"] for p in predictions]
    tokens = sum(p["target_tokens"] for p in predictions)
    summary.update(
        loss=sum(p["target_nll"] for p in predictions) / tokens,
        accuracy_rank=100.0 * sum(g == r for g, r in zip(gold, ranked)) / n,
        confusion_rank=confusion_matrix(gold, ranked),
        label_share_rank=label_shares(ranked),
        **option_figures(predictions),
    )
    if any(p["generated"] is None for p in predictions):
        return summary
    generated = [p["generated_label"] for p in predictions]
    unparsed = [p for p in predictions if p["generated_label"] is None]
    summary.update(
        accuracy_generate=100.0 * sum(g == p for g, p in zip(gold, generated)) / n,
        unparsed=len(unparsed),
        unparsed_examples=[{"uid": p["uid"], "generated": p["generated"]}
                           for p in unparsed[:UNPARSED_EXAMPLES_KEPT]],
        rougeL=sum(p["rougeL"] for p in predictions) / n,
        exact_match=sum(p["exact_match"] for p in predictions) / n,
        confusion_generate=confusion_matrix(gold, generated),
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

    FileNotFoundError names the first missing shard or record file (checked for every round before any is read).
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
            if len(records[i]["options"]) != NUM_LABELS:
                raise ValueError(f"{data.records_path}: uid {records[i]['uid']} has "
                                 f"{len(records[i]['options'])} options, expected {NUM_LABELS}")
            prompt, target = data[i]
            examples.append(EvalExample(prompt, target, records[i], round_name))
    return examples


# ------------------------------------------------------------------------------------------- model passes


class _OptionTokens:
    """Token ids (with EOS) of each distinct option triple, tokenised once."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.cache: dict[tuple, list[list[int]]] = {}

    def __call__(self, options) -> list[list[int]]:
        key = tuple(options)
        if key not in self.cache:
            self.cache[key] = self.tokenizer(list(key), add_special_tokens=True)["input_ids"]
        return self.cache[key]


def _option_scores(model, adapter, context, option_labels: torch.Tensor) -> list[list[float]]:
    """``s_k = sum_t log q(o_k,t | o_k,<t, x)`` (EOS included, the adapter's banned ids at -inf) of the three options
    of each prompt, in one pass over ``option_labels`` (three rows per prompt) from the prompts' context."""
    logits = adapter.context_logits(model, context, option_labels, repeat=NUM_LABELS)
    logprobs = adapter.token_logprobs(ban(logits, adapter.banned_ids), option_labels)
    return logprobs.sum(-1).view(-1, NUM_LABELS).tolist()


def _score_batch(model, teacher, tokenizer, adapter, option_tokens: _OptionTokens, examples: list[EvalExample],
                 device, generate: bool, max_new_tokens: int, synced_gpus: bool) -> list[dict]:
    batch = collate([(e.prompt_ids, e.target_ids) for e in examples], adapter.pad_token_id)
    batch = {k: v.to(device) for k, v in batch.items()}
    mask = batch["attention_mask"]
    context = adapter.encode_prompts(model, batch["input_ids"], mask)

    gold_logprobs = adapter.token_logprobs(adapter.context_logits(model, context, batch["labels"]), batch["labels"])
    target_nll = (-gold_logprobs.sum(-1)).tolist()
    target_tokens = (batch["labels"] != IGNORE_INDEX).sum(-1).tolist()

    option_labels = pad_right([ids for e in examples for ids in option_tokens(e.record["options"])],
                              IGNORE_INDEX).to(device)
    option_scores = _option_scores(model, adapter, context, option_labels)
    teacher_scores = [None] * len(examples)
    if teacher is not None:  # its own context: a teacher never reads the student's encoder states
        teacher_scores = _option_scores(teacher, adapter, adapter.encode_prompts(teacher, batch["input_ids"], mask),
                                        option_labels)

    texts = [None] * len(examples)
    if generate:
        generated = adapter.generate(model, batch["input_ids"], mask, max_new_tokens, context=context,
                                     do_sample=False, num_beams=1, synced_gpus=synced_gpus)
        texts = [text.strip() for text in tokenizer.batch_decode(
            [row[row != IGNORE_INDEX].tolist() for row in generated.cpu()], skip_special_tokens=True)]

    predictions = []
    for example, scores, teacher_option_scores, nll, count, text in zip(examples, option_scores, teacher_scores,
                                                                         target_nll, target_tokens, texts):
        record = example.record
        prediction = {
            "uid": record["uid"], "round": record["round"], "gold_label": record["label"],
            "rank_label": max(range(NUM_LABELS), key=scores.__getitem__), "option_scores": scores,
            "teacher_option_scores": teacher_option_scores,
            "generated": text, "generated_label": None, "rougeL": None, "exact_match": None,
            "target": record["target"], "target_nll": nll, "target_tokens": count,
        }
        if text is not None:
            prediction.update(generated_label=parse_answer(text, record["options"]),
                              rougeL=rouge_l(text, record["target"]), exact_match=exact_match(text, record["target"]))
        predictions.append(prediction)
    return predictions


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


# ------------------------------------------------------------------------------------------- entry points

def evaluate(model, tokenizer, data_dir, split: str = "dev", rounds=("r1", "r2", "r3"), batch_size: int = 32,
             max_new_tokens: int = 16, generate: bool = True, max_examples: int | None = None, adapter=None,
             max_prompt_length: int = 512, max_target_length: int = 128, teacher=None) -> dict:
    """Evaluate ``model`` on ``split`` of each round in ``rounds``; see the module docstring for the figures.

    Returns ``{"rounds": {round: summary}, "overall": summary, "predictions": [...], "settings": {...}}`` with
    summaries as :func:`summarize` gives them and one prediction per example, in data order: uid, round,
    gold_label, rank_label, option_scores (3 log-likelihoods), teacher_option_scores (the teacher's, or None),
    generated (text or None), generated_label (label id or None), rougeL, exact_match (None without generation),
    target (text), target_nll and target_tokens.

    ``teacher``: a model sharing the student's tokenizer (scored through the student's adapter), for the option
    KLs; a DeepSpeed engine is unwrapped to its ``.module``. ``max_examples`` (None or 0: all) caps each round. A
    missing round or split raises FileNotFoundError naming the path, before the model is touched. The models are put
    in eval mode and returned to their previous modes.
    """
    rounds = tuple(rounds)
    examples = load_examples(data_dir, split, rounds, max_examples, max_prompt_length, max_target_length)
    adapter = adapter or adapter_for(model, tokenizer)
    device = next(model.parameters()).device
    rank, world_size = _world()
    if teacher is not None:  # the bare model, whose mode can be set; ZeRO-3 still gathers through its hooks
        teacher = unwrap(teacher)
    models = [model] if teacher is None else [model, teacher]

    part = rank_part(len(examples), rank, world_size)
    part.sort(key=lambda item: -len(examples[item[0]].prompt_ids))  # similar lengths share a batch: less padding
    option_tokens = _OptionTokens(tokenizer)
    scored: list[tuple[int, dict]] = []
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(part), batch_size):
                chunk = part[start:start + batch_size]
                predictions = _score_batch(model, teacher, tokenizer, adapter, option_tokens,
                                           [examples[i] for i, _ in chunk], device, generate, max_new_tokens,
                                           synced_gpus=world_size > 1)
                scored.extend((i, p) for (i, padding), p in zip(chunk, predictions) if not padding)
    finally:
        for m, was_training in zip(models, modes):
            m.train(was_training)

    if world_size > 1:
        gathered = [None] * world_size
        dist.all_gather_object(gathered, scored)
        scored = [item for part_scored in gathered for item in part_scored]
    predictions = [p for _, p in sorted(scored, key=lambda item: item[0])]

    return {
        "rounds": {r: summarize([p for p, e in zip(predictions, examples) if e.shard_round == r]) for r in rounds},
        "overall": summarize(predictions),
        "predictions": predictions,
        "settings": {"data_dir": str(data_dir), "split": split, "rounds": list(rounds), "generate": generate,
                     "max_new_tokens": max_new_tokens, "max_examples": max_examples or None,
                     "world_size": world_size, "teacher": teacher is not None},
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
                  ("rougeL", "rougeL", "{:.2f}"), ("EM", "exact_match", "{:.2f}"), ("ECE", "ece", "{:.2f}"),
                  ("NLL(gold)", "gold_option_nll", "{:.4f}"), ("off-set%", "off_option_mass", "{:.2f}"))
_TEACHER_COLUMNS = (("rKL(opt)", "option_rev_kl", "{:.4f}"), ("fKL(opt)", "option_fwd_kl", "{:.4f}"))


def format_table(result: dict) -> str:
    """One row per round plus ``overall``; ``-`` where a figure was not computed; the option KL columns only when
    the evaluation had a teacher."""
    columns = _TABLE_COLUMNS
    if result["overall"]["option_rev_kl"] is not None:
        columns += _TEACHER_COLUMNS
    rows = [("round", *(title for title, _, _ in columns))]
    for name, summary in (*result["rounds"].items(), ("overall", result["overall"])):
        rows.append((name, *("-" if summary[key] is None else fmt.format(summary[key]) for _, key, fmt in columns)))
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) if c == 0 else cell.rjust(w) for c, (cell, w) in
                               enumerate(zip(row, widths))) for row in rows)

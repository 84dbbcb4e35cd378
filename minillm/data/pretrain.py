"""A plain-text corpus (MiniLLM's D_PT, for the LM term) -> fixed-length chunks -> (prompt, target) shards.

Input: a folder of ``.txt`` files (one document per line, MiniLLM's ``data.txt`` format, in which the marker
``<@x(x!>`` stands for a line break inside a document; the line's own terminator is not part of the document) and
``.jsonl`` files (one document per line in a ``text`` field), read recursively in sorted path order; or a Hugging
Face dataset streamed through ``datasets`` (``openwebtext``, as MiniLLM's ``get_openwebtext.py``). Blank documents
are skipped.

Chunks, MiniLLM's recipe: each document is encoded without special tokens and followed by EOS; the documents'
ids, joined in order, are cut into chunks of exactly ``max_length`` tokens (MiniLLM's scripts: 512) and the
incomplete tail is dropped. The first ``dev_num`` chunks (MiniLLM: 10,000) are ``dev`` (MiniLLM's ``valid``), the
next ``train_num`` (MiniLLM: 10M for GPT-2 on OpenWebText, 20M for OPT and LLaMA on the RoBERTa corpus; 0: all)
``train``; reading stops once ``train`` is full.

Items, by model type (:func:`~minillm.data.process.resolve_model_type`):

- ``causal``: prompt = the chunk's first token, target = the other ``max_length - 1``. A decoder-only model is fed
  prompt + target and scored on the target positions, so the LM term covers every token but the first: exactly
  MiniLLM's ``LMPipeline`` (inputs ``tokens[:-1]``, labels ``tokens[1:]``), where the first token is never a label
  because nothing precedes it to predict it from. No EOS is appended: a chunk ends mid-document, and an EOS there
  would teach the model to stop mid-sentence; EOS stands where documents end.
- ``seq2seq`` (Flan-T5): T5's span corruption, the objective T5 was pre-trained with, since an encoder-decoder has
  no next-token objective over one stream (a prefix-LM split would train the decoder on text the encoder never
  sees whole, a task Flan-T5 never learnt). ``round(max_length * noise_density)`` tokens (density 0.15) in
  ``round(noise / mean_noise_span_length)`` spans (mean length 3) are noise; the chunk starts with kept tokens and
  ends with a noise span, span lengths forming uniformly random compositions, as in T5. The prompt is the chunk with
  span i replaced by the sentinel ``<extra_id_i>`` (from the tokenizer), then EOS; the target is each sentinel
  followed by the span it replaced, then EOS. A numpy generator seeded with ``seed`` draws the spans chunk by chunk,
  so a rerun on the same input writes the same bytes. Documents holding a sentinel token are refused (the
  corruption could not be undone).

Output (the shared format of :mod:`minillm.data.process`, round ``pretrain``): ``full/pretrain/{dev,train}_{k}
.bin/.idx`` (prompt, SEP, target), ``prompt/pretrain/...`` (prompts), ``{split}.jsonl`` beside both (per chunk:
uid, round, and ``source``/``offset``, the document where the chunk starts and the token offset in it), and
``meta.json`` (tokenizer keys, ``task: "pretrain"``, ``target``: ``lm`` or ``span_corruption``, the settings and the
counts). Shards hold ``shard_size`` chunks each, so memory stays bounded on a corpus of any size.
"""

from __future__ import annotations

import bisect
import json
import re
import time
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .anli import DataError, read_jsonl_objects
from .process import (TokenizedSplit, choose_dtype, encode_batch, fresh_staging, load_tokenizer, publish,
                      resolve_model_type, tokenizer_meta, write_pairs)

ROUND = "pretrain"
SPLITS = ("dev", "train")
LINE_BREAK_MARKER = "<@x(x!>"  # MiniLLM's get_openwebtext.py writes it for a line break inside a document
CORPUS_SUFFIXES = (".txt", ".jsonl")


def log(message: str) -> None:
    print(f"[process_data_pretrain] {message}", flush=True)


# ------------------------------------------------------------------------------------------------- documents

def iter_corpus_documents(corpus_dir: Path) -> Iterator[tuple[str, str]]:
    """``("path:line", document)`` for every non-blank document of the ``.txt`` and ``.jsonl`` files under
    ``corpus_dir`` (hidden files skipped), in sorted path order. A line that is not UTF-8, or a JSON line without a
    ``text`` string, raises :class:`DataError` naming the file and line."""
    if not corpus_dir.is_dir():
        raise DataError(f"{corpus_dir}: corpus folder not found; set CORPUS_DIR to a folder of .txt/.jsonl files")
    files = sorted(p for p in corpus_dir.rglob("*")
                   if p.is_file() and p.suffix in CORPUS_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DataError(f"{corpus_dir}: no .txt or .jsonl files")
    for path in files:
        if path.suffix == ".jsonl":
            for where, obj in read_jsonl_objects(path):
                text = obj.get("text")
                if not isinstance(text, str):
                    raise DataError(f"{where}: field text is {'missing' if 'text' not in obj else repr(text)}; "
                                    "every line needs a text string")
                if text.strip():
                    yield where, text
            continue
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise DataError(f"{path}:{line_no}: not UTF-8 text; save the file as UTF-8") from None
                text = line.rstrip("\r\n").replace(LINE_BREAK_MARKER, "\n")
                if text.strip():
                    yield f"{path}:{line_no}", text


def iter_hf_documents(name: str, split: str = "train") -> Iterator[tuple[str, str]]:
    """``("name:row", text)`` for the non-blank ``text`` of every row of a Hugging Face dataset, streamed (nothing
    is stored but the hub's cache). A failure (no ``datasets``, no network) raises :class:`DataError`."""
    try:
        import datasets

        for row_no, row in enumerate(datasets.load_dataset(name, split=split, streaming=True)):
            text = row.get("text")
            if isinstance(text, str) and text.strip():
                yield f"{name}:{row_no}", text
    except Exception as err:  # ImportError, hub and network errors: all one line
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise DataError(f"reading the Hugging Face dataset {name} failed ({type(err).__name__}: {message}); "
                        "pip install datasets and go online, or set CORPUS_DIR to a local corpus") from None


# ---------------------------------------------------------------------------------------------------- chunks

def iter_chunks(documents: Iterable[tuple[str, str]], tokenizer, max_length: int, stats: dict,
                batch_documents: int = 1000, refused_ids: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, str, int]]:
    """``(chunk, where, offset)``: consecutive ``max_length``-token chunks of the documents' ids, each document
    followed by EOS, with the document the chunk starts in and the token offset there. Counts the documents and
    tokens read into ``stats``. A document encoded with one of ``refused_ids`` raises :class:`DataError`."""
    eos = tokenizer.eos_token_id
    pending = np.empty(0, dtype=np.int64)  # ids not yet in a chunk
    doc_starts: list[int] = []  # where the documents overlapping `pending` start, relative to it (sorted)
    doc_wheres: list[str] = []
    documents = iter(documents)
    while batch := list(islice(documents, batch_documents)):
        ids = encode_batch(tokenizer, [text for _, text in batch], add_special_tokens=False)
        lengths = np.fromiter((len(x) + 1 for x in ids), dtype=np.int64, count=len(ids))
        starts = len(pending) + np.concatenate([[0], np.cumsum(lengths[:-1])])
        doc_starts.extend(starts.tolist())
        doc_wheres.extend(where for where, _ in batch)
        new = np.fromiter(chain.from_iterable(x + [eos] for x in ids), dtype=np.int64, count=int(lengths.sum()))
        if refused_ids is not None and (hits := np.flatnonzero(np.isin(new, refused_ids))).size:
            where = batch[int(np.searchsorted(starts - len(pending), hits[0], side="right")) - 1][0]
            token = tokenizer.convert_ids_to_tokens(int(new[hits[0]]))
            raise DataError(f"{where}: the document holds {token}, a token span corruption uses as a sentinel; "
                            "remove it from the text")
        pending = np.concatenate([pending, new])
        stats["documents"] += len(batch)
        stats["tokens"] += len(new)
        whole = len(pending) // max_length
        for start in range(0, whole * max_length, max_length):
            d = bisect.bisect_right(doc_starts, start) - 1
            yield pending[start:start + max_length], doc_wheres[d], start - doc_starts[d]
        consumed = whole * max_length
        pending = pending[consumed:]
        d = bisect.bisect_right(doc_starts, consumed) - 1
        doc_starts = [s - consumed for s in doc_starts[d:]]
        doc_wheres = doc_wheres[d:]


# ---------------------------------------------------------------------------------------- span corruption

def span_counts(length: int, noise_density: float, mean_noise_span_length: float) -> tuple[int, int]:
    """(noise tokens, noise spans) in a chunk of ``length`` tokens, as T5 computes them; at least one of each and
    at least one kept token per span."""
    noise = min(max(int(round(length * noise_density)), 1), length - 1)
    spans = min(max(int(round(noise / mean_noise_span_length)), 1), length - noise)
    return noise, spans


def _random_composition(total: int, parts: int, rng: np.random.Generator) -> np.ndarray:
    """``parts`` positive integers summing to ``total``, uniformly over all such sequences."""
    cuts = np.sort(rng.choice(total - 1, parts - 1, replace=False) + 1)
    return np.diff(np.concatenate([[0], cuts, [total]]))


def span_corrupt(chunk: np.ndarray, rng: np.random.Generator, sentinel_ids: list[int], eos: int,
                 noise_density: float, mean_noise_span_length: float) -> tuple[np.ndarray, np.ndarray]:
    """(prompt, target) of T5's span corruption of ``chunk``: kept and noise spans alternate, kept first; the
    prompt has ``sentinel_ids[i]`` in place of noise span i and ends in EOS; the target is each sentinel followed by
    its span, then EOS."""
    noise, spans = span_counts(len(chunk), noise_density, mean_noise_span_length)
    kept_lengths = _random_composition(len(chunk) - noise, spans, rng)
    noise_lengths = _random_composition(noise, spans, rng)
    prompt, target, position = [], [], 0
    for i, (kept, noisy) in enumerate(zip(kept_lengths, noise_lengths)):
        prompt += [chunk[position:position + kept], [sentinel_ids[i]]]
        position += kept
        target += [[sentinel_ids[i]], chunk[position:position + noisy]]
        position += noisy
    return np.concatenate(prompt + [[eos]]), np.concatenate(target + [[eos]])


def sentinel_ids_of(tokenizer, count: int) -> tuple[list[int], np.ndarray]:
    """The ids of ``<extra_id_0>`` ... ``<extra_id_{count-1}>``, and of every ``<extra_id_k>`` the tokenizer has
    (text holding any of them is refused); :class:`DataError` when the tokenizer lacks one of the first ``count``."""
    vocab = tokenizer.get_vocab()
    missing = [f"<extra_id_{i}>" for i in range(count) if f"<extra_id_{i}>" not in vocab]
    if missing:
        raise DataError(f"the tokenizer has no {missing[0]}: span corruption needs {count} sentinel tokens "
                        "<extra_id_k> (T5 tokenizers have 100); lower MAX_LENGTH or use a T5 tokenizer")
    every = np.array([i for token, i in vocab.items() if re.fullmatch(r"<extra_id_\d+>", token)], dtype=np.int64)
    return [vocab[f"<extra_id_{i}>"] for i in range(count)], every


# ------------------------------------------------------------------------------------------------- writing

class SplitWriter:
    """One split's items, written as numbered shards of ``shard_size`` items to ``staging/{full,prompt}/pretrain``
    with ``{split}.jsonl`` records beside them."""

    def __init__(self, staging: Path, split: str, sep: int, dtype: np.dtype, shard_size: int):
        self.staging, self.split, self.sep, self.dtype, self.shard_size = staging, split, sep, dtype, shard_size
        self.prompts: list[np.ndarray] = []
        self.targets: list[np.ndarray] = []
        self.count = self.shards = self.max_prompt = self.max_target = 0
        (staging / "full" / ROUND).mkdir(parents=True, exist_ok=True)
        self.records = open(staging / "full" / ROUND / f"{split}.jsonl", "w", encoding="utf-8")

    def add(self, prompt: np.ndarray, target: np.ndarray, where: str, offset: int) -> None:
        self.records.write(json.dumps({"uid": f"{ROUND}-{self.split}-{self.count}", "round": ROUND,
                                       "source": where, "offset": offset}, ensure_ascii=False) + "\n")
        self.prompts.append(prompt.astype(self.dtype))
        self.targets.append(target.astype(self.dtype))
        self.count += 1
        self.max_prompt, self.max_target = max(self.max_prompt, len(prompt)), max(self.max_target, len(target))
        if len(self.prompts) == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        sizes = [np.fromiter(map(len, parts), dtype=np.int32, count=len(parts))
                 for parts in (self.prompts, self.targets)]
        flats = [np.concatenate(parts) if parts else np.empty(0, self.dtype) for parts in (self.prompts, self.targets)]
        tokenized = TokenizedSplit([], flats[0], sizes[0], flats[1], sizes[1])
        self.shards += write_pairs(self.staging, ROUND, self.split, tokenized, self.sep, 0, self.shards)
        self.prompts, self.targets = [], []

    def close(self) -> dict:
        """Write what is left (an empty shard for an empty split) and the records; returns the split's summary."""
        if self.prompts or not self.shards:
            self._flush()
        self.records.close()
        (self.staging / "prompt" / ROUND / f"{self.split}.jsonl").write_bytes(
            (self.staging / "full" / ROUND / f"{self.split}.jsonl").read_bytes())
        return {"examples": self.count, "shards": self.shards, "max_prompt_tokens": self.max_prompt,
                "max_target_tokens": self.max_target}


def build_pretrain(out_dir: Path, tokenizer_name: str, documents: Iterable[tuple[str, str]], source: str,
                   max_length: int = 512, dev_num: int = 10000, train_num: int = 0, model_type: str = "auto",
                   noise_density: float = 0.15, mean_noise_span_length: float = 3.0, seed: int = 42,
                   dtype: str = "auto", shard_size: int = 100000, batch_documents: int = 1000) -> dict:
    """``documents`` (``(where, text)`` pairs, from :func:`iter_corpus_documents` or :func:`iter_hf_documents`)
    -> ``out_dir/{full,prompt}/pretrain/`` and ``meta.json`` (returned), built in a temporary folder and renamed
    into place. ``source`` names the corpus in ``meta.json``."""
    if max_length < 2:
        raise DataError(f"MAX_LENGTH={max_length}: a chunk needs at least 2 tokens")
    if dev_num < 0 or train_num < 0 or shard_size < 1:
        raise DataError(f"DEV_NUM={dev_num}, TRAIN_NUM={train_num}, SHARD_SIZE={shard_size}: need DEV_NUM >= 0, "
                        "TRAIN_NUM >= 0 (0: all) and SHARD_SIZE >= 1")
    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_name)
    np_dtype = choose_dtype(len(tokenizer), dtype)
    model_type = resolve_model_type(tokenizer, model_type)
    meta = {**tokenizer_meta(tokenizer_name, tokenizer, np_dtype, model_type), "task": "pretrain",
            "rounds": [ROUND], "template": None, "source": source, "max_length": max_length,
            "dev_num": dev_num, "train_num": train_num, "shard_size": shard_size}
    if model_type == "seq2seq":
        if not 0.0 < noise_density < 1.0 or mean_noise_span_length < 1.0:
            raise DataError(f"NOISE_DENSITY={noise_density}, MEAN_NOISE_SPAN_LENGTH={mean_noise_span_length}: need "
                            "a density in (0, 1) and a mean span length >= 1")
        sentinels, every_sentinel = sentinel_ids_of(
            tokenizer, span_counts(max_length, noise_density, mean_noise_span_length)[1])
        rng = np.random.default_rng(seed)
        meta.update(target="span_corruption", noise_density=noise_density,
                    mean_noise_span_length=mean_noise_span_length, seed=seed)
    else:
        meta.update(target="lm")
    log(f"tokenizer {tokenizer_name}: {len(tokenizer)} tokens; dtype {np_dtype.name}, {model_type} model, "
        f"{meta['target']} items of {max_length}-token chunks from {source}")

    staging = fresh_staging(out_dir)
    writers = {split: SplitWriter(staging, split, meta["separator"], np_dtype, shard_size) for split in SPLITS}
    stats = {"documents": 0, "tokens": 0}
    refused = every_sentinel if model_type == "seq2seq" else None
    for chunk, where, offset in iter_chunks(documents, tokenizer, max_length, stats, batch_documents, refused):
        writer = writers["dev" if writers["dev"].count < dev_num else "train"]
        if model_type == "causal":
            writer.add(chunk[:1], chunk[1:], where, offset)
        else:
            writer.add(*span_corrupt(chunk, rng, sentinels, tokenizer.eos_token_id, noise_density,
                                     mean_noise_span_length), where, offset)
        if train_num and writers["train"].count == train_num:
            break
        if writer.count % 100000 == 0:
            log(f"{writers['dev'].count} dev and {writers['train'].count} train chunks from {stats['documents']} "
                f"documents ({time.perf_counter() - started:.0f}s)")
    if writers["train"].count == 0:
        raise DataError(f"{source}: {writers['dev'].count} chunks of {max_length} tokens, none left for train after "
                        f"DEV_NUM={dev_num}; lower DEV_NUM or MAX_LENGTH, or add text")
    meta["splits"] = {f"{ROUND}/{split}": writer.close() for split, writer in writers.items()}
    meta.update(documents=stats["documents"], tokens_read=stats["tokens"])
    publish(out_dir, staging, meta)
    log(f"wrote {writers['dev'].count} dev and {writers['train'].count} train chunks from {stats['documents']} "
        f"documents to {out_dir} in {time.perf_counter() - started:.1f}s")
    return meta

"""ANLI processing: raw files -> normalised text -> memory-mapped token shards, and the shard writer that the
Dolly (:mod:`minillm.data.dolly`) and plain-text (:mod:`minillm.data.pretrain`) processors share.

Stage ``text`` reads the raw data (either layout, see :mod:`minillm.data.anli`), validates it, applies the prompt
template and target kind, and writes ``OUT_DIR/text/{round}/{split}.jsonl`` plus ``text/meta.json``.

Stage ``shards`` tokenises every prompt and target once, in batches with the fast tokenizer (which spreads a
batch over all cores), and writes for each round (``r1``, ``r2``, ``r3`` and ``all``, the three concatenated by
reusing their ids) and split:

- ``full/{round}/{split}_{k}.bin/.idx``: items ``prompt ids, SEP, target ids (ending in EOS)`` with ``SEP`` the
  dtype's maximum (65535 for uint16);
- ``prompt/{round}/{split}_{k}.bin/.idx``: prompt ids only, for on-policy sampling;
- ``{split}.jsonl`` beside both: uid, round, prompt, target, label, options (and whether the premise was cut);
- ``meta.json``: tokenizer, vocab_size, dtype, separator, eos/pad ids, task, model_type, rounds, template, target,
  and per round/split the example count and longest prompt and target.

How prompts and targets become ids depends on the model type (:func:`resolve_model_type`, :func:`encode_prompts`,
:func:`encode_targets`):

- ``seq2seq`` (Flan-T5): both are encoded with the tokenizer's special tokens, so both end in EOS (the encoder
  reads the whole prompt).
- ``causal`` (GPT-2, OPT, LLaMA): no special tokens (no BOS either, as MiniLLM encodes), the prompt does *not* end
  in EOS (the model continues it) and the target does. The target is cut from the tokens of prompt + target
  encoded together, so merges across the boundary are those the model sees; where the joint encoding does not
  start with the prompt's own ids, the target is encoded alone. ANLI prompts get the template's answer cue
  (``"\n\nAnswer:\n"``) appended, so the answer follows a line break rather than the last option.

A prompt longer than ``max_prompt_length`` tokens is shortened by cutting the end of the premise; the
hypothesis, the instruction and the options are never cut. Each stage builds its output in a temporary folder
and renames it into place, so an interrupted or failed run never leaves output that looks complete.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from itertools import chain
from pathlib import Path

import numpy as np

from ..folders import replace_folder
from .anli import ROUNDS, SPLITS, DataError, load_raw, read_jsonl_objects
from .indexed_dataset import ShardedIndexedDataset, best_fitting_dtype, separator_id, write_indexed_dataset
from .templates import TARGET_KINDS, get_template

ALL_ROUNDS = "all"
TEXT_FIELDS = ("uid", "round", "premise", "hypothesis", "label", "reason", "prompt", "target", "options")


def log(message: str) -> None:
    print(f"[process_data_anli] {message}", flush=True)


def _write_jsonl(path: Path, records) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def _read_jsonl(path: Path) -> list[dict]:
    return [obj for _, obj in read_jsonl_objects(path)]


# ----------------------------------------------------------------------------------------------- stage: text

@contextlib.contextmanager
def output_kept_whole(tool: str, out_dir: Path, stagings: list[Path]):
    """Around a processing tool's stages writing into ``out_dir``: a :class:`DataError` ends the tool with one line
    (``TOOL: error: ...``, exit status 1) after removing what the failed run made (the whole ``out_dir`` when the run
    created it, else the staging folders ``stagings``), so that a previous output stays as it was."""
    created = not out_dir.exists()
    try:
        if not created and not out_dir.is_dir():
            raise DataError(f"--out-dir {out_dir}: exists and is not a folder")
        yield
    except DataError as err:
        for path in [out_dir] if created else stagings:
            shutil.rmtree(path, ignore_errors=True)
        sys.exit(f"{tool}: error: {err}")


def staged_text_dir(out_dir: Path) -> Path:
    """Where the text stage builds ``text/`` before it is renamed into place."""
    return out_dir / ".text.tmp"


def build_text(raw_dir: Path, out_dir: Path, template_name: str, target_kind: str, publish: bool = True) -> dict:
    """Raw files -> ``out_dir/text/{round}/{split}.jsonl``. Returns the number of examples per round/split. With
    ``publish=False`` the text stays in :func:`staged_text_dir`, for :func:`build_shards` to check, use and publish
    together with the shards."""
    if target_kind not in TARGET_KINDS:
        raise DataError(f"TARGET={target_kind!r} is not a target kind: choose one of {', '.join(TARGET_KINDS)}")
    template = get_template(template_name)
    data = load_raw(raw_dir)  # validates everything before anything is written
    staging = staged_text_dir(out_dir)
    if staging.exists():
        shutil.rmtree(staging)
    counts = {}
    for (round_name, split), rows in data.items():
        (staging / round_name).mkdir(parents=True, exist_ok=True)
        for row in rows:
            row["prompt"] = template.prompt(row["premise"], row["hypothesis"])
            row["target"] = template.target(row["label"], row["reason"], target_kind)
            row["options"] = list(template.answers)
            del row["split"]
        _write_jsonl(staging / round_name / f"{split}.jsonl", rows)
        counts[f"{round_name}/{split}"] = len(rows)
    meta = {"raw_dir": str(raw_dir), "template": template_name, "target": target_kind, "examples": counts}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1))
    if publish:
        replace_folder(staging, out_dir / "text")
    return counts


PSEUDO_FIELDS = ("uid", "round", "prompt", "target", "target_ids", "label", "options")  # generate_seqkd.py writes them


def build_pseudo_text(generated_dir: Path, gold_dir: Path, out_dir: Path) -> dict:
    """SeqKD text, left in :func:`staged_text_dir` for the shard stage to publish (:func:`build_shards` for ANLI,
    :func:`build_pseudo_shards` otherwise): a ``text/`` whose generated split (``train``) is the teacher's outputs
    from ``generated_dir`` (written by ``minillm.generate_seqkd``, with their ``target_ids``) and whose other splits
    are copies of ``gold_dir/text``, for every round of ``gold_dir`` (ANLI r1-r3, Dolly ``dolly``), so that the
    shards built from it train on the teacher's targets and evaluate on the gold ones. Every generated record is
    checked, and the generation must come from ``gold_dir``'s tokenizer and template. ``text/meta.json`` is the gold
    text's with ``train_targets: "teacher"``, ``teacher`` (the generation's settings) and ``teacher_split`` added.
    Returns the number of examples per round/split."""
    gen_meta_path = generated_dir / "meta.json"
    if not gen_meta_path.is_file():
        raise DataError(f"{gen_meta_path}: missing; GEN_DIR must be an output folder of generate_data_seqkd.sh")
    gen_meta = json.loads(gen_meta_path.read_text())
    gold_text = gold_dir / "text"
    if not (gold_text / "meta.json").is_file():
        raise DataError(f"{gold_text / 'meta.json'}: missing; DATA_DIR must be a processed folder (the gold data "
                        "the teacher generated from)")
    gold_meta = json.loads((gold_text / "meta.json").read_text())
    gold_shards = json.loads((gold_dir / "meta.json").read_text()) if (gold_dir / "meta.json").is_file() else {}
    for field, gold_value in (("template", gold_meta["template"]), ("tokenizer", gold_shards.get("tokenizer")),
                              ("vocab_size", gold_shards.get("vocab_size"))):
        if gold_value is not None and gen_meta.get(field) != gold_value:
            raise DataError(f"{gen_meta_path}: {field} {gen_meta.get(field)!r} but DATA_DIR {gold_dir} has "
                            f"{gold_value!r}; generate from this DATA_DIR, or give the DATA_DIR GEN_DIR came from")
    pseudo_split = gen_meta["split"]
    staging = staged_text_dir(out_dir)
    if staging.exists():
        shutil.rmtree(staging)
    counts = {}
    for round_name in gold_rounds(gold_shards):
        for split in SPLITS:
            source = (generated_dir if split == pseudo_split else gold_text) / round_name / f"{split}.jsonl"
            if not source.is_file():
                continue
            if split == pseudo_split:
                counts[f"{round_name}/{split}"] = _check_pseudo_records(source)
            else:
                counts[f"{round_name}/{split}"] = sum(1 for _ in open(source, encoding="utf-8"))
            (staging / round_name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, staging / round_name / f"{split}.jsonl")
    if not any(key.endswith("/" + pseudo_split) for key in counts):
        raise DataError(f"{generated_dir}: no {{round}}/{pseudo_split}.jsonl files")
    meta = {**{k: v for k, v in gold_meta.items() if k != "examples"},
            "train_targets": "teacher", "teacher": {k: gen_meta[k] for k in (
                "teacher", "decoding", "temperature", "top_k", "top_p", "num_samples", "max_new_tokens")},
            "teacher_split": pseudo_split, "generated_dir": str(generated_dir), "gold_dir": str(gold_dir),
            "examples": counts}
    (staging / "meta.json").write_text(json.dumps(meta, indent=1))
    return counts


def gold_rounds(shards_meta: dict) -> list[str]:
    """The rounds a processed folder holds records of: its ``meta.json``'s, less the concatenated ``all`` (a
    ``meta.json`` without rounds is ANLI's, from before it listed them)."""
    return [r for r in shards_meta.get("rounds", ROUNDS) if r != ALL_ROUNDS]


def _check_pseudo_records(path: Path) -> int:
    """The number of records in a generated split; each must have every field of :data:`PSEUDO_FIELDS`, with
    ``target_ids`` a list of integers, else :class:`DataError` naming the line."""
    count = 0
    for where, record in read_jsonl_objects(path):
        missing = [k for k in PSEUDO_FIELDS if k not in record]
        if missing:
            raise DataError(f"{where}: field(s) {', '.join(missing)} missing; regenerate it with "
                            "generate_data_seqkd.sh")
        ids = record["target_ids"]
        if not isinstance(ids, list) or not all(type(i) is int and i >= 0 for i in ids):
            raise DataError(f"{where}: field target_ids is not a list of token ids; regenerate it with "
                            "generate_data_seqkd.sh")
        count += 1
    if count == 0:
        raise DataError(f"{path}: no records; regenerate it with generate_data_seqkd.sh")
    return count


def build_pseudo_shards(out_dir: Path, gold_dir: Path) -> dict:
    """SeqKD shards of a task other than ANLI (Dolly), from the text :func:`build_pseudo_text` staged, published
    with it; returns the ``meta.json`` written: ``gold_dir``'s, with ``train_targets``, ``teacher`` and the
    generated split's summary replaced.

    Dolly's shards cannot be rebuilt from its text alone (processing dropped the long prompts and chose how each
    target was encoded), so nothing is encoded again: an item of the generated split is the gold prompt ids of its
    uid (``gold_dir/prompt/{round}/{split}``: causal prompts without EOS, T5's ending in EOS, as the data module
    encodes them and the teacher read them), SEP and the teacher's ``target_ids`` exactly as generated (ending in EOS
    unless the teacher was cut at ``--max-new-tokens``); its record is the gold record of that uid with ``target``
    the teacher's text. The other splits' shards and records are copies of the gold ones, byte for byte. A
    generated uid the gold split lacks, or a target id at or above the separator, is a :class:`DataError` naming
    the line."""
    text_dir = staged_text_dir(out_dir)
    text_meta = json.loads((text_dir / "meta.json").read_text())
    gold_meta = json.loads((gold_dir / "meta.json").read_text())
    pseudo_split, dtype, sep = text_meta["teacher_split"], np.dtype(gold_meta["dtype"]), gold_meta["separator"]
    staging = fresh_staging(out_dir)
    splits = dict(gold_meta["splits"])
    for round_name in gold_rounds(gold_meta):
        for split in SPLITS:
            if split != pseudo_split:
                _copy_gold_split(gold_dir, staging, round_name, split)
            elif (text_dir / round_name / f"{split}.jsonl").is_file():
                tokenized = _teacher_split(text_dir / round_name / f"{split}.jsonl",
                                           gold_dir / "prompt" / round_name, split, dtype, sep)
                write_pairs(staging, round_name, split, tokenized, sep, gold_meta["shard_size"])
                jsonl = staging / "full" / round_name / f"{split}.jsonl"
                _write_jsonl(jsonl, tokenized.records)
                shutil.copyfile(jsonl, staging / "prompt" / round_name / f"{split}.jsonl")
                splits[f"{round_name}/{split}"] = split_summary(tokenized)
                log(f"{round_name}/{split}: {len(tokenized.records)} examples with the teacher's targets")
            else:
                splits.pop(f"{round_name}/{split}", None)
    meta = {**gold_meta, "train_targets": "teacher", "teacher": text_meta["teacher"],
            "generated_dir": text_meta["generated_dir"], "gold_dir": str(gold_dir), "splits": splits}
    publish(out_dir, staging, meta, text_dir)
    log(f"wrote {out_dir}: {pseudo_split} targets from the teacher, the other splits copied from {gold_dir}")
    return meta


def _copy_gold_split(gold_dir: Path, staging: Path, round_name: str, split: str) -> None:
    """``gold_dir/{full,prompt}/{round}/{split}_{k}.bin/.idx`` and ``{split}.jsonl`` copied into ``staging``."""
    for kind in ("full", "prompt"):
        source = gold_dir / kind / round_name
        (staging / kind / round_name).mkdir(parents=True, exist_ok=True)
        for path in [source / f"{split}.jsonl", *source.glob(f"{split}_[0-9]*.bin"),
                     *source.glob(f"{split}_[0-9]*.idx")]:
            shutil.copyfile(path, staging / kind / round_name / path.name)


def _teacher_split(path: Path, gold_prompt_dir: Path, split: str, dtype: np.dtype, sep: int) -> TokenizedSplit:
    """The generated records of ``path`` (checked by :func:`_check_pseudo_records`) paired with the gold prompt ids
    of their uids (see :func:`build_pseudo_shards`)."""
    gold_records = _read_jsonl(gold_prompt_dir / f"{split}.jsonl")
    gold_prompts = ShardedIndexedDataset(gold_prompt_dir, split)
    index_of = {record["uid"]: i for i, record in enumerate(gold_records)}
    records, prompt_ids, target_ids = [], [], []
    for where, generated in read_jsonl_objects(path):
        i = index_of.get(generated["uid"])
        if i is None:
            raise DataError(f"{where}: uid {generated['uid']} is not in {gold_prompt_dir / f'{split}.jsonl'}; "
                            "generate from this DATA_DIR, or give the DATA_DIR GEN_DIR came from")
        if generated["target_ids"] and max(generated["target_ids"]) >= sep:
            raise DataError(f"{where}: target_ids hold an id >= the {dtype.name} separator {sep}; process DATA_DIR "
                            "with DTYPE=int32")
        records.append({**gold_records[i], "target": generated["target"]})
        prompt_ids.append(gold_prompts[i])
        target_ids.append(generated["target_ids"])
    return TokenizedSplit.from_ids(records, prompt_ids, target_ids, dtype)


# --------------------------------------------------------------------------------- shared: tokens and shards

MODEL_TYPES = ("seq2seq", "causal")


@dataclass
class TokenizedSplit:
    """Token ids of one split as flat arrays plus per-example lengths: prompts (ending in EOS for seq2seq models
    only) and targets."""

    records: list[dict]
    prompt_flat: np.ndarray
    prompt_sizes: np.ndarray
    target_flat: np.ndarray
    target_sizes: np.ndarray

    @staticmethod
    def concatenate(parts: list["TokenizedSplit"]) -> "TokenizedSplit":
        return TokenizedSplit(
            records=[r for p in parts for r in p.records],
            prompt_flat=np.concatenate([p.prompt_flat for p in parts]),
            prompt_sizes=np.concatenate([p.prompt_sizes for p in parts]),
            target_flat=np.concatenate([p.target_flat for p in parts]),
            target_sizes=np.concatenate([p.target_sizes for p in parts]),
        )

    @staticmethod
    def from_ids(records: list[dict], prompt_ids: list, target_ids: list, dtype: np.dtype) -> "TokenizedSplit":
        """From per-example id sequences (lists or arrays)."""
        prompt_flat, prompt_sizes = flatten(prompt_ids, dtype)
        target_flat, target_sizes = flatten(target_ids, dtype)
        return TokenizedSplit(records, prompt_flat, prompt_sizes, target_flat, target_sizes)

    def full_items(self, sep: int) -> tuple[np.ndarray, np.ndarray]:
        """Flat ``prompt, SEP, target`` items and their sizes, assembled with vectorised scatter, not a loop."""
        sizes = self.prompt_sizes + 1 + self.target_sizes
        starts = np.zeros(len(sizes), dtype=np.int64)
        np.cumsum(sizes[:-1], out=starts[1:])
        flat = np.empty(int(sizes.sum()), dtype=self.prompt_flat.dtype)
        flat[_scatter_positions(starts, self.prompt_sizes)] = self.prompt_flat
        flat[starts + self.prompt_sizes] = sep
        flat[_scatter_positions(starts + self.prompt_sizes + 1, self.target_sizes)] = self.target_flat
        return flat, sizes


def _scatter_positions(dest_starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """Destination index of every token when run i of length sizes[i] is copied to dest_starts[i]."""
    src_starts = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=src_starts[1:])
    return np.repeat(dest_starts - src_starts, sizes) + np.arange(int(sizes.sum()), dtype=np.int64)


def flatten(id_lists: list, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """One flat array of every sequence's ids, and the sequences' lengths."""
    sizes = np.fromiter(map(len, id_lists), dtype=np.int32, count=len(id_lists))
    flat = np.fromiter(chain.from_iterable(id_lists), dtype=dtype, count=int(sizes.sum()))
    return flat, sizes


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except Exception as err:  # hub, file and format errors all come through here
        raise DataError(f"TOKENIZER={name}: cannot load it ({type(err).__name__}); give a local tokenizer folder "
                        "or a hub name while online") from None
    if not tokenizer.is_fast:
        raise DataError(f"TOKENIZER={name}: not a fast tokenizer; batched processing needs one (install tokenizers)")
    if tokenizer.eos_token_id is None:
        raise DataError(f"TOKENIZER={name}: has no EOS token; prompts and targets must end in one")
    return tokenizer


def resolve_model_type(tokenizer, requested: str) -> str:
    """``seq2seq`` or ``causal`` as requested; ``auto`` reads it from the tokenizer: ``seq2seq`` when the tokenizer
    ends every encoded text with its EOS token (T5's and BART's do), ``causal`` when it does not (GPT-2, OPT,
    LLaMA, Mistral and Qwen tokenizers add nothing or a BOS)."""
    if requested == "auto":
        return "seq2seq" if tokenizer.backend_tokenizer.encode("a").ids[-1:] == [tokenizer.eos_token_id] else "causal"
    if requested not in MODEL_TYPES:
        raise DataError(f"MODEL_TYPE={requested!r}: choose auto, {' or '.join(MODEL_TYPES)}")
    return requested


def choose_dtype(vocab_size: int, requested: str) -> np.dtype:
    """``auto``: uint16 when the vocabulary and the separator fit, else int32; otherwise check the request."""
    if requested == "auto":
        return best_fitting_dtype(vocab_size)
    if requested not in ("uint16", "int32"):
        raise DataError(f"DTYPE={requested!r}: choose auto, uint16 or int32")
    dtype = np.dtype(requested)
    if vocab_size >= separator_id(dtype):
        raise DataError(f"DTYPE={requested}: the tokenizer has {vocab_size} tokens, which do not fit below the "
                        f"separator {separator_id(dtype)}; use DTYPE=int32 or auto")
    return dtype


def encode_batch(tokenizer, texts: list[str], add_special_tokens: bool = True) -> list[list[int]]:
    """Ids straight from the Rust tokenizer: parallel over all cores and faster than ``tokenizer(texts)``, which
    builds per-call Python structures we do not need (``python tools/bench_data_pipeline.py`` times the pipeline)."""
    return [encoding.ids for encoding in
            tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=add_special_tokens)]


def encode_prompts(tokenizer, prompts: list[str], model_type: str) -> list[list[int]]:
    """Prompt ids: with the tokenizer's special tokens for seq2seq models (T5: ending in EOS), without any for
    causal ones (the model continues the prompt)."""
    return encode_batch(tokenizer, prompts, add_special_tokens=model_type == "seq2seq")


def encode_targets(tokenizer, prompts: list[str], prompt_ids: list[list[int]], targets: list[str],
                   model_type: str) -> tuple[list[list[int]], int]:
    """Target ids, ending in EOS, and how many causal targets had to be encoded alone.

    seq2seq: each target encoded on its own with the special tokens. causal: the ids after the prompt's in the
    encoding of ``prompt + target`` (MiniLLM's rule, which keeps the merges the model sees after the prompt), plus
    EOS; where that encoding does not start with ``prompt_ids`` (a merge across the boundary), the target's own
    encoding plus EOS, so that prompt ids followed by target ids always decode to prompt + target."""
    if model_type == "seq2seq":
        return encode_batch(tokenizer, targets), 0
    eos = tokenizer.eos_token_id
    joint = encode_batch(tokenizer, [p + t for p, t in zip(prompts, targets)], add_special_tokens=False)
    ids, alone = [], []
    for i, (prompt, full) in enumerate(zip(prompt_ids, joint)):
        if full[: len(prompt)] == prompt:
            ids.append(full[len(prompt):] + [eos])
        else:
            ids.append(None)
            alone.append(i)
    for i, own in zip(alone, encode_batch(tokenizer, [targets[i] for i in alone], add_special_tokens=False)):
        ids[i] = own + [eos]
    return ids, len(alone)


def write_shards(directory: Path, split: str, flat: np.ndarray, sizes: np.ndarray, shard_size: int,
                 first_shard: int = 0) -> int:
    """Write ``{split}_{first_shard}``, ``{split}_{first_shard + 1}``, ... of at most ``shard_size`` items each
    (0 = one shard); returns how many were written."""
    directory.mkdir(parents=True, exist_ok=True)
    offsets = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=offsets[1:])
    step = shard_size or max(len(sizes), 1)
    bounds = list(range(0, len(sizes), step)) or [0]
    for k, lo in enumerate(bounds, first_shard):
        hi = min(lo + step, len(sizes))
        write_indexed_dataset(directory / f"{split}_{k}", flat[offsets[lo]:offsets[hi]], sizes[lo:hi])
    return len(bounds)


def write_pairs(staging: Path, round_name: str, split: str, tokenized: TokenizedSplit, sep: int,
                shard_size: int, first_shard: int = 0) -> int:
    """``staging/{full,prompt}/{round}/{split}_{k}.bin/.idx`` for one split, numbered from ``first_shard`` (the
    ``.jsonl`` records are the caller's); returns how many shards of each kind were written."""
    full_flat, full_sizes = tokenized.full_items(sep)
    for kind, flat, sizes in (("full", full_flat, full_sizes),
                              ("prompt", tokenized.prompt_flat, tokenized.prompt_sizes)):
        written = write_shards(staging / kind / round_name, split, flat, sizes, shard_size, first_shard)
    return written


def split_summary(tokenized: TokenizedSplit) -> dict:
    return {"examples": len(tokenized.records), "max_prompt_tokens": int(tokenized.prompt_sizes.max(initial=0)),
            "max_target_tokens": int(tokenized.target_sizes.max(initial=0))}


def tokenizer_meta(tokenizer_name: str, tokenizer, dtype: np.dtype, model_type: str) -> dict:
    """The ``meta.json`` keys every processed folder starts with."""
    return {"tokenizer": tokenizer_name, "vocab_size": len(tokenizer), "dtype": dtype.name,
            "separator": separator_id(dtype), "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id, "model_type": model_type}


def publish(out_dir: Path, staging: Path, meta: dict, staged_text: Path | None = None) -> None:
    """Move the complete ``staging/{full,prompt}`` (and a staged ``text/``) into ``out_dir`` and write ``meta.json``.

    ``meta.json`` is removed first and written last, under a temporary name, so the folder never looks complete
    with parts from two runs."""
    (out_dir / "meta.json").unlink(missing_ok=True)
    if staged_text is not None:
        replace_folder(staged_text, out_dir / "text")
    for kind in ("full", "prompt"):
        replace_folder(staging / kind, out_dir / kind)
    shutil.rmtree(staging)
    tmp_meta = out_dir / ".meta.json.tmp"
    tmp_meta.write_text(json.dumps(meta, indent=1))
    os.replace(tmp_meta, out_dir / "meta.json")


def fresh_staging(out_dir: Path) -> Path:
    """An empty ``out_dir/.shards.tmp`` to build the shards in."""
    staging = out_dir / ".shards.tmp"
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    return staging


# ------------------------------------------------------------------------------------- stage: shards (ANLI)

def _cut_premises(records, prompt_ids, tokenizer, template, max_len: int, model_type: str) -> int:
    """Shorten the premise of every prompt over ``max_len`` tokens until it fits; returns how many were cut."""
    too_long = [i for i, ids in enumerate(prompt_ids) if len(ids) > max_len]
    causal = model_type == "causal"
    for i in too_long:
        record = records[i]
        # Cut the original text at a token boundary (character offsets), rather than decoding ids, so that the
        # kept premise is an exact prefix of the original, characters outside the vocabulary included.
        token_ends = [end for _, end in
                      tokenizer.backend_tokenizer.encode(record["premise"], add_special_tokens=False).offsets]
        keep = max(0, len(token_ends) - (len(prompt_ids[i]) - max_len))
        while True:
            prompt = template.prompt(record["premise"][: token_ends[keep - 1]] if keep else "", record["hypothesis"],
                                     answer_cue=causal)
            ids = tokenizer.backend_tokenizer.encode(prompt, add_special_tokens=not causal).ids
            if len(ids) <= max_len:
                break
            if keep == 0:
                raise DataError(
                    f"uid {record['uid']} (round {record['round']}): the prompt without its premise is still over "
                    f"MAX_PROMPT_LENGTH={max_len} tokens; raise MAX_PROMPT_LENGTH")
            keep = max(0, keep - (len(ids) - max_len))  # text after the cut can tokenise differently: cut more
        record["prompt"], record["truncated"] = prompt, True
        prompt_ids[i] = ids
    return len(too_long)


def tokenize_split(records, tokenizer, template, max_len: int, dtype: np.dtype,
                   model_type: str = "seq2seq") -> tuple[TokenizedSplit, int]:
    """Prompt and target ids of every record (causal prompts first get the template's answer cue). A record with
    ``target_ids`` (a teacher's output, see :func:`build_pseudo_text`) keeps those ids as its target: decoding and
    re-encoding them need not give them back, and SeqKD trains on exactly what the teacher generated."""
    if model_type == "causal":
        for r in records:
            r["prompt"] = template.with_answer_cue(r["prompt"])
    prompt_ids = encode_prompts(tokenizer, [r["prompt"] for r in records], model_type)
    for r in records:
        r["truncated"] = False
    cut = _cut_premises(records, prompt_ids, tokenizer, template, max_len, model_type)
    target_ids = [r.get("target_ids") for r in records]
    to_encode = [i for i, ids in enumerate(target_ids) if ids is None]
    encoded, _ = encode_targets(tokenizer, [records[i]["prompt"] for i in to_encode],
                                [prompt_ids[i] for i in to_encode], [records[i]["target"] for i in to_encode],
                                model_type)
    for i, ids in zip(to_encode, encoded):
        target_ids[i] = ids
    too_large = [r["uid"] for r, ids in zip(records, target_ids) if ids and max(ids) >= separator_id(dtype)]
    if too_large:
        raise DataError(f"uid {too_large[0]}: target_ids hold an id >= the {dtype.name} separator "
                        f"{separator_id(dtype)}; use DTYPE=int32")
    return TokenizedSplit.from_ids(records, prompt_ids, target_ids, dtype), cut


def _jsonl_records(tokenized: TokenizedSplit):
    for r in tokenized.records:
        yield {"uid": r["uid"], "round": r["round"], "prompt": r["prompt"], "target": r["target"],
               "label": r["label"], "options": r["options"], "truncated": r["truncated"]}


def build_shards(out_dir: Path, tokenizer_name: str, max_prompt_length: int = 512, dtype: str = "auto",
                 shard_size: int = 0, template_name: str | None = None, target_kind: str | None = None,
                 staged_text: bool = False, model_type: str = "auto") -> dict:
    """``out_dir/text`` -> ``out_dir/{full,prompt}/{round}/``. Returns the metadata written to ``meta.json``.

    ``model_type`` is ``seq2seq``, ``causal`` or ``auto`` (see :func:`resolve_model_type`). With ``staged_text``
    the text comes from :func:`staged_text_dir` (a text stage run with ``publish=False``) and is renamed to
    ``out_dir/text`` only with the shards, once they are built: a run that fails in either stage leaves the
    previous output as it was (see :func:`publish`)."""
    text_dir = staged_text_dir(out_dir) if staged_text else out_dir / "text"
    meta_path = text_dir / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{meta_path}: missing; run the text stage first (STAGE=text or STAGE=all)")
    text_meta = json.loads(meta_path.read_text())
    for flag, wanted, built in (("TEMPLATE", template_name, text_meta["template"]),
                                ("TARGET", target_kind, text_meta["target"])):
        if wanted is not None and wanted != built:
            raise DataError(f"{flag}={wanted} but {text_dir} was built with {built}; rerun with STAGE=all")
    if max_prompt_length < 8:
        raise DataError(f"MAX_PROMPT_LENGTH={max_prompt_length}: too small to hold an instruction and hypothesis")
    template = get_template(text_meta["template"])

    started = time.perf_counter()
    tokenizer = load_tokenizer(tokenizer_name)
    np_dtype = choose_dtype(len(tokenizer), dtype)
    model_type = resolve_model_type(tokenizer, model_type)
    sep = separator_id(np_dtype)
    log(f"tokenizer {tokenizer_name}: {len(tokenizer)} tokens, loaded in {time.perf_counter() - started:.1f}s; "
        f"dtype {np_dtype.name}, separator {sep}, {model_type} model")

    tokenized: dict[tuple[str, str], TokenizedSplit] = {}
    cut_total = 0
    for round_name in ROUNDS:
        for split in SPLITS:
            path = text_dir / round_name / f"{split}.jsonl"
            if not path.is_file():
                continue
            tokenized[(round_name, split)], cut = tokenize_split(
                _read_jsonl(path), tokenizer, template, max_prompt_length, np_dtype, model_type)
            cut_total += cut
            log(f"{round_name}/{split}: {len(tokenized[(round_name, split)].records)} examples, "
                f"{cut} prompts cut to {max_prompt_length} tokens")
    if not tokenized:
        raise DataError(f"{text_dir}: no {{round}}/{{split}}.jsonl files; run the text stage first")
    for split in SPLITS:
        parts = [tokenized[(r, split)] for r in ROUNDS if (r, split) in tokenized]
        if parts:
            tokenized[(ALL_ROUNDS, split)] = TokenizedSplit.concatenate(parts)

    staging = fresh_staging(out_dir)
    summary = {}
    for (round_name, split), tok in tokenized.items():
        write_pairs(staging, round_name, split, tok, sep, shard_size)
        # Serialise each record once: `all` concatenates the rounds' files and prompt/ copies full/.
        jsonl = staging / "full" / round_name / f"{split}.jsonl"
        if round_name == ALL_ROUNDS:
            with open(jsonl, "wb") as out:
                for r in ROUNDS:
                    if (r, split) in tokenized:
                        with open(staging / "full" / r / f"{split}.jsonl", "rb") as part:
                            shutil.copyfileobj(part, out)
        else:
            _write_jsonl(jsonl, _jsonl_records(tok))
        shutil.copyfile(jsonl, staging / "prompt" / round_name / f"{split}.jsonl")
        summary[f"{round_name}/{split}"] = split_summary(tok)
    meta = {**tokenizer_meta(tokenizer_name, tokenizer, np_dtype, model_type), "task": "anli",
            "rounds": list(dict.fromkeys(r for r, _ in tokenized)), "template": text_meta["template"],
            "target": text_meta["target"],
            "train_targets": text_meta.get("train_targets", "gold"), "teacher": text_meta.get("teacher"),
            "max_prompt_length": max_prompt_length, "prompts_cut": cut_total, "shard_size": shard_size,
            "splits": summary}
    publish(out_dir, staging, meta, text_dir if staged_text else None)
    log(f"wrote {len(tokenized)} round/split pairs to {out_dir} ({cut_total} prompts cut) "
        f"in {time.perf_counter() - started:.1f}s")
    if not any(split == "train" for _, split in tokenized):
        log(f"{out_dir} has no train split ({text_meta.get('raw_dir', 'the raw folder')} has none): it can be "
            "evaluated on (minillm.evaluate --split, or a run's --eval-split) but not trained on")
    return meta

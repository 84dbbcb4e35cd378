"""(prompt, target) examples from ``full/`` shards, their collation into padded batches, and length-bucketed,
data-parallel batching.

A batch, for every model family (the adapter converts it internally, :mod:`minillm.models.base`): ``input_ids`` /
``attention_mask`` ``[B, S]``, the prompts right-padded with the pad id; ``labels`` ``[B, T]``, the targets
right-padded with -100 (``IGNORE_INDEX``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..models.base import IGNORE_INDEX
from .indexed_dataset import ShardedIndexedDataset, separator_id


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; --data-dir must be an output folder of process_data_anli.sh")
    return json.loads(path.read_text())


def check_trainable(data_dir: str | Path) -> None:
    """ValueError (one line naming the folder and what to do) when ``data_dir``'s ``meta.json`` lists its splits
    and none is a train split: a folder processed from raw data without training files, which can be evaluated on
    but not trained on. A folder without ``meta.json`` is left to the readers' own errors."""
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        return
    splits = json.loads(path.read_text()).get("splits")
    if splits is not None and not any(key.endswith("/train") for key in splits):
        raise ValueError(f"{data_dir} has no train split (only {', '.join(sorted(splits))}): it was processed from "
                         "raw data without training files, so it can be evaluated on but not trained on; train on "
                         "a folder processed from raw data that has a train split")


def pad_right(sequences: list, value: int, dtype=torch.long) -> torch.Tensor:
    """Stack 1-D int sequences into ``[B, max_len]``, right-padded with ``value``."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), width), value, dtype=dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out


def collate_prompts(prompts, pad_token_id: int) -> dict:
    """Prompt id sequences -> right-padded ``input_ids`` and ``attention_mask`` (the prompt side of a batch)."""
    return {"input_ids": pad_right(prompts, pad_token_id),
            "attention_mask": pad_right([[1] * len(p) for p in prompts], 0)}


def collate(examples: list[tuple], pad_token_id: int) -> dict:
    """(prompt ids, target ids) pairs -> a padded batch (module docstring)."""
    prompts, targets = zip(*examples)
    return {**collate_prompts(prompts, pad_token_id), "labels": pad_right(targets, IGNORE_INDEX)}


class Seq2SeqExamples:
    """Items of ``data_dir/full/{round}/{split}_*`` as (prompt ids, target ids), both ending in EOS.

    Processing already fits prompts to its MAX_PROMPT_LENGTH by cutting the premise. A smaller
    ``max_prompt_length`` here keeps the *last* tokens, where the instruction, hypothesis and options are.
    Targets keep their first ``max_target_length`` tokens.
    """

    def __init__(self, data_dir: str | Path, round_name: str, split: str, max_prompt_length: int = 512,
                 max_target_length: int = 128):
        if split == "train":
            check_trainable(data_dir)
        self.dataset = ShardedIndexedDataset(Path(data_dir) / "full" / round_name, split)
        self.sep = separator_id(self.dataset.dtype)
        self.round_name = round_name
        self.max_prompt_length = max_prompt_length
        self.max_target_length = max_target_length
        self.records_path = Path(data_dir) / "full" / round_name / f"{split}.jsonl"
        # Batches are bucketed by prompt length alone, read from the prompt/ shards (same items, same order): the
        # encoder input is where padding costs. Targets must stay out of the sort key: they are answer words whose
        # length depends on the label ("Yes" vs "It's impossible to say"), so sorting by prompt + target length
        # makes batches of a single label, and a model trained on them stays at chance.
        prompts = ShardedIndexedDataset(Path(data_dir) / "prompt" / round_name, split)
        if len(prompts) != len(self.dataset):
            raise ValueError(f"{data_dir}: prompt/{round_name}/{split} holds {len(prompts)} items but full/ holds "
                             f"{len(self.dataset)}; rerun process_data_anli.sh")
        self.prompt_lengths = np.minimum(prompts.sizes, max_prompt_length)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        item = self.dataset[i]
        cut = int(np.flatnonzero(item == self.sep)[0])
        prompt, target = item[:cut], item[cut + 1:]
        return prompt[-self.max_prompt_length:].astype(np.int64), target[: self.max_target_length].astype(np.int64)

    def records(self) -> list[dict]:
        with open(self.records_path, encoding="utf-8") as f:
            return [json.loads(line) for line in f]


def bucketed_batches(lengths: np.ndarray, global_batch_size: int, seed: int, epoch: int,
                     window_batches: int = 50) -> list[np.ndarray]:
    """One epoch of global batches (index arrays), with padding kept small.

    Indices are shuffled with ``(seed, epoch)``, cut into windows of ``window_batches`` global batches, sorted by
    length inside each window, and chunked; the batch order is shuffled again so lengths do not drift through the
    epoch. The ``len % global_batch_size`` examples left over are dropped so every data-parallel rank always gets
    the same shape of work; they are cut from the shuffled order, before sorting, so they are random examples (a
    different few every epoch), not the longest prompts of the last window.
    """
    rng = np.random.default_rng([seed, epoch])
    n_batches = len(lengths) // global_batch_size
    order = rng.permutation(len(lengths))[: n_batches * global_batch_size]
    window = global_batch_size * window_batches
    windows = [order[s:s + window] for s in range(0, len(order), window)]
    order = np.concatenate([w[np.argsort(lengths[w], kind="stable")] for w in windows] or [order])
    batches = order.reshape(n_batches, global_batch_size)
    return [batches[i] for i in rng.permutation(n_batches)]


def rank_slice(global_batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """The rows of a global batch that one data-parallel rank processes."""
    per_rank = len(global_batch) // world_size
    return global_batch[rank * per_rank:(rank + 1) * per_rank]

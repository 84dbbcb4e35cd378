"""(prompt, target) examples from ``full/`` shards, and length-bucketed, data-parallel batching."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .indexed_dataset import ShardedIndexedDataset, separator_id


def read_meta(data_dir: str | Path) -> dict:
    path = Path(data_dir) / "meta.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: missing; --data-dir must be an output folder of process_data_anli.sh")
    return json.loads(path.read_text())


class Seq2SeqExamples:
    """Items of ``data_dir/full/{round}/{split}_*`` as (prompt ids, target ids), both ending in EOS.

    Processing already fits prompts to its MAX_PROMPT_LENGTH by cutting the premise. A smaller
    ``max_prompt_length`` here keeps the *last* tokens, where the instruction, hypothesis and options are.
    Targets keep their first ``max_target_length`` tokens.
    """

    def __init__(self, data_dir: str | Path, round_name: str, split: str, max_prompt_length: int = 512,
                 max_target_length: int = 128):
        self.dataset = ShardedIndexedDataset(Path(data_dir) / "full" / round_name, split)
        self.sep = separator_id(self.dataset.dtype)
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

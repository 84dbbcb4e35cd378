"""Where the training loop's micro-batches come from: data batching.

A batch source answers ``micro_batches(step)`` with the ``grad_acc`` micro-batches this process trains on at
optimizer step ``step`` (a pure function of the step and the seed, so a resumed run picks up where it stopped),
``pop_stats()`` with figures to log when something beyond training happened at that step (a rollout collection)
or None, ``steps_per_epoch`` (optimizer steps per pass over its data), ``data_summary`` (what it trains on, for the
run's first line) and ``describe()`` (a further line about how it works, or None). ``state_dict(step)`` is what a
checkpoint at ``step`` must keep of this process's source beyond the step (a dict of tensors, or None: the
supervised sources hold nothing, their batches follow from the step), ``load_state_dict(state, step)`` takes it
back on ``--resume``. The objective chooses its source
(:meth:`minillm.objectives.Objective.batch_source`): :class:`SupervisedBatches` over (prompt, target) pairs for
SFT, KD and SeqKD; MiniLLM's rollouts are in :mod:`minillm.objectives.minillm.batches`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..data.indexed_dataset import ShardedIndexedDataset
from ..data.seq2seq import bucketed_batches, check_trainable, collate, collate_prompts, rank_slice


class SupervisedBatches:
    """Length-bucketed global batches over (prompt, target) examples (:func:`bucketed_batches`), this rank's rows,
    cut into ``grad_acc`` micro-batches."""

    def __init__(self, examples, batch_size: int, grad_acc: int, rank: int, world_size: int, seed: int,
                 bucket_window: int, pad_token_id: int):
        self.examples, self.batch_size, self.grad_acc = examples, batch_size, grad_acc
        self.rank, self.world_size, self.seed, self.window = rank, world_size, seed, bucket_window
        self.pad_token_id = pad_token_id
        self.global_batch_size = batch_size * world_size * grad_acc
        self.steps_per_epoch = len(examples) // self.global_batch_size
        self._epoch: tuple[int, list] = (-1, [])

    @property
    def data_summary(self) -> str:
        return f"{len(self.examples)} examples ({self.examples.round_name})"

    def micro_batches(self, step: int) -> list[dict]:
        epoch, position = divmod(step, self.steps_per_epoch)
        if self._epoch[0] != epoch:
            self._epoch = (epoch, bucketed_batches(self.examples.prompt_lengths, self.global_batch_size, self.seed,
                                                   epoch, self.window))
        rows = rank_slice(self._epoch[1][position], self.rank, self.world_size)
        return [collate([self.examples[int(i)] for i in rows[k * self.batch_size:(k + 1) * self.batch_size]],
                        self.pad_token_id) for k in range(self.grad_acc)]

    def pop_stats(self) -> dict | None:
        return None

    def describe(self) -> str | None:
        return None

    def state_dict(self, step: int) -> None:
        return None

    def load_state_dict(self, state: dict | None, step: int) -> None:
        if state is not None:
            raise ValueError(f"--resume: the checkpoint at step {step} holds a batch-source state, which supervised "
                             "batches never save; it was written by another --type")


class Prompts:
    """Prompt ids of ``data_dir/prompt/{round}/{split}`` (the shards made for sampling), keeping the last
    ``max_prompt_length`` tokens as training does."""

    def __init__(self, data_dir, round_name: str, split: str, max_prompt_length: int):
        if split == "train":
            check_trainable(data_dir)
        path = Path(data_dir) / "prompt" / round_name
        self.dataset = ShardedIndexedDataset(path, split)
        self.round_name = round_name
        self.max_prompt_length = max_prompt_length

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> np.ndarray:
        return self.dataset[i][-self.max_prompt_length:].astype(np.int64)


def prompt_batches(prompts: list[np.ndarray], size: int, pad_token_id: int, device) -> list[dict]:
    """Prompts sorted by length (little padding) and cut into padded batches of ``size`` on ``device``."""
    ordered = sorted(prompts, key=len)
    return [{k: v.to(device) for k, v in collate_prompts(ordered[s:s + size], pad_token_id).items()}
            for s in range(0, len(ordered), size)]

"""Where the training loop's micro-batches come from: gold (or teacher-made) pairs, or on-policy rollouts.

Both sources answer ``micro_batches(step)`` with the ``grad_acc`` micro-batches this process trains on at optimizer
step ``step`` (a pure function of the step and the seed, so a resumed run picks up where it stopped), and
``pop_stats()`` with figures to log when something beyond training happened at that step (a rollout collection).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import numpy as np
import torch

from ..data.indexed_dataset import ShardedIndexedDataset
from ..data.seq2seq import bucketed_batches, rank_slice
from ..models.adapter import IGNORE_INDEX, collate, collate_prompts
from .distributed import all_reduce_sum, all_reduce_sum_


def every_process_done(done: torch.Tensor) -> bool:
    """Whether every sequence on every process has ended (one all-reduce): decoding in lockstep, for ZeRO-3 models
    that gather parameters collectively at every call."""
    return all_reduce_sum_((~done).sum().double()).item() == 0


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


def token_cells(batch: dict) -> tuple[int, int]:
    """(real tokens, computed cells) of a micro-batch, over the encoder input and the decoder target: its padding
    fraction is ``1 - real / cells``."""
    real = int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
    return real, batch["input_ids"].numel() + batch["labels"].numel()


def padding_fraction(examples, steps, batch_size: int, grad_acc: int, world_size: int, seed: int, bucket_window: int,
                     pad_token_id: int) -> float:
    """Padded share of the cells that all ``world_size`` processes compute over optimizer ``steps`` of
    :class:`SupervisedBatches`: the ``padding`` the trainer logs over those steps."""
    real = cells = 0
    for rank in range(world_size):
        source = SupervisedBatches(examples, batch_size, grad_acc, rank, world_size, seed, bucket_window, pad_token_id)
        for step in steps:
            for batch in source.micro_batches(step):
                batch_real, batch_cells = token_cells(batch)
                real, cells = real + batch_real, cells + batch_cells
    return 1.0 - real / cells


class Prompts:
    """Prompt ids of ``data_dir/prompt/{round}/{split}`` (the shards made for sampling), keeping the last
    ``max_prompt_length`` tokens as training does."""

    def __init__(self, data_dir, round_name: str, split: str, max_prompt_length: int):
        path = Path(data_dir) / "prompt" / round_name
        self.dataset = ShardedIndexedDataset(path, split)
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


def gather_fits(models: list, device) -> bool:
    """Whether the full parameters of ``models`` fit in 80 % of the accelerator's free memory (always on a CPU)."""
    if device.type != "cuda":
        return True
    needed = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for model in models for p in model.parameters())
    return needed <= 0.8 * torch.cuda.mem_get_info(device)[0]


@contextlib.contextmanager
def parameters_gathered(models: list, gather: bool):
    """With ``gather`` (ZeRO-3 and :func:`gather_fits`), every parameter of ``models`` gathered for the block: once,
    instead of layer by layer at every decoding step. Otherwise nothing to do (ZeRO 0-2 keep whole parameters; a
    ZeRO-3 run that does not fit gathers per call, slower)."""
    if not gather:
        yield
        return
    import deepspeed

    params = [p for model in models for p in model.parameters()]
    with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
        yield


class RolloutBatches:
    """On-policy micro-batches for MiniLLM.

    Collection c (at step ``c x steps_per_collection``): the global prompt stream (the prompts reshuffled each pass
    with the seed) yields ``num_rollouts`` prompts, of which this rank takes every ``world_size``-th; the objective
    samples a rollout for each, in sampling batches of ``chunk_size`` prompts, with the student in its training
    mode and its parameters gathered once under ZeRO-3. Then ``ppo_epochs`` passes over the store, each a fresh
    shuffle cut into global batches of ``batch_size x grad_acc`` per process, each micro-batch made by the
    objective's ``micro_batch`` (which, with ``--whiten-scope micro-batch``, whitens its advantages with an
    all-reduce: every process forms the same number of micro-batches in the same order, so the calls pair up).
    With ``lm`` (a :class:`SupervisedBatches` over gold pairs) each micro-batch carries a gold batch under ``"lm"``.
    """

    def __init__(self, objective, model, prompts: Prompts, lm: SupervisedBatches | None, config, rank: int,
                 world_size: int, device, pad_token_id: int, zero3: bool):
        self.objective, self.model, self.prompts, self.lm = objective, model, prompts, lm
        self.config, self.rank, self.world_size, self.device = config, rank, world_size, device
        self.pad_token_id, self.zero3 = pad_token_id, zero3
        if config.num_rollouts % world_size:
            raise ValueError(f"--num-rollouts {config.num_rollouts} is not a multiple of the {world_size} processes")
        self.per_rank = config.num_rollouts // world_size
        self.batches_per_epoch = self.per_rank // (config.batch_size * config.grad_acc)
        if self.batches_per_epoch == 0:
            raise ValueError(f"--num-rollouts {config.num_rollouts}: {self.per_rank} per process, fewer than one "
                             f"step's --batch-size x --grad-acc ({config.batch_size * config.grad_acc})")
        self.steps_per_epoch = config.ppo_epochs * self.batches_per_epoch  # steps per collection
        self._collection, self._store, self._stats = -1, None, None
        self.gather = zero3 and config.gather_for_sampling and gather_fits([model, *objective.frozen_models], device)
        self.all_done = every_process_done if zero3 and not self.gather else None

    def describe(self) -> str:
        c = self.config
        return (f"rollouts: {c.num_rollouts} per collection ({self.per_rank} per process, sampled {c.chunk_size} "
                f"at a time), {c.ppo_epochs} PPO epochs = {self.steps_per_epoch} steps per collection"
                + (", the student's and the teacher's parameters gathered once per collection (ZeRO-3)"
                   if self.gather else "")
                + (", WARNING: ZeRO-3 without gathering the student's and teacher's parameters for sampling (they do "
                   "not fit in 80 % of the free accelerator memory, or --no-gather-for-sampling): decoding in "
                   "lockstep, gathering layer by layer at every call (slower)" if self.zero3 and not self.gather else "")
                + (", LM term on gold pairs" if self.lm is not None else ""))

    def _prompt_indices(self, collection: int) -> list[int]:
        """Positions ``collection x num_rollouts + rank``, ``+ world_size``, ... of the prompt stream: pass e over
        the prompts is the permutation seeded with ``(seed, e)``."""
        n, start = len(self.prompts), collection * self.config.num_rollouts
        passes: dict[int, np.ndarray] = {}
        out = []
        for j in range(start + self.rank, start + self.config.num_rollouts, self.world_size):
            if j // n not in passes:
                passes[j // n] = np.random.default_rng([self.config.seed, j // n]).permutation(n)
            out.append(int(passes[j // n][j % n]))
        return out

    def _collect(self, collection: int) -> None:
        prompts = [self.prompts[i] for i in self._prompt_indices(collection)]
        batches = prompt_batches(prompts, self.config.chunk_size, self.pad_token_id, self.device)
        generator = torch.Generator(device=self.device).manual_seed(
            int(np.random.default_rng([self.config.seed, collection, self.rank]).integers(2**62)))
        with parameters_gathered([self.model, *self.objective.frozen_models], self.gather):
            self._store, stats = self.objective.collect(self.model, batches, generator, all_reduce_sum_, self.all_done)
        names = sorted(stats)
        totals = dict(zip(names, all_reduce_sum([stats[k] for k in names], self.device)))
        sequences = max(totals.pop("sequences"), 1.0)
        tokens = totals.pop("tokens")
        self._stats = {**{k: v / sequences for k, v in totals.items()}, "rollouts": int(sequences),
                       "tokens": int(tokens), "collection": collection}
        self._collection = collection

    def micro_batches(self, step: int) -> list[dict]:
        collection, position = divmod(step, self.steps_per_epoch)
        if collection != self._collection:
            self._collect(collection)
        ppo_epoch, k = divmod(position, self.batches_per_epoch)
        order = np.random.default_rng([self.config.seed, collection, ppo_epoch, self.rank]).permutation(self.per_rank)
        size = self.config.batch_size
        rows = order[k * size * self.config.grad_acc:(k + 1) * size * self.config.grad_acc]
        batches = [self.objective.micro_batch(self._store, rows[g * size:(g + 1) * size], all_reduce_sum_)
                   for g in range(self.config.grad_acc)]
        if self.lm is not None:
            for batch, gold in zip(batches, self.lm.micro_batches(step)):
                batch["lm"] = gold
        return batches

    def pop_stats(self) -> dict | None:
        stats, self._stats = self._stats, None
        return stats

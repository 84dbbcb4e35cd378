"""MiniLLM's data: the batch source (micro-batches of stored on-policy rollouts, collected with the current student),
the gold pairs of its LM term and the prompts of its sampled evaluation. The objective (objective.py) reads no
files."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ...console import progress, with_progress
from ...data.seq2seq import Seq2SeqExamples, read_meta
from ...engine.batches import Prompts, SupervisedBatches, prompt_batches
from ...engine.distributed import all_reduce_sum, all_reduce_sum_
from .rollouts import Rollouts

ROLLOUT_PROGRESS_DELAY = 5.0  # seconds


def lm_round(lm_data_dir, train_round: str) -> str:
    """The round of ``--lm-data-dir`` the LM term reads, from its meta.json's ``rounds``: the folder's only round (a
    plain-text corpus holds round ``pretrain`` whatever the task's round is), else ``train_round`` when the folder
    has it (gold pairs of the task's own data) or lists no rounds (ANLI folders made before they were listed); a
    one-line ValueError otherwise."""
    rounds = read_meta(lm_data_dir).get("rounds")
    if rounds is not None and len(rounds) == 1:
        return rounds[0]
    if rounds is None or train_round in rounds:
        return train_round
    raise ValueError(f"--lm-data-dir {lm_data_dir}: rounds {', '.join(rounds) or 'none'} in its meta.json, not "
                     f"--train-round {train_round}; point it at a folder of one round or one holding {train_round}")


def lm_examples(config) -> Seq2SeqExamples:
    """The LM term's training pairs. A plain-text corpus (meta.json task ``pretrain``) was cut into chunks of the
    length it is meant to be trained at (MiniLLM: 512 tokens), so its pairs are kept whole; gold pairs of a task are
    cut like the task's (``--max-prompt-length``, ``--max-target-length``)."""
    meta = read_meta(config.lm_data_dir)
    round_name = lm_round(config.lm_data_dir, config.train_round)
    max_prompt_length, max_target_length = config.max_prompt_length, config.max_target_length
    if meta.get("task") == "pretrain":
        longest = meta["splits"][f"{round_name}/train"]
        max_prompt_length = max(max_prompt_length, longest["max_prompt_tokens"])
        max_target_length = max(max_target_length, longest["max_target_tokens"])
    return Seq2SeqExamples(config.lm_data_dir, round_name, "train", max_prompt_length, max_target_length)


def rollout_batches(objective, model, config, processes) -> "RolloutBatches":
    """Rollouts sampled from the prompts of ``--prompt-data-dir`` (default ``--data-dir``), with gold pairs of
    ``--lm-data-dir`` for the LM term when it is given."""
    prompts = Prompts(config.prompt_data_dir or config.data_dir, config.train_round, "train", config.max_prompt_length)
    lm = None
    if config.lm_data_dir is not None:
        lm = SupervisedBatches(lm_examples(config), config.batch_size, config.grad_acc, processes.rank,
                               processes.world_size, config.seed, config.bucket_window, objective.adapter.pad_token_id)
        if lm.steps_per_epoch == 0:
            raise ValueError(f"--lm-data-dir {config.lm_data_dir}: {len(lm.examples)} training examples in round "
                             f"{lm.examples.round_name}, fewer than one global batch ({lm.global_batch_size})")
    return RolloutBatches(objective, model, prompts, lm, config, processes)


def evaluation_prompts(config, rank: int, world_size: int) -> list[dict]:
    """This rank's share of the sampled evaluation's prompts: the first --eval-max-examples of each of
    --eval-rounds' --eval-split, cut to a multiple of the process count so that every rank samples as many."""
    prompts = []
    for round_name in config.eval_rounds:
        shard = Prompts(config.data_dir, round_name, config.eval_split, config.max_prompt_length)
        prompts += [shard[i] for i in range(min(len(shard), config.eval_max_examples or len(shard)))]
    return prompts[: len(prompts) // world_size * world_size][rank::world_size]


class RolloutBatches:
    """On-policy micro-batches for MiniLLM (the batch-source interface of :mod:`minillm.engine.batches`).

    Collection c (at step ``c x steps_per_collection``): the global prompt stream (the prompts reshuffled each pass
    with the seed) yields ``num_rollouts`` prompts, of which this rank takes every ``world_size``-th; the objective
    samples a rollout for each, in sampling batches of ``chunk_size`` prompts, with the student in its training
    mode, inside the engine's sampling scope (``processes.sampling``: under ZeRO-3 the parameters gathered once,
    or decoding in lockstep). Then ``ppo_epochs`` passes over the store, each a fresh shuffle cut into global
    batches of ``batch_size x grad_acc`` per process, each micro-batch made by the objective's ``micro_batch``
    (which, with ``--whiten-scope micro-batch``, whitens its advantages with an all-reduce: every process forms the
    same number of micro-batches in the same order, so the calls pair up). With ``lm`` (a
    :class:`SupervisedBatches` over gold pairs) each micro-batch carries a gold batch under ``"lm"``.

    Resuming: a checkpoint inside a collection keeps this process's store (:meth:`state_dict`), since its rollouts
    were sampled by the student of the collection's first step, which the checkpoint no longer holds; the resumed
    run trains on the very same rollouts. At a collection boundary nothing is kept: the next collection is sampled
    from the checkpoint's student with the collection's own generator (seeded by seed, collection and rank), as
    the uninterrupted run samples it.
    """

    def __init__(self, objective, model, prompts, lm: SupervisedBatches | None, config, processes):
        self.objective, self.model, self.prompts, self.lm = objective, model, prompts, lm
        self.config, self.processes = config, processes
        self.rank, self.world_size = processes.rank, processes.world_size
        if config.num_rollouts % self.world_size:
            raise ValueError(f"--num-rollouts {config.num_rollouts} is not a multiple of the {self.world_size} "
                             "processes")
        self.per_rank = config.num_rollouts // self.world_size
        self.batches_per_epoch = self.per_rank // (config.batch_size * config.grad_acc)
        if self.batches_per_epoch == 0:
            raise ValueError(f"--num-rollouts {config.num_rollouts}: {self.per_rank} per process, fewer than one "
                             f"step's --batch-size x --grad-acc ({config.batch_size * config.grad_acc})")
        self.steps_per_epoch = config.ppo_epochs * self.batches_per_epoch  # steps per collection
        self._collection, self._store, self._stats = -1, None, None

    @property
    def data_summary(self) -> str:
        return f"{len(self.prompts)} prompts ({self.prompts.round_name})"

    def describe(self) -> str:
        c = self.config
        return (f"rollouts: {c.num_rollouts} per collection ({self.per_rank} per process, sampled {c.chunk_size} "
                f"at a time), {c.ppo_epochs} PPO epochs = {self.steps_per_epoch} steps per collection"
                + self.processes.sampling.describe()
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
        device = self.processes.device
        batches = prompt_batches(prompts, self.config.chunk_size, self.objective.adapter.pad_token_id, device)
        generator = torch.Generator(device=device).manual_seed(
            int(np.random.default_rng([self.config.seed, collection, self.rank]).integers(2**62)))
        sampling = self.processes.sampling
        # process 0 reports the sampling batches once the collection has run ROLLOUT_PROGRESS_DELAY seconds
        report = progress(len(batches), f"rollouts {collection}", enabled=self.rank == 0, unit="batches",
                          every=max(1, len(batches) // 5), delay=ROLLOUT_PROGRESS_DELAY, nested=True)
        with sampling.gathered():
            self._store, stats = self.objective.collect(self.model, with_progress(batches, report), generator,
                                                        all_reduce_sum_, sampling.all_done)
        names = sorted(stats)
        totals = dict(zip(names, all_reduce_sum([stats[k] for k in names], device)))
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

    def state_dict(self, step: int) -> dict | None:
        """The store in use at ``step`` as flat tensors (the :class:`Rollouts` fields under ``rollouts.``, the
        store's other tensors under their names) and its collection number; None at a collection boundary."""
        collection, position = divmod(step, self.steps_per_epoch)
        if position == 0:
            return None
        rollouts = self._store["rollouts"]
        state = {"collection": torch.tensor(collection)}
        for f in dataclasses.fields(Rollouts):
            if getattr(rollouts, f.name) is not None:
                state[f"rollouts.{f.name}"] = getattr(rollouts, f.name)
        state.update({k: v for k, v in self._store.items() if k != "rollouts"})
        return state

    def load_state_dict(self, state: dict | None, step: int) -> None:
        """Take back :meth:`state_dict`'s store (on this process's device) for a run resumed at ``step``."""
        collection, position = divmod(step, self.steps_per_epoch)
        if position == 0:
            return
        if state is None or int(state["collection"]) != collection:
            raise ValueError(f"--resume: the checkpoint at step {step} lacks the rollouts of collection {collection} "
                             f"(in use until step {(collection + 1) * self.steps_per_epoch}); it cannot be resumed "
                             "exactly: start from an earlier checkpoint or a new SAVE_DIR")
        prefix = "rollouts."
        rollouts = Rollouts(**{k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        self._store = {"rollouts": rollouts,
                       **{k: v for k, v in state.items() if not k.startswith(prefix) and k != "collection"}}
        self._collection = collection

"""The interface every training objective implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.seq2seq import Seq2SeqExamples
from ..engine.batches import SupervisedBatches
from ..models.base import IGNORE_INDEX


@dataclass
class ObjectiveOutput:
    """``loss_sum``: differentiable sum of the per-unit losses of one micro-batch; ``metrics``: detached sums over
    the same units of the loss's terms, as tensors (the loop sums them between metric lines and logs each divided by
    the global unit count, beside ``loss``)."""

    loss_sum: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass(frozen=True)
class Processes:
    """Where an objective's batch source and evaluation run, as the engine sets it up: this process's ``rank`` of
    ``world_size``, its ``device``, and ``sampling``, the engine's scope for models that decode together
    (:class:`minillm.engine.gathering.SamplingScope`: ``gathered()`` around a block of sampling, ``all_done`` the
    stopping rule to pass to decoding loops), so that no objective needs to know how parameters are sharded."""

    rank: int
    world_size: int
    device: torch.device
    sampling: Any


class Objective:
    """Base class: ``units(batch)`` counts what ``loss_sum`` sums over; ``__call__`` computes it.

    The engine asks the objective for its training data (:meth:`batch_source`: gold or teacher-made pairs by
    default; MiniLLM samples its own) and for figures beyond the shared evaluation (:meth:`extra_evaluation`, also
    at step 0 when ``evaluate_at_start``), and trains the model in eval mode when ``uses_dropout`` is False.
    ``frozen_models`` are the models loaded through ``load_frozen_model`` that sample with the student (the
    engine's sampling scope covers them).
    """

    uses_dropout = True
    evaluate_at_start = False
    frozen_models: list = []

    def __init__(self, config, adapter, load_frozen_model=None):
        self.config = config
        self.adapter = adapter

    def units(self, batch: dict) -> int:
        """Target tokens of the batch: the normaliser of token-level losses."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def __call__(self, model, batch: dict) -> ObjectiveOutput:
        raise NotImplementedError

    def batch_source(self, model, config, processes: Processes):
        """Length-bucketed (prompt, target) pairs of ``--data-dir``'s training round (a batch source as described
        in :mod:`minillm.engine.batches`); ``model`` is the module the engine will wrap."""
        examples = Seq2SeqExamples(config.data_dir, config.train_round, "train", config.max_prompt_length,
                                   config.max_target_length)
        source = SupervisedBatches(examples, config.batch_size, config.grad_acc, processes.rank, processes.world_size,
                                   config.seed, config.bucket_window, self.adapter.pad_token_id)
        if source.steps_per_epoch == 0:
            raise ValueError(f"--data-dir {config.data_dir}: {len(examples)} training examples in round "
                             f"{config.train_round}, fewer than one global batch ({source.global_batch_size} = "
                             f"--batch-size {config.batch_size} x {processes.world_size} processes x --grad-acc "
                             f"{config.grad_acc}); lower --batch-size or --grad-acc, or start fewer processes (NUM_GPUS)")
        return source

    def extra_evaluation(self, model, config, processes: Processes) -> dict | None:
        """Figures of this objective's own beside the shared evaluation (summed over processes and final), or
        None (the supervised objectives)."""
        return None

    def extra_summary(self, figures: dict) -> str:
        """The clause of the evaluation's summary line for :meth:`extra_evaluation`'s figures."""
        return ""

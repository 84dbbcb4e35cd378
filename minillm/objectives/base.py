"""The interface every training objective implements."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.adapter import IGNORE_INDEX


@dataclass
class ObjectiveOutput:
    """``loss_sum``: differentiable sum of the per-unit losses of one micro-batch; ``metrics``: detached sums over
    the same units of the loss's terms, as tensors (the loop sums them between metric lines and logs each divided by
    the global unit count, beside ``loss``)."""

    loss_sum: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


class Objective:
    """Base class: ``units(batch)`` counts what ``loss_sum`` sums over; ``__call__`` computes it.

    ``on_policy`` objectives (MiniLLM) make their own training data from prompts: the engine calls their
    ``collect``, ``micro_batch`` and ``evaluation_metrics`` (see :mod:`minillm.engine.batches`) and, when
    ``uses_dropout`` is False, trains the model in eval mode. ``frozen_models`` are the models they loaded
    through ``load_frozen_model`` that sample with the student (gathered with it under ZeRO-3).
    """

    on_policy = False
    uses_dropout = True
    frozen_models: list = []

    def __init__(self, config, adapter, load_frozen_model=None):
        self.config = config
        self.adapter = adapter

    def units(self, batch: dict) -> int:
        """Target tokens of the batch: the normaliser of token-level losses."""
        return int((batch["labels"] != IGNORE_INDEX).sum())

    def __call__(self, model, batch: dict) -> ObjectiveOutput:
        raise NotImplementedError

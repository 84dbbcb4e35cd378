"""Supervised fine-tuning on the gold target (``--type sft``)."""

from __future__ import annotations

from ..losses import token_cross_entropy
from .base import Objective, ObjectiveOutput


class SFTObjective(Objective):
    """``L = -(1/N) sum_{b,t valid} log q(y_bt | y_b<t, x_b)``, N = target tokens in the global batch."""

    def __call__(self, model, batch: dict) -> ObjectiveOutput:
        logits = self.adapter.logits(model, batch)
        nll_sum, _ = token_cross_entropy(logits, batch["labels"])
        return ObjectiveOutput(nll_sum)  # one term: the logged loss is the NLL

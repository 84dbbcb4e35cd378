"""Word-level knowledge distillation on the gold target (``--type kd``)."""

from __future__ import annotations

import functools

import torch

from ..divergences import DIVERGENCES
from ..losses import token_cross_entropy
from ..models.base import IGNORE_INDEX
from .base import Objective, ObjectiveOutput

# --kd-loss -> the flag that sets its weight and the divergence's keyword for it
_WEIGHT_FLAGS = {"jsd": ("jsd_beta", "beta"), "sfkl": ("skew_alpha", "alpha"), "srkl": ("skew_alpha", "alpha")}


class KDObjective(Objective):
    """``L = (1 - r) CE + r D``, both summed over the valid target tokens of the micro-batch (the loop divides by
    the global count), with ``r = --kd-ratio``:

    - ``CE = -sum_t log q(y_t | y_<t, x)`` on the gold target, as in SFT;
    - ``D = sum_t D(p(. | y_<t, x), q(. | y_<t, x))``, the ``--kd-loss`` divergence of :mod:`minillm.divergences`
      between the frozen teacher p and the student q at every teacher-forced gold position (``fkl`` is
      ``KL(p || q)``), at ``--kd-temperature``.

    The teacher runs once per micro-batch, without gradient (so no activations are kept for it), on the same
    batch through the same adapter; it is provided by the engine (``load_frozen_model``), which puts it in eval
    mode, in the run's precision, sharded under ZeRO-3, and checks that its vocabulary is the student's.
    """

    def __init__(self, config, adapter, load_frozen_model):
        super().__init__(config, adapter)
        self.teacher = load_frozen_model(config.teacher_model_path)
        weight = _WEIGHT_FLAGS.get(config.kd_loss)
        extra = {} if weight is None else {weight[1]: getattr(config, weight[0])}
        self.divergence = functools.partial(DIVERGENCES[config.kd_loss], temperature=config.kd_temperature,
                                            reduction="sum", **extra)
        self.ratio = config.kd_ratio

    def __call__(self, model, batch: dict) -> ObjectiveOutput:
        logits = self.adapter.logits(model, batch)
        with torch.no_grad():
            teacher_logits = self.adapter.logits(self.teacher, batch)
        ce_sum, _ = token_cross_entropy(logits, batch["labels"])
        kd_sum = self.divergence(logits, teacher_logits, batch["labels"] != IGNORE_INDEX)
        loss_sum = (1.0 - self.ratio) * ce_sum + self.ratio * kd_sum
        return ObjectiveOutput(loss_sum, {"ce": ce_sum.detach(), "kd": kd_sum.detach()})

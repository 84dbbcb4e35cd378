"""Sequence-level KD (``--type seqkd``): training on the teacher's outputs."""

from __future__ import annotations

from .base import Objective, ObjectiveOutput
from .kd import KDObjective
from .sft import SFTObjective


class SeqKDObjective(Objective):
    """SFT on targets the teacher generated (Kim & Rush, 2016), ``L = -sum_t log q(y~_t | y~_<t, x)`` with
    ``y~ ~ p(. | x)`` (greedy or sampled, fixed before training by ``generate_data_seqkd.sh``). With
    ``--kd-ratio r > 0`` the loss is word-level KD on those targets, ``(1 - r) CE + r D(p || q)``
    (:class:`KDObjective`), and the teacher is loaded; with ``r = 0`` (the default for seqkd) it is not.

    Nothing here reads files: that the data's training targets are the teacher's is checked by the run
    configuration, from the data folder's ``meta.json``.
    """

    def __init__(self, config, adapter, load_frozen_model=None):
        super().__init__(config, adapter)
        self.loss = (KDObjective(config, adapter, load_frozen_model) if config.kd_ratio > 0
                     else SFTObjective(config, adapter))
        self.teacher = getattr(self.loss, "teacher", None)  # the engine's evaluations score options against it

    def __call__(self, model, batch: dict) -> ObjectiveOutput:
        return self.loss(model, batch)

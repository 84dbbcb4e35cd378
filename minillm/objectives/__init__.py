"""Training objectives: what a micro-batch costs, independent of DeepSpeed, files and the loop.

An objective is built once from the run configuration and is then called by the loop on every micro-batch. One
that needs frozen models (a teacher) asks for them through ``load_frozen_model(path)``, which the engine provides:
precision, device placement and ZeRO-3 sharding stay the engine's business. The loop owns the optimiser, the data and the
normalisation: an objective returns the *sum* of its per-unit losses and says how many units (target tokens, for
the token-level objectives) a batch holds, so the loop can divide by the count over the whole global batch.
"""

from __future__ import annotations

from .base import Objective, ObjectiveOutput, Processes
from .kd import KDObjective
from .minillm import MiniLLMObjective
from .seqkd import SeqKDObjective
from .sft import SFTObjective

OBJECTIVES: dict[str, type[Objective]] = {"sft": SFTObjective, "kd": KDObjective, "seqkd": SeqKDObjective,
                                          "minillm": MiniLLMObjective}


def build_objective(name: str, config, adapter, load_frozen_model=None) -> Objective:
    if name not in OBJECTIVES:
        raise ValueError(f"--type {name}: unknown objective; known: {', '.join(OBJECTIVES)}")
    return OBJECTIVES[name](config, adapter, load_frozen_model)


__all__ = ["OBJECTIVES", "Objective", "ObjectiveOutput", "Processes", "build_objective"]

"""MiniLLM (``--type minillm``): the objective (:mod:`.objective`), the two-model rollouts it samples
(:mod:`.rollouts`), its policy-gradient pieces (:mod:`.policy_gradient`) and its batch source (:mod:`.batches`)."""

from .objective import MiniLLMObjective

__all__ = ["MiniLLMObjective"]

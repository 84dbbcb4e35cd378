"""Optimizer steps with a non-finite loss or gradient: skipped, counted, and ``--max-nonfinite-steps`` in a row stop
the run.

Skipping. Every optimizer the trainer can run skips a step whose global gradient norm is not finite and leaves the
weights, the Adam moments and the step count as they were: :class:`minillm.engine.clipped_adamw.ClippedAdamW`
(fp32, ZeRO 0), :class:`minillm.engine.master_weights.BF16MasterWeightAdamW` (bf16, ZeRO 0), and DeepSpeed's ZeRO
1-3 and bf16 optimizers (their ``overflow``). The norm is taken after the gradients are all-reduced, so every rank
makes the same decision. DeepSpeed's engine reads ``overflow`` after the optimizer's step: the step counts as not
applied (``engine.was_step_applied()``), its gradients are cleared, and the learning-rate schedule does not advance.

The learning rate stays where it was on a skipped step: the schedule counts updates, so a skip during warmup does not
raise the rate of the next real update, and a resumed run restores the schedule from ``last/`` (DeepSpeed saves it)
rather than recomputing it from the step. The cost: a run with k skipped steps ends its cosine k updates short of
``--lr-min``.

The loss. A non-finite loss nearly always gives a non-finite gradient, but not always (a NaN added to the loss by a
term without a gradient leaves the gradient finite), and a NaN loss on one rank must skip the step on every rank. So
the trainer sums over the ranks a flag "this rank's loss of the step is not finite" before the step's last backward
(:func:`last_backward_scale`); where any rank set it, that backward is multiplied by NaN, which makes the gradient
non-finite on every rank, and the one test above skips the step: one rule, whatever the optimizer.

Stopping. ``--max-nonfinite-steps`` skipped steps in a row raise :class:`NonFiniteSteps`, whose message is the one
line ``minillm.finetune`` prints (exit status 3). The run stops before the evaluation and the checkpoints of that
step: ``last/`` keeps the last periodic checkpoint, which was written after an applied update (a skipped step never
changes the weights, so no checkpoint ever holds weights updated by a non-finite gradient).
"""

from __future__ import annotations

import torch

from .distributed import all_reduce_sum_


class NonFiniteSteps(Exception):
    """``--max-nonfinite-steps`` optimizer steps in a row had a non-finite loss or gradient: the run stops."""


def last_backward_scale(step_loss: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The factor of the step's last backward and the number of ranks whose loss of the step (``step_loss``, this
    rank's sum over its micro-batches) is not finite: ``scale``, or NaN where that number is not 0, so that every
    rank's gradient is non-finite and the optimizer skips the step. Both are device tensors (one all-reduce of a
    scalar, no host synchronisation)."""
    nonfinite_ranks = (~torch.isfinite(step_loss)).to(torch.float32).reshape(1)
    all_reduce_sum_(nonfinite_ranks)
    factor = torch.where(nonfinite_ranks[0] > 0, torch.tensor(float("nan"), device=step_loss.device),
                         torch.tensor(scale, device=step_loss.device))
    return factor, nonfinite_ranks[0]


def skipped_line(step: int, nonfinite_ranks: int, grad_norm, in_a_row: int, total: int, limit: int) -> str:
    """The line logged for a skipped step: where the non-finite value was, and how far the run is from stopping."""
    cause = (f"non-finite loss on {nonfinite_ranks} rank(s)" if nonfinite_ranks
             else f"non-finite gradient (norm {grad_norm})")
    return (f"train: step {step}: {cause}; update skipped (weights, optimizer state and learning rate unchanged), "
            f"{in_a_row} in a row, {total} in all; {limit} in a row stop the run (--max-nonfinite-steps)")


def stop_message(step: int, in_a_row: int, last_saved: int | None, last_dir) -> str:
    """The one line a run stopped by ``in_a_row`` skipped steps ends with."""
    checkpoint = (f"{last_dir} (step {last_saved}) is the last checkpoint, written after an applied update: resume "
                  "from it with --resume and a lower --lr, or check the data of those steps"
                  if last_saved is not None else f"no checkpoint was written to {last_dir} before it")
    return (f"stopped at step {step}: {in_a_row} optimizer steps in a row (steps {step - in_a_row + 1}-{step}) had a "
            f"non-finite loss or gradient and were skipped (--max-nonfinite-steps {in_a_row}); {checkpoint}")

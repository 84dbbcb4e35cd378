"""ZeRO-3 and decoding: models that sample together, token by token, with partitioned parameters.

Under ZeRO-3 every model call gathers its layers' parameters collectively, so a decoding loop of many small calls
either gathers every parameter once for the whole loop (when they fit), or decodes in lockstep: every process makes
the same calls until every sequence on every process has ended. :class:`SamplingScope` makes that choice once per
run and hands it to whatever samples (an objective's batch source and evaluation), which need not know ZeRO-3.
"""

from __future__ import annotations

import contextlib

import torch

from .distributed import all_reduce_sum_


def every_process_done(done: torch.Tensor) -> bool:
    """Whether every sequence on every process has ended (one all-reduce): decoding in lockstep, for ZeRO-3 models
    that gather parameters collectively at every call."""
    return all_reduce_sum_((~done).sum().double()).item() == 0


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


class SamplingScope:
    """How ``models`` (the student and the frozen models that sample with it) decode together in this run.

    ``gathered()``: a context manager for a block of sampling (every parameter gathered once under ZeRO-3 when they
    fit and ``gather_for_sampling`` allows it, else nothing); ``all_done``: the stopping rule for decoding loops,
    None (every sequence of the local batch ended) unless ZeRO-3 gathers per call, then :func:`every_process_done`.
    """

    def __init__(self, models: list, zero3: bool, gather_for_sampling: bool, device):
        self.models, self.zero3 = models, zero3
        self.gather = zero3 and gather_for_sampling and gather_fits(models, device)
        self.all_done = every_process_done if zero3 and not self.gather else None

    def gathered(self):
        return parameters_gathered(self.models, self.gather)

    def describe(self) -> str:
        """A clause for the run's description (empty without ZeRO-3)."""
        if self.gather:
            return ", the student's and the teacher's parameters gathered once per collection (ZeRO-3)"
        if self.zero3:
            return (", WARNING: ZeRO-3 without gathering the student's and teacher's parameters for sampling (they do "
                    "not fit in 80 % of the free accelerator memory, or --no-gather-for-sampling): decoding in "
                    "lockstep, gathering layer by layer at every call (slower)")
        return ""


def shard_for_inference(model, zero_optimization: dict):
    """``model`` (frozen, in eval mode) inside a DeepSpeed ZeRO-3 inference engine (the trainer's ZeRO-3 teachers,
    evaluation and SeqKD generation): every parameter is partitioned over the processes of the group (each keeps 1/P
    of it, on its device; ``offload_param`` from ``zero_optimization`` keeps the partitions in CPU memory instead) and
    gathered a layer at a time for each forward call, then released. Every process must therefore make the same calls (the evaluation
    and the SeqKD generation pad their shares and pass ``synced_gpus=True`` to ``generate``). The engine's bf16
    follows the model's dtype. Returns the engine; pass ``engine.module`` (the bare model, whose hooks gather)."""
    import deepspeed

    zero = {key: value for key, value in zero_optimization.items() if key != "offload_optimizer"}  # no optimizer
    config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {**zero, "stage": 3},
              "bf16": {"enabled": next(model.parameters()).dtype == torch.bfloat16},
              "steps_per_print": 10**9, "wall_clock_breakdown": False}
    model.requires_grad_(False).eval()
    engine = deepspeed.initialize(model=model, config=config)[0]  # no optimizer: parameters sharded only
    engine.eval()
    return engine


def parameters_held(model) -> tuple[int, int]:
    """``(parameters of the model, elements this process holds)``: a ZeRO-3 parameter counts its own partition
    (the whole tensor when it stays whole, below ``stage3_param_persistence_threshold``), any other its size."""
    total = held = 0
    for parameter in model.parameters():
        if hasattr(parameter, "ds_numel"):
            total += parameter.ds_numel
            held += parameter.ds_numel if getattr(parameter, "ds_persist", False) else parameter.ds_tensor.numel()
        else:
            total += parameter.numel()
            held += parameter.numel()
    return total, held

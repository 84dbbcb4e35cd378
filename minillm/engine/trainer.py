"""Training: :func:`setup` builds a :class:`Run` (processes, student, objective, batch source, DeepSpeed engine,
state, log), :func:`loop` trains it, read top to bottom; neither knows which objective or model family it runs.

Per optimizer step: the objective's batch source (:meth:`minillm.objectives.Objective.batch_source`, interface in
:mod:`minillm.engine.batches`) gives each rank its ``grad_acc`` micro-batches, fixed by the seed and the step:
length-bucketed rows of the global batch (``batch_size x processes x grad_acc`` examples) for SFT, KD and SeqKD,
or stored rollouts, collected with the current student every few steps, for MiniLLM; the objective returns summed
losses; the loop divides by the unit count of the *global* batch (one all-reduce of a scalar), so the update is the
same whatever the split over processes and accumulation steps:

    loss passed to DeepSpeed = loss_sum x (world_size x grad_acc) / N_global

DeepSpeed divides by ``grad_acc`` and averages gradients over ranks, which leaves ``sum(loss_sum) / N_global``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

from .. import console
from ..data.seq2seq import read_meta
from ..evaluation import check_split, evaluate, format_table
from ..faults import kill_point
from ..models import adapter_for, check_tokenizer_matches, load_model, load_tokenizer
from ..objectives import Processes, build_objective
from .checkpoint import find_checkpoint, load_source_state, load_training_state, save_checkpoint
from .config import TrainConfig
from .clipped_adamw import ClippedAdamW
from .deepspeed_config import (check_precision, clipping_in_trainer, engine_config, load_deepspeed_config,
                               master_weights_in_trainer, offloads_optimizer, precision, zero_stage)
from .distributed import all_reduce_sum, device_for, init_distributed
from .gathering import SamplingScope, shard_for_inference
from .master_weights import BF16MasterWeightAdamW
from .nonfinite import NonFiniteSteps, last_backward_scale, skipped_line, stop_message
from .run_log import RunLog

# --select-by -> (overall figure, +1 if higher is better else -1)
SELECT_METRIC = {"loss": ("loss", -1), "accuracy": ("accuracy_rank", +1), "rougeL": ("rougeL", +1)}


def selections(config: TrainConfig) -> dict[str, str]:
    """Checkpoint folder -> the dev metric that picks it: ``best`` by ``--select-by`` (auto resolved from the
    data), and ``best_<metric>`` by ``--also-select-by`` (kept even when it is the same metric, so that a recipe
    that starts from ``best_loss/`` finds it whatever ``--select-by`` is)."""
    folders = {"best": config.selection_metric()}
    if config.also_select_by is not None:
        folders[f"best_{config.also_select_by}"] = config.also_select_by
    return folders


def improves(value: float, best: float | None, metric: str) -> bool:
    """Whether ``value`` replaces ``best``. Ties go to the later step: with equal dev scores, the checkpoint that
    trained longer is kept, so a method is not held at an early step by a flat stretch of its curve."""
    _, sign = SELECT_METRIC[metric]
    return best is None or sign * (value - best) >= 0


def lr_factor(step: int, total_steps: int, warmup_steps: int, kind: str, min_ratio: float) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warmup ``(step + 1) / warmup`` over the first
    ``warmup`` steps, then constant, or cosine from 1 down to ``min_ratio`` at ``total_steps``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if kind == "constant":
        return 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def parameter_groups(model, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only; biases and norm scales (1-D) are not decayed."""
    params = [p for p in model.parameters() if p.requires_grad]
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]


def build_optimizer(model, config: TrainConfig, ds_config: dict):
    groups = parameter_groups(model, config.weight_decay)
    if offloads_optimizer(ds_config):  # ZeRO-Offload steps on the CPU: DeepSpeed's vectorised Adam
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        return DeepSpeedCPUAdam(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, adamw_mode=True)
    if master_weights_in_trainer(ds_config):  # casts the model to bf16 and keeps the fp32 masters
        return BF16MasterWeightAdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
                                     max_grad_norm=ds_config["gradient_clipping"])
    if clipping_in_trainer(ds_config):  # fp32 without ZeRO
        return ClippedAdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps,
                            max_grad_norm=ds_config["gradient_clipping"])
    # fused: one kernel over all tensors (CPU and GPU); the default per-tensor loop is several times slower on a CPU
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, fused=True)


def load_student(config: TrainConfig, device: torch.device):
    """The model to train, in fp32, and its tokenizer (one-line ValueErrors naming the flag when they do not load),
    checked against the data's ``meta.json`` and the model's embedding before anything trains
    (:func:`minillm.models.check_tokenizer_matches`): a folder without tokenizer files or with another tokenizer is
    refused, not trained with transformers' fallback tokenizer."""
    tokenizer_flag = "--tokenizer-path" if config.tokenizer_path else "--model-path"
    tokenizer_path = config.tokenizer_path or config.model_path
    tokenizer = load_tokenizer(tokenizer_path, tokenizer_flag)
    model = load_model(config.model_path, dtype=torch.float32, attn_implementation=config.attn_implementation,
                       fused_kernels=config.fused_kernels, device_type=device.type, dropout=config.dropout,
                       allow_pickle=config.allow_pickle_weights)
    check_tokenizer_matches(tokenizer, model, read_meta(config.data_dir), tokenizer_flag=tokenizer_flag,
                            tokenizer_path=tokenizer_path, model_flag="--model-path", model_path=config.model_path,
                            data_dir=config.data_dir)
    return model, tokenizer


def enable_gradient_checkpointing(model) -> list[str]:
    """``--gradient-checkpointing``: every transformer layer of the student (Hugging Face's
    ``GradientCheckpointingLayer``, the blocks transformers checkpoints: T5Block, GPT2Block, OPTDecoderLayer,
    LlamaDecoderLayer) keeps only its inputs in a forward pass with gradients and recomputes its activations in
    backward, under torch's non-reentrant checkpoint (which restores the RNG state for the replay, so dropout draws
    the same masks, the CPU dropout of :mod:`minillm.models.fused` included). Returns the layers' class names.

    The rule is the gradients and the key-value cache, not the mode: a call with gradients on and no cache among
    its arguments is checkpointed, in train mode (SFT, KD, SeqKD) and in eval mode (MiniLLM's training, which runs
    without dropout); any other call runs as it is, so sampling, generation and evaluation (no gradients) keep their
    cache, and a pass that writes a cache is never replayed (it would write it twice).

    Hugging Face's own switch (``activation_checkpointing_enable``, transformers 5's name for
    ``gradient_checkpointing_enable``; the same layers, the same checkpoint function) is not used: its layers
    checkpoint only in train mode, so MiniLLM's eval-mode training would keep every activation; and with it on,
    GPT-2 withholds its cache from its layers in train mode even without gradients (``GPT2Model`` tests only
    ``gradient_checkpointing and training``), so decoding a train-mode GPT-2 would not see the past tokens."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError(f"--gradient-checkpointing: {type(model).__name__} has no layer that can be checkpointed")
    for layer in layers:
        # a method bound to the layer (copy.deepcopy rebinds it to the copy) in front of the class's forward, so the
        # layer's own module hooks (ZeRO-3's parameter gathering) stay outside the checkpoint, as in transformers
        layer.forward = types.MethodType(_checkpointed_forward, layer)
    return [type(layer).__name__ for layer in layers]


def _checkpointed_forward(layer, *args, **kwargs):
    """A layer's forward under ``--gradient-checkpointing``: the class's forward, checkpointed when gradients are on
    and no key-value cache is among the arguments (see :func:`enable_gradient_checkpointing`)."""
    from torch.utils.checkpoint import checkpoint
    from transformers.cache_utils import Cache

    forward = type(layer).forward.__get__(layer)
    if not torch.is_grad_enabled() or any(isinstance(value, Cache) for value in (*args, *kwargs.values())):
        return forward(*args, **kwargs)
    return checkpoint(functools.partial(forward, **kwargs), *args, use_reentrant=False)


def load_frozen_model(path: str, config: TrainConfig, student, ds_config: dict, device: torch.device):
    """A frozen model for an objective (a teacher): eval mode, no gradients, in the run's precision (bf16 or fp32),
    with the student's attention and fused kernels; sharded by a ZeRO-3 inference engine when the run is ZeRO-3
    (so a large teacher fits beside the student), else on ``device``. Stops before training if its vocabulary
    differs from the student's."""
    dtype = torch.bfloat16 if precision(ds_config) == "bf16" else torch.float32
    frozen = load_model(path, dtype=dtype, attn_implementation=student.config._attn_implementation,
                        fused_kernels=config.fused_kernels, device_type=device.type, flag="--teacher-model-path",
                        allow_pickle=config.allow_pickle_weights)
    if frozen.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"--teacher-model-path {path}: vocabulary of {frozen.config.vocab_size} tokens but the "
                         f"student ({config.model_path}) has {student.config.vocab_size}; teacher and student must "
                         "share one tokenizer (every size of a family has one vocabulary: Flan-T5 32128, GPT-2 "
                         "50257, OPT 50272, LLaMA 32000)")
    frozen.requires_grad_(False).eval()
    if zero_stage(ds_config) == 3:
        return shard_for_inference(frozen, {"stage": 3})
    return frozen.to(device)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _to_device(batch: dict, device) -> dict:
    """Tensors moved to ``device``, nested dicts (a gold batch riding with rollouts) too; other values as they are."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else
            _to_device(v, device) if isinstance(v, dict) else v for k, v in batch.items()}


def _new_window(device) -> dict:
    """Sums over the steps since the last metric line: loss and the objective's metrics (device tensors), target
    units, real tokens and computed cells, optimizer steps; and the start time."""
    return {"loss": torch.zeros((), device=device), "metrics": {}, "units": 0.0, "real": 0.0, "cells": 0.0,
            "steps": 0, "skipped": 0, "start": time.perf_counter()}


@dataclasses.dataclass
class Run:
    """A configured run, ready for :func:`loop`: made by :func:`setup`."""

    config: TrainConfig
    rank: int
    world_size: int
    device: torch.device
    tokenizer: object
    objective: object
    processes: Processes
    source: object  # the objective's batch source (minillm.engine.batches)
    engine: object  # the DeepSpeed engine around the student
    scheduler: object
    token_counts: object  # the adapter's (real tokens, computed cells) of a micro-batch
    log: RunLog
    state: dict  # the trainer state, saved with every checkpoint
    total_steps: int
    steps_per_epoch: int  # steps per rollout collection for objectives that sample their data
    eval_interval: int
    save_interval: int

    @property
    def save_dir(self) -> Path:
        return Path(self.config.save_dir)


def train(config: TrainConfig) -> dict:
    """Run training as configured; returns the trainer state at the end (step, best metric and step)."""
    run = setup(config)
    if run.state["step"] == run.total_steps:  # a finished run resumed again: its last/ and best/ stand as they are
        run.log.print(f"train: {run.save_dir / 'last'} is already at step {run.total_steps} of {run.total_steps}; "
                      "nothing to train")
        run.log.close()
        return run.state
    return loop(run)


def setup(config: TrainConfig) -> Run:
    """Processes, student, objective (and its frozen models), batch source, optimizer and DeepSpeed engine, trainer
    state (resumed from ``last/`` with ``--resume``) and the run log, whose first lines describe the run."""
    console.quiet_libraries()  # before deepspeed is imported (init_distributed) and any model is loaded
    rank, world_size, local_rank = init_distributed(config.collective_timeout)
    device = device_for(local_rank)
    seed_everything(config.seed + rank)  # dropout differs per rank; the data order uses config.seed as is

    import deepspeed

    model, tokenizer = load_student(config, device)
    checkpointed = enable_gradient_checkpointing(model) if config.gradient_checkpointing else None
    ds_config = load_deepspeed_config(config.deepspeed_config, config.batch_size, config.grad_acc, world_size)
    check_precision(ds_config, model.config.model_type, config.deepspeed_config)
    adapter = adapter_for(model, tokenizer)
    objective = build_objective(config.type, config, adapter,
                                lambda path: load_frozen_model(path, config, model, ds_config, device))
    meta = read_meta(config.data_dir)
    # the split every evaluation reads, checked now rather than at the first evaluation, after training steps
    check_split(config.data_dir, config.eval_split, config.eval_rounds)
    # `model` is the module the DeepSpeed engine wraps (in place, also when ZeRO-3 partitions it)
    sampling = SamplingScope([model, *objective.frozen_models], zero_stage(ds_config) == 3,
                             config.gather_for_sampling, device)
    processes = Processes(rank, world_size, device, sampling)
    source = objective.batch_source(model, config, processes)
    steps_per_epoch = source.steps_per_epoch
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    eval_interval = config.eval_interval or steps_per_epoch

    optimizer = build_optimizer(model, config, ds_config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, total_steps, config.warmup_steps, config.scheduler, config.lr_min / config.lr))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=engine_config(ds_config))
    if world_size == 1 and zero_stage(ds_config) == 0:
        # Nothing to reduce; DeepSpeed would still copy every gradient into one flat buffer, all-reduce it with
        # itself and copy it back, every step.
        engine.enable_backward_allreduce = False

    state = initial_state(config, engine, source, total_steps, world_size, device)
    log = RunLog(Path(config.save_dir), enabled=rank == 0, resumed_step=state["step"] if config.resume else None,
                 resumed_lines=state.get("log_lines") if config.resume else None)
    log.print(f"train: {source.data_summary}, {world_size} process(es), "
              f"global batch {config.batch_size * world_size * config.grad_acc}, {steps_per_epoch} steps/epoch, "
              f"{total_steps} steps, {precision(ds_config)}, "
              f"ZeRO {ds_config.get('zero_optimization', {}).get('stage', 0)}, "
              f"data {meta.get('template', '?')}/{meta.get('target', '?')}"
              + (f", resumed at step {state['step']}" if config.resume else ""))
    if checkpointed is not None:
        log.print(f"train: gradient checkpointing: the student's {len(checkpointed)} layers "
                  f"({', '.join(sorted(set(checkpointed)))}) recompute their activations in backward")
    description = source.describe()
    if description is not None:
        log.print(description)
    warning = warmup_warning(config, steps_per_epoch, total_steps)
    if warning is not None and rank == 0:
        print(warning, file=sys.stderr)
    run = Run(config, rank, world_size, device, tokenizer, objective, processes, source, engine, scheduler,
              adapter.token_counts, log, state, total_steps, steps_per_epoch, eval_interval,
              config.save_interval or eval_interval)
    log.write_config(run_settings(run), state["step"])
    return run


def warmup_warning(config: TrainConfig, steps_per_epoch: int, total_steps: int) -> str | None:
    """The line for a run that ``--epochs`` sets the length of and whose warmup is not shorter than it (with
    ``--max-steps``, :meth:`TrainConfig.validate` warns before anything loads), else None."""
    if config.max_steps or config.warmup_steps < total_steps:
        return None
    reach = "never reaches --lr" if config.warmup_steps > total_steps else "reaches --lr only at the last step"
    return (f"--warmup-steps {config.warmup_steps} is not shorter than the run (--epochs {config.epochs} x "
            f"{steps_per_epoch} steps = {total_steps} steps): the learning rate {reach}")


def run_settings(run: Run) -> dict:
    """The run's settings as it runs them: every flag (``--select-by`` resolved) and what setup derived from them
    (steps, processes, global batch)."""
    config = run.config
    return {**dataclasses.asdict(config), "select_by": run.state["select_by"], "total_steps": run.total_steps,
            "steps_per_epoch": run.steps_per_epoch, "world_size": run.world_size,
            "global_batch_size": config.batch_size * run.world_size * config.grad_acc}


def final_figures(state: dict, metrics: dict) -> dict:
    """The dev figures a finished run is compared by: each selection's best value (``best_accuracy`` for best/ by
    accuracy, ``best_loss_loss`` for best_loss/) and the last evaluation's overall numbers (``last_loss``, ...)."""
    figures = {f"{folder}_{selection['select_by']}": selection["metric"]
               for folder, selection in state["selections"].items() if selection["metric"] is not None}
    figures.update({f"last_{name}": value for name, value in metrics["overall"].items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool)})
    return figures


def initial_state(config: TrainConfig, engine, source, total_steps: int, world_size: int, device) -> dict:
    """The trainer state at step 0, or the one saved in ``last/`` with ``--resume`` (its DeepSpeed state loaded
    into ``engine``, this process's RNG states restored, and the batch ``source`` given what it kept at that step,
    so that the resumed steps are those of the uninterrupted run, bit for bit). best/ is recorded as before
    (select_by, best_metric, best_step); every selection, best_<metric>/ included, in "selections": folder ->
    {"select_by", "metric" (the best value so far), "step"}."""
    selected = selections(config)
    state = {"step": 0, "total_steps": total_steps, "world_size": world_size, "select_by": selected["best"],
             "best_metric": None, "best_step": None, "skipped_steps": 0,
             "selections": {folder: {"select_by": metric, "metric": None, "step": None}
                            for folder, metric in selected.items()}}
    if config.resume:
        last = Path(config.save_dir) / "last"
        checkpoint = find_checkpoint(last)
        if checkpoint is None:
            raise ValueError(f"--resume: no complete checkpoint in {last}; start without --resume")
        state.update(load_training_state(engine, checkpoint, selected), total_steps=total_steps)
        if state["step"] > total_steps:
            raise ValueError(f"--resume: {checkpoint} is at step {state['step']}, past this run's {total_steps} "
                             "steps; raise --max-steps (or --epochs) to train on")
        source.load_state_dict(load_source_state(checkpoint, device), state["step"])
    return state


def loop(run: Run) -> dict:
    """Train from ``run.state["step"]`` to the last step: per step, the source's micro-batches, their summed losses
    scaled to the global unit count, one optimizer step (skipped when the loss or the gradient is not finite;
    ``--max-nonfinite-steps`` in a row raise :class:`minillm.engine.nonfinite.NonFiniteSteps`); metric lines,
    evaluations and checkpoints at their intervals. Returns the final trainer state."""
    config, state, log, engine = run.config, run.state, run.log, run.engine
    progress = console.progress(run.total_steps, "train", enabled=run.rank == 0, initial=state["step"], unit="steps",
                                every=config.log_interval)
    if run.objective.evaluate_at_start and state["step"] == 0:  # logged, not a candidate for best/
        log_evaluation(run, run_evaluation(run))
    window = _new_window(run.device)
    engine.train(run.objective.uses_dropout)
    metrics = None
    skipped_in_a_row, last_saved = 0, state["step"] if config.resume else None
    while state["step"] < run.total_steps:
        micro_batches = run.source.micro_batches(state["step"])
        collected = run.source.pop_stats()
        if collected is not None:
            log.write({"step": state["step"], **collected}, "rollout")
        local_units = sum(run.objective.units(b) for b in micro_batches)
        (global_units,) = all_reduce_sum([local_units], run.device)
        scale = run.world_size * config.grad_acc / global_units
        lr = run.scheduler.get_last_lr()[0]  # the rate this step uses
        step_loss, step_metrics = torch.zeros((), device=run.device), {}
        for i, batch in enumerate(micro_batches):
            real, cells = run.token_counts(batch)
            window["real"] += real
            window["cells"] += cells
            output = run.objective(engine, _to_device(batch, run.device))
            # device tensors: no host synchronisation per micro-batch
            step_loss += output.loss_sum.detach()
            for name, value in output.metrics.items():
                step_metrics[name] = step_metrics.get(name, 0.0) + value
            if i == len(micro_batches) - 1:  # NaN where any rank's loss is not finite: the step is skipped
                factor, nonfinite_ranks = last_backward_scale(step_loss, scale)
                engine.backward(output.loss_sum * factor)
            else:
                engine.backward(output.loss_sum * scale)
            kill_point("step")
            engine.step()
        if engine.was_step_applied():
            skipped_in_a_row = 0
            window["loss"] += step_loss
            for name, value in step_metrics.items():
                window["metrics"][name] = window["metrics"].get(name, 0.0) + value
            window["units"] += local_units
        else:  # the same decision on every rank (module docstring of minillm.engine.nonfinite)
            skipped_in_a_row += 1
            window["skipped"] += 1
            state["skipped_steps"] += 1
            log.print(skipped_line(state["step"] + 1, int(nonfinite_ranks), engine.get_global_grad_norm(),
                                   skipped_in_a_row, state["skipped_steps"], config.max_nonfinite_steps))
        window["steps"] += 1
        state["step"] += 1
        stopping = skipped_in_a_row == config.max_nonfinite_steps

        done = state["step"] == run.total_steps
        if state["step"] % config.log_interval == 0 or done or stopping:
            record = train_record(run, window, lr)
            log.write(record, "train")
            if record["loss"] is not None:  # None: every step of the window was skipped
                progress.set_postfix(loss=f"{record['loss']:.4f}", pad=f"{record['padding']:.2f}")
            window = _new_window(run.device)
        progress.update(1)  # after the metric line, so that a line-per-interval log shows this step's loss
        if stopping:  # before this step's evaluation and checkpoints: last/ keeps the last periodic save
            progress.close()
            log.close()
            raise NonFiniteSteps(stop_message(state["step"], skipped_in_a_row, last_saved, run.save_dir / "last"))

        metrics = None
        if state["step"] % run.eval_interval == 0 or done:
            metrics = run_evaluation(run)
            improved = select(state, metrics)
            log_evaluation(run, metrics)
            for folder in improved:
                save(run, folder, metrics, with_training_state=False)
        if state["step"] % run.save_interval == 0 or done:
            save(run, "last", metrics, with_training_state=True)
            last_saved = state["step"]
    progress.close()
    if run.rank == 0 and metrics is not None:
        log.print(format_table(metrics))
    for folder, selection in state["selections"].items():
        log.print(f"train: {run.save_dir / folder} is step {selection['step']} of {run.total_steps}, selected by "
                  f"dev {selection['select_by']} {selection['metric']:.4g} (last/: step {run.total_steps})")
    if state["skipped_steps"]:
        log.print(f"train: {state['skipped_steps']} of {run.total_steps} optimizer steps were skipped for a "
                  "non-finite loss or gradient (skipped_steps in metrics.jsonl)")
    if metrics is not None:
        log.write_hparams(run_settings(run), final_figures(state, metrics), run.total_steps)
    log.close()
    return state


def train_record(run: Run, window: dict, lr: float) -> dict:
    """The metric line of the steps in ``window``, over every process: loss and the objective's terms per unit
    over the applied steps (None when every step was skipped), the skipped steps, padding, throughput of the whole
    group (tokens are the real, non-padding, prompt and target tokens), and the gradient norm before clipping where
    the optimizer reports it."""
    names = sorted(window["metrics"])
    loss, units, real, cells, *terms = all_reduce_sum(
        [float(window["loss"]), window["units"], window["real"], window["cells"],
         *(float(window["metrics"][name]) for name in names)], run.device)
    elapsed = time.perf_counter() - window["start"]
    global_batch_size = run.config.batch_size * run.world_size * run.config.grad_acc
    per_unit = (lambda total: total / units) if units else (lambda total: None)  # units 0: every step skipped
    record = {"step": run.state["step"], "epoch": round(run.state["step"] / run.steps_per_epoch, 4),
              "loss": per_unit(loss), "lr": lr, "padding": 1.0 - real / cells,
              "steps_per_s": window["steps"] / elapsed,
              "examples_per_s": window["steps"] * global_batch_size / elapsed, "tokens_per_s": real / elapsed,
              "skipped_steps": window["skipped"], **{name: per_unit(term) for name, term in zip(names, terms)}}
    grad_norm = run.engine.get_global_grad_norm()
    if grad_norm is not None:  # that of the window's last step; None (not NaN, not JSON) when it was not finite
        record["grad_norm"] = float(grad_norm) if math.isfinite(float(grad_norm)) else None
    return record


def run_evaluation(run: Run) -> dict:
    """The shared evaluation of the student on the dev split (beside the objective's frozen teacher, if any: option
    KLs too) and the objective's own figures, stored under ``policy`` (the key checkpoints and metric files have)."""
    config = run.config
    result = evaluate(run.engine.module, run.tokenizer, config.data_dir, config.eval_split, config.eval_rounds,
                      config.eval_batch_size, config.eval_max_new_tokens, config.eval_generate,
                      config.eval_max_examples, run.objective.adapter, config.max_prompt_length,
                      config.max_target_length, teacher=getattr(run.objective, "teacher", None))
    kill_point("eval")
    metrics = {"step": run.state["step"], "overall": result["overall"], "rounds": result["rounds"]}
    extra = run.objective.extra_evaluation(run.engine.module, config, run.processes)
    if extra is not None:
        metrics["policy"] = extra
    return metrics


def select(state: dict, metrics: dict) -> list[str]:
    """Record ``metrics`` in every selection it improves (and best/'s in the state's top-level fields); returns the
    folders to save."""
    improved = []
    for folder, selection in state["selections"].items():
        value = metrics["overall"][SELECT_METRIC[selection["select_by"]][0]]
        if improves(value, selection["metric"], selection["select_by"]):
            selection.update(metric=value, step=state["step"])
            improved.append(folder)
    state.update(best_metric=state["selections"]["best"]["metric"], best_step=state["selections"]["best"]["step"])
    return improved


def log_evaluation(run: Run, metrics: dict) -> None:
    run.log.write({"step": metrics["step"], "split": run.config.eval_split, **metrics["overall"],
                   "rounds": metrics["rounds"], **metrics.get("policy", {})}, "eval")
    extra = run.objective.extra_summary(metrics["policy"]) if "policy" in metrics else None
    run.log.print(summary_line(metrics, run.state, run.state["select_by"], extra))


def save(run: Run, name: str, metrics: dict | None, with_training_state: bool) -> None:
    run.state["log_lines"] = run.log.lines  # where metrics.jsonl stands at this checkpoint (rank 0 writes both)
    save_checkpoint(run.engine, run.tokenizer, run.save_dir / name, args=dataclasses.asdict(run.config),
                    trainer_state=dict(run.state), metrics=metrics, with_training_state=with_training_state,
                    source_state=run.source.state_dict(run.state["step"]) if with_training_state else None)


def summary_line(metrics: dict, state: dict, select_by: str, extra: str | None = None) -> str:
    """One line per evaluation, with the figures the evaluation has: rank and option figures need answer options
    (ANLI; Dolly has none), generation figures ``--eval-generate``; ``extra``: the objective's clause for its own
    figures."""
    overall = metrics["overall"]
    parts = [f"eval step {metrics['step']}: loss {overall['loss']:.4f}"]
    if overall["accuracy_rank"] is not None:
        parts.append(f"acc(rank) {overall['accuracy_rank']:.1f}")
    if overall["accuracy_generate"] is not None:
        parts.append(f"acc(gen) {overall['accuracy_generate']:.1f}")
    if overall["rougeL"] is not None:
        parts.append(f"rougeL {overall['rougeL']:.1f}")
    if overall["ece"] is not None:
        parts.append(f"ECE {overall['ece']:.1f}, off-set {overall['off_option_mass']:.1f}%")
    if overall["option_rev_kl"] is not None:  # evaluated beside the objective's teacher
        parts.append(f"rKL(opt) {overall['option_rev_kl']:.4f}")
    parts += [f"{r} {m['accuracy_rank']:.1f}" for r, m in metrics["rounds"].items() if m["accuracy_rank"] is not None]
    if extra:
        parts.append(extra)
    if state["best_metric"] is not None:
        parts.append(f"best {select_by} {state['best_metric']:.4g} @ {state['best_step']}")
    return " | ".join(parts)

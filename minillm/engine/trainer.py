"""The training loop: one function, read top to bottom.

Per optimizer step: a batch source (:mod:`minillm.engine.batches`) gives each rank its ``grad_acc`` micro-batches,
fixed by the seed and the step: length-bucketed rows of the global batch (``batch_size x processes x grad_acc``
examples) for SFT, KD and SeqKD, or stored rollouts, collected with the current student every few steps, for
on-policy objectives (MiniLLM); the objective returns summed losses; the loop divides by the unit count of the *global*
batch (one all-reduce of a scalar), so the update is the same whatever the split over processes and accumulation
steps:

    loss passed to DeepSpeed = loss_sum x (world_size x grad_acc) / N_global

DeepSpeed divides by ``grad_acc`` and averages gradients over ranks, which leaves ``sum(loss_sum) / N_global``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from ..data.seq2seq import Seq2SeqExamples, read_meta
from ..evaluation import evaluate, format_table
from ..models.adapter import Seq2SeqAdapter
from ..models.fused import fuse_elementwise
from ..objectives import build_objective
from .batches import Prompts, RolloutBatches, SupervisedBatches, parameters_gathered, prompt_batches, token_cells
from .checkpoint import find_checkpoint, load_training_state, save_checkpoint
from .config import TrainConfig
from .clipped_adamw import ClippedAdamW
from .deepspeed_config import (check_precision, clipping_in_trainer, engine_config, load_deepspeed_config,
                               master_weights_in_trainer, offloads_optimizer, precision, zero_stage)
from .distributed import all_reduce_sum, device_for, init_distributed
from .master_weights import BF16MasterWeightAdamW
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
    # fused: one kernel over all tensors (CPU and GPU); the default per-tensor loop is ~9x slower on a CPU
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.adam_betas, eps=config.adam_eps, fused=True)


def load_model(config: TrainConfig, device: torch.device):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    overrides = {} if config.dropout is None else {"dropout_rate": config.dropout}
    attention = config.attn_implementation
    if attention == "auto":  # eager T5 attention: flan-t5-small steps ~5-10% faster than with SDPA on a CPU
        attention = "eager" if device.type == "cpu" else "sdpa"
    with load_errors_as_value_errors("--model-path", config.model_path):
        model = AutoModelForSeq2SeqLM.from_pretrained(config.model_path, dtype=torch.float32,
                                                      attn_implementation=attention, **overrides)
    if config.fused_kernels:
        fuse_elementwise(model, cpu=device.type == "cpu")
    with load_errors_as_value_errors("--tokenizer-path" if config.tokenizer_path else "--model-path",
                                     config.tokenizer_path or config.model_path):
        tokenizer = AutoTokenizer.from_pretrained(config.tokenizer_path or config.model_path)
    return model, tokenizer


@contextlib.contextmanager
def load_errors_as_value_errors(flag: str, path: str):
    """A checkpoint that cannot be loaded (not on the hub, offline, a folder without weights) is bad input: a
    one-line ValueError naming the flag, which finetune reports without a traceback."""
    try:
        yield
    except OSError as err:
        first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ValueError(f"{flag} {path}: cannot load it ({first_line})") from None


def load_frozen_model(path: str, config: TrainConfig, student, ds_config: dict, device: torch.device):
    """A frozen model for an objective (a teacher): eval mode, no gradients, in the run's precision (bf16 or fp32),
    with the student's attention and fused kernels; sharded by a ZeRO-3 inference engine when the run is ZeRO-3
    (so a large teacher fits beside the student), else on ``device``. Stops before training if its vocabulary
    differs from the student's."""
    import deepspeed
    from transformers import AutoModelForSeq2SeqLM

    dtype = torch.bfloat16 if precision(ds_config) == "bf16" else torch.float32
    with load_errors_as_value_errors("--teacher-model-path", path):
        frozen = AutoModelForSeq2SeqLM.from_pretrained(path, dtype=dtype,
                                                       attn_implementation=student.config._attn_implementation)
    if frozen.config.vocab_size != student.config.vocab_size:
        raise ValueError(f"--teacher-model-path {path}: vocabulary of {frozen.config.vocab_size} tokens but the "
                         f"student ({config.model_path}) has {student.config.vocab_size}; teacher and student must "
                         "share one tokenizer (all Flan-T5 sizes have 32128)")
    if config.fused_kernels:
        fuse_elementwise(frozen)
    frozen.requires_grad_(False).eval()
    if zero_stage(ds_config) == 3:
        inference = {"train_micro_batch_size_per_gpu": ds_config["train_micro_batch_size_per_gpu"],
                     "zero_optimization": {"stage": 3}, "bf16": {"enabled": dtype == torch.bfloat16}}
        engine = deepspeed.initialize(model=frozen, config=inference)[0]  # no optimizer: parameters sharded only
        engine.eval()
        return engine
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
            "steps": 0, "start": time.perf_counter()}


def train(config: TrainConfig) -> dict:
    """Run training as configured; returns the trainer state at the end (step, best metric and step)."""
    rank, world_size, local_rank = init_distributed()
    device = device_for(local_rank)
    save_dir = Path(config.save_dir)
    seed_everything(config.seed + rank)  # dropout differs per rank; the data order uses config.seed as is

    import deepspeed

    model, tokenizer = load_model(config, device)
    ds_config = load_deepspeed_config(config.deepspeed_config, config.batch_size, config.grad_acc, world_size)
    check_precision(ds_config, model.config.model_type, config.deepspeed_config)
    adapter = Seq2SeqAdapter.for_model(model)
    objective = build_objective(config.type, config, adapter,
                                lambda path: load_frozen_model(path, config, model, ds_config, device))

    meta = read_meta(config.data_dir)
    if objective.on_policy:
        train_data = Prompts(config.prompt_data_dir or config.data_dir, config.train_round, "train",
                             config.max_prompt_length)
        lm = None
        if config.lm_data_dir is not None:
            lm = SupervisedBatches(Seq2SeqExamples(config.lm_data_dir, config.train_round, "train",
                                                   config.max_prompt_length, config.max_target_length),
                                   config.batch_size, config.grad_acc, rank, world_size, config.seed,
                                   config.bucket_window, tokenizer.pad_token_id)
            if lm.steps_per_epoch == 0:
                raise ValueError(f"--lm-data-dir {config.lm_data_dir}: {len(lm.examples)} training examples in round "
                                 f"{config.train_round}, fewer than one global batch ({lm.global_batch_size})")
        # `model` is the module the DeepSpeed engine wraps (in place, also when ZeRO-3 partitions it)
        source = RolloutBatches(objective, model, train_data, lm, config, rank, world_size, device,
                                tokenizer.pad_token_id, zero_stage(ds_config) == 3)
        data_summary = f"{len(train_data)} prompts ({config.train_round})"
    else:
        train_data = Seq2SeqExamples(config.data_dir, config.train_round, "train", config.max_prompt_length,
                                     config.max_target_length)
        source = SupervisedBatches(train_data, config.batch_size, config.grad_acc, rank, world_size, config.seed,
                                   config.bucket_window, tokenizer.pad_token_id)
        if source.steps_per_epoch == 0:
            raise ValueError(f"--data-dir {config.data_dir}: {len(train_data)} training examples in round "
                             f"{config.train_round}, fewer than one global batch ({source.global_batch_size}); "
                             "lower --batch-size")
        data_summary = f"{len(train_data)} examples ({config.train_round})"
    global_batch_size = config.batch_size * world_size * config.grad_acc
    steps_per_epoch = source.steps_per_epoch  # steps per rollout collection for on-policy objectives
    total_steps = config.max_steps or config.epochs * steps_per_epoch
    eval_interval = config.eval_interval or steps_per_epoch
    save_interval = config.save_interval or eval_interval

    optimizer = build_optimizer(model, config, ds_config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(
        step, total_steps, config.warmup_steps, config.scheduler, config.lr_min / config.lr))
    engine, _, _, scheduler = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=scheduler,
                                                   config=engine_config(ds_config))
    if world_size == 1 and zero_stage(ds_config) == 0:
        # Nothing to reduce; DeepSpeed would still copy every gradient into one flat buffer, all-reduce it with
        # itself and copy it back, every step.
        engine.enable_backward_allreduce = False

    selected = selections(config)
    # best/ is recorded as before (select_by, best_metric, best_step); every selection, best_<metric>/ included, in
    # "selections": folder -> {"select_by", "metric" (the best value so far), "step"}
    state = {"step": 0, "total_steps": total_steps, "world_size": world_size, "select_by": selected["best"],
             "best_metric": None, "best_step": None,
             "selections": {folder: {"select_by": metric, "metric": None, "step": None}
                            for folder, metric in selected.items()}}
    if config.resume:
        checkpoint = find_checkpoint(save_dir / "last")
        if checkpoint is None:
            raise ValueError(f"--resume: no complete checkpoint in {save_dir / 'last'}; start without --resume")
        state.update(load_training_state(engine, checkpoint, selected), total_steps=total_steps)
        if state["step"] > total_steps:
            raise ValueError(f"--resume: {checkpoint} is at step {state['step']}, past this run's {total_steps} "
                             "steps; raise --max-steps (or --epochs) to train on")
    log = RunLog(save_dir, enabled=rank == 0, resumed_step=state["step"] if config.resume else None,
                 resumed_lines=state.get("log_lines") if config.resume else None)
    args = dataclasses.asdict(config)
    log.print(f"train: {data_summary}, {world_size} process(es), "
              f"global batch {global_batch_size}, {steps_per_epoch} steps/epoch, {total_steps} steps, "
              f"{precision(ds_config)}, ZeRO {ds_config.get('zero_optimization', {}).get('stage', 0)}, "
              f"data {meta.get('template', '?')}/{meta.get('target', '?')}"
              + (f", resumed at step {state['step']}" if config.resume else ""))
    if objective.on_policy:
        log.print(source.describe())
    if state["step"] == total_steps:  # a finished run resumed again: its last/ and best/ stand as they are
        log.print(f"train: {save_dir / 'last'} is already at step {total_steps} of {total_steps}; nothing to train")
        log.close()
        return state

    def run_evaluation() -> dict:
        result = evaluate(engine.module, tokenizer, config.data_dir, config.eval_split, config.eval_rounds,
                          config.eval_batch_size, config.eval_max_new_tokens, config.eval_generate,
                          config.eval_max_examples, adapter, config.max_prompt_length, config.max_target_length,
                          teacher=getattr(objective, "teacher", None))  # a frozen teacher: option KLs too
        metrics = {"step": state["step"], "overall": result["overall"], "rounds": result["rounds"]}
        if objective.on_policy:
            metrics["policy"] = evaluate_policy()
        return metrics

    def evaluate_policy() -> dict:
        """The objective's figures on student-only samples for this rank's share of the evaluation prompts
        (the first --eval-max-examples of each round, cut to a multiple of the process count so that every rank
        samples as many batches), summed over ranks and averaged per sequence."""
        prompts = []
        for round_name in config.eval_rounds:
            shard = Prompts(config.data_dir, round_name, config.eval_split, config.max_prompt_length)
            prompts += [shard[i] for i in range(min(len(shard), config.eval_max_examples or len(shard)))]
        mine = prompts[: len(prompts) // world_size * world_size][rank::world_size]
        generator = torch.Generator(device=device).manual_seed(config.seed)  # the same prompts and draws each time
        was_training = engine.module.training
        engine.module.eval()
        with parameters_gathered([engine.module, *objective.frozen_models], source.gather):
            sums = objective.evaluation_metrics(engine.module, prompt_batches(mine, config.chunk_size,
                                                                              tokenizer.pad_token_id, device),
                                                generator, source.all_done)
        engine.module.train(was_training)
        names = sorted(sums)
        totals = dict(zip(names, all_reduce_sum([sums[k] for k in names], device)))
        sequences = max(totals.pop("sequences"), 1.0)
        return {**{k: v / sequences for k, v in totals.items()}, "sequences": int(sequences)}

    def save(name: str, metrics: dict | None, with_training_state: bool) -> None:
        state["log_lines"] = log.lines  # where metrics.jsonl stands at this checkpoint (rank 0 writes both)
        save_checkpoint(engine, tokenizer, save_dir / name, args=args, trainer_state=dict(state), metrics=metrics,
                        with_training_state=with_training_state)

    from tqdm import tqdm

    progress = tqdm(total=total_steps, initial=state["step"], disable=rank != 0, desc="train", dynamic_ncols=True)
    if objective.on_policy and state["step"] == 0:  # where the policy starts: logged, not a candidate for best/
        start = run_evaluation()
        log.write({"step": 0, "split": config.eval_split, **start["overall"], "rounds": start["rounds"],
                   **start["policy"]}, "eval")
        log.print(summary_line(start, state, state["select_by"]))
    window = _new_window(device)
    engine.train(objective.uses_dropout)
    while state["step"] < total_steps:
        micro_batches = source.micro_batches(state["step"])
        collected = source.pop_stats()
        if collected is not None:
            log.write({"step": state["step"], **collected}, "rollout")
        local_units = sum(objective.units(b) for b in micro_batches)
        (global_units,) = all_reduce_sum([local_units], device)
        scale = world_size * config.grad_acc / global_units
        lr = scheduler.get_last_lr()[0]  # the rate this step uses
        for batch in micro_batches:
            real, cells = token_cells(batch)
            window["real"] += real
            window["cells"] += cells
            output = objective(engine, _to_device(batch, device))
            engine.backward(output.loss_sum * scale)
            engine.step()
            # device tensors: no host synchronisation per micro-batch
            window["loss"] += output.loss_sum.detach()
            for name, value in output.metrics.items():
                window["metrics"][name] = window["metrics"].get(name, 0.0) + value
        window["units"] += local_units
        window["steps"] += 1
        state["step"] += 1
        progress.update(1)

        if state["step"] % config.log_interval == 0 or state["step"] == total_steps:
            names = sorted(window["metrics"])
            loss, units, real, cells, *terms = all_reduce_sum(
                [float(window["loss"]), window["units"], window["real"], window["cells"],
                 *(float(window["metrics"][name]) for name in names)], device)
            elapsed = time.perf_counter() - window["start"]
            # throughput of the whole group; tokens are the real (non-padding) prompt and target tokens
            record = {"step": state["step"], "epoch": round(state["step"] / steps_per_epoch, 4),
                      "loss": loss / units, "lr": lr, "padding": 1.0 - real / cells,
                      "steps_per_s": window["steps"] / elapsed,
                      "examples_per_s": window["steps"] * global_batch_size / elapsed, "tokens_per_s": real / elapsed,
                      **{name: term / units for name, term in zip(names, terms)}}
            grad_norm = engine.get_global_grad_norm()  # before clipping; None where the optimizer does not report it
            if grad_norm is not None:
                record["grad_norm"] = float(grad_norm)
            log.write(record, "train")
            progress.set_postfix(loss=f"{record['loss']:.4f}", pad=f"{record['padding']:.2f}")
            window = _new_window(device)

        done = state["step"] == total_steps
        metrics = None
        if state["step"] % eval_interval == 0 or done:
            metrics = run_evaluation()
            improved = []
            for folder, selection in state["selections"].items():
                value = metrics["overall"][SELECT_METRIC[selection["select_by"]][0]]
                if improves(value, selection["metric"], selection["select_by"]):
                    selection.update(metric=value, step=state["step"])
                    improved.append(folder)
            state.update(best_metric=state["selections"]["best"]["metric"],
                         best_step=state["selections"]["best"]["step"])
            log.write({"step": state["step"], "split": config.eval_split, **metrics["overall"],
                       "rounds": metrics["rounds"], **metrics.get("policy", {})}, "eval")
            log.print(summary_line(metrics, state, state["select_by"]))
            for folder in improved:
                save(folder, metrics, with_training_state=False)
        if state["step"] % save_interval == 0 or done:
            save("last", metrics, with_training_state=True)
    progress.close()
    if rank == 0 and metrics is not None:
        log.print(format_table(metrics))
    for folder, selection in state["selections"].items():
        log.print(f"train: {save_dir / folder} is step {selection['step']} of {total_steps}, selected by dev "
                  f"{selection['select_by']} {selection['metric']:.4g} (last/: step {total_steps})")
    log.close()
    return state


def summary_line(metrics: dict, state: dict, select_by: str) -> str:
    overall = metrics["overall"]
    parts = [f"eval step {metrics['step']}: loss {overall['loss']:.4f}", f"acc(rank) {overall['accuracy_rank']:.1f}"]
    if overall["accuracy_generate"] is not None:
        parts += [f"acc(gen) {overall['accuracy_generate']:.1f}", f"rougeL {overall['rougeL']:.1f}"]
    parts.append(f"ECE {overall['ece']:.1f}, off-set {overall['off_option_mass']:.1f}%")
    if overall["option_rev_kl"] is not None:  # evaluated beside the objective's teacher
        parts.append(f"rKL(opt) {overall['option_rev_kl']:.4f}")
    parts += [f"{r} {m['accuracy_rank']:.1f}" for r, m in metrics["rounds"].items()]
    if "policy" in metrics:  # on-policy objectives: student-only samples scored by the teacher
        parts.append(f"rev_kl {metrics['policy']['rev_kl']:.3f}, len {metrics['policy']['student_length']:.2f}")
    if state["best_metric"] is not None:
        parts.append(f"best {select_by} {state['best_metric']:.4g} @ {state['best_step']}")
    return " | ".join(parts)

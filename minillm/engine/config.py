"""The run configuration: one dataclass whose fields are the command-line flags (``field_name`` -> ``--field-name``).

Resolved once at start-up, checked by :meth:`TrainConfig.validate` (every problem reported at once, one line each),
and saved as ``args.json`` in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from ..divergences import DIVERGENCES
from ..objectives import OBJECTIVES


def _flag(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    # what to train
    type: str = _flag("sft", "training objective", choices=tuple(OBJECTIVES))
    model_path: str = _flag(None, "student checkpoint: hub name or Hugging Face folder (required)")
    tokenizer_path: str = _flag(None, "tokenizer folder or hub name (default: --model-path)")
    attn_implementation: str = _flag("auto", "attention kernel: auto (eager on CPU, where torch's SDPA has no fused "
                                     "kernel for training with dropout and its fallback computes bf16 attention in "
                                     "fp32; transformers' default, sdpa, elsewhere), eager or sdpa",
                                     choices=("auto", "eager", "sdpa"))
    fused_kernels: bool = _flag(True, "swap T5's seven-operation gelu_new and five-operation T5LayerNorm for torch's "
                                "one-kernel gelu(approximate='tanh') and rms_norm (same functions), and on CPU "
                                "torch's serial bernoulli dropout for an integer-threshold one; see "
                                "minillm/models/fused.py")
    # distillation (--type kd)
    teacher_model_path: str = _flag(None, "frozen teacher checkpoint (hub name or folder; same vocabulary as the "
                                    "student); required by --type kd")
    kd_ratio: float = _flag(0.5, "weight r of the distillation term: (1 - r) CE + r D")
    kd_loss: str = _flag("fkl", "divergence D between teacher and student at each gold position "
                         "(minillm/divergences.py)", choices=tuple(DIVERGENCES))
    jsd_beta: float = _flag(0.5, "beta of --kd-loss jsd (0: forward KL, 1: reverse KL)")
    skew_alpha: float = _flag(0.1, "alpha of --kd-loss sfkl / srkl")
    kd_temperature: float = _flag(1.0, "temperature of both distributions in D")
    # data
    data_dir: str = _flag(None, "output folder of process_data_anli.sh (required)")
    train_round: str = _flag("all", "round whose train split is used", choices=("r1", "r2", "r3", "all"))
    eval_rounds: tuple = _flag(("r1", "r2", "r3"), "rounds evaluated (each reported, plus overall)", nargs="+")
    eval_split: str = _flag("dev", "split used for evaluation during training")
    max_prompt_length: int = _flag(512, "prompt tokens kept (the end is kept: hypothesis and options)")
    max_target_length: int = _flag(128, "target tokens kept")
    bucket_window: int = _flag(50, "global batches per length-sorting window (padding vs randomness)")
    # optimisation
    batch_size: int = _flag(8, "micro-batch per process")
    grad_acc: int = _flag(1, "gradient accumulation steps; global batch = batch_size x processes x grad_acc")
    lr: float = _flag(1e-4, "peak learning rate (AdamW)")
    lr_min: float = _flag(0.0, "final learning rate of the cosine schedule")
    weight_decay: float = _flag(0.01, "AdamW weight decay, applied to matrices only (dim >= 2)")
    adam_betas: tuple = _flag((0.9, 0.999), "AdamW betas", nargs=2, type=float)
    adam_eps: float = _flag(1e-8, "AdamW epsilon")
    scheduler: str = _flag("cosine", "learning-rate schedule after warmup", choices=("cosine", "constant"))
    warmup_steps: int = _flag(0, "linear warmup steps")
    epochs: int = _flag(1, "passes over the training data")
    max_steps: int = _flag(0, "stop after this many optimizer steps (0: epochs decide)")
    dropout: float = _flag(None, "override the checkpoint's dropout rate (T5: dropout_rate)", type=float)
    seed: int = _flag(42, "seed; data order uses it as is, dropout uses seed + rank")
    # evaluation, checkpoints, logging
    save_dir: str = _flag(None, "output folder: best/, last/, metrics.jsonl, tensorboard/ (required)")
    eval_interval: int = _flag(0, "evaluate every N optimizer steps (0: at the end of every epoch)")
    save_interval: int = _flag(0, "write last/ every N steps (0: at every evaluation)")
    select_by: str = _flag("loss", "metric that picks best/", choices=("loss", "accuracy", "rougeL"))
    eval_batch_size: int = _flag(32, "evaluation batch per process")
    eval_max_new_tokens: int = _flag(16, "greedy generation length in evaluation")
    eval_generate: bool = _flag(True, "also evaluate greedy generation (accuracy, Rouge-L); off: rank classification and loss only")
    eval_max_examples: int = _flag(0, "evaluate at most this many examples per round (0: all)")
    log_interval: int = _flag(10, "optimizer steps between metric lines")
    resume: bool = _flag(False, "continue from save_dir/last/ (model, optimizer, scheduler, RNG, data position)")
    # distributed / precision
    deepspeed_config: str = _flag(None, "DeepSpeed JSON (configs/deepspeed/): ZeRO stage, precision, clipping")

    def validate(self) -> None:
        problems = []
        for name in ("model_path", "data_dir", "save_dir", "deepspeed_config"):
            if getattr(self, name) is None:
                problems.append(f"--{name.replace('_', '-')} is required")
        for name in ("batch_size", "grad_acc", "epochs", "eval_batch_size", "log_interval"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("max_steps", "eval_interval", "save_interval", "warmup_steps", "eval_max_examples"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if self.lr <= 0:
            problems.append(f"--lr must be > 0 (got {self.lr})")
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            problems.append(f"--deepspeed-config {self.deepspeed_config}: file not found")
        if self.data_dir is not None and not (Path(self.data_dir) / "meta.json").is_file():
            problems.append(f"--data-dir {self.data_dir}: no meta.json; run t5-scripts/tools/process_data_anli.sh")
        if self.select_by == "rougeL" and not self.eval_generate:
            problems.append("--select-by rougeL needs generation in evaluation; drop --no-eval-generate")
        if self.lr_min > self.lr:
            problems.append(f"--lr-min {self.lr_min} exceeds --lr {self.lr}")
        if self.type == "kd" and self.teacher_model_path is None:
            problems.append("--type kd needs --teacher-model-path (the frozen teacher checkpoint)")
        if not 0.0 <= self.kd_ratio <= 1.0:
            problems.append(f"--kd-ratio must be in [0, 1] (got {self.kd_ratio})")
        if not 0.0 <= self.jsd_beta <= 1.0:
            problems.append(f"--jsd-beta must be in [0, 1] (got {self.jsd_beta})")
        if not 0.0 <= self.skew_alpha < 1.0:
            problems.append(f"--skew-alpha must be in [0, 1) (got {self.skew_alpha})")
        if self.kd_temperature <= 0:
            problems.append(f"--kd-temperature must be > 0 (got {self.kd_temperature})")
        if problems:
            raise ValueError("; ".join(problems))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Train a seq2seq student on processed ANLI shards with DeepSpeed.")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=help_text)
            continue
        kind = meta.pop("type", {"int": int, "float": float}.get(f.type, str))
        parser.add_argument(flag, type=kind, default=f.default, help=f"{help_text} (default: {f.default})", **meta)
    return parser


def parse_config(argv=None) -> TrainConfig:
    args = vars(build_parser().parse_args(argv))
    for name in ("eval_rounds", "adam_betas"):
        args[name] = tuple(args[name])
    return TrainConfig(**args)

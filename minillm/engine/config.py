"""The run configuration: one dataclass whose fields are the command-line flags (``field_name`` -> ``--field-name``).

Resolved once at start-up, checked by :meth:`TrainConfig.validate` (every problem reported at once, one line each),
and saved as ``args.json`` in every checkpoint.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ..divergences import DIVERGENCES
from ..objectives import OBJECTIVES
from .deepspeed_config import zero_stage


SELECT_METRICS = ("loss", "accuracy", "rougeL")
SELECT_CHOICES = ("auto", *SELECT_METRICS)
# Rounds are folders of the processed data: ANLI's r1, r2, r3 (all: the three concatenated) and Dolly's single round.
EVAL_ROUNDS = ("r1", "r2", "r3", "dolly")
TRAIN_ROUNDS = (*EVAL_ROUNDS, "all")


def _flag(default, help: str, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass
class TrainConfig:
    # what to train
    type: str = _flag("sft", "training objective", choices=tuple(OBJECTIVES))
    model_path: str = _flag(None, "student checkpoint: hub name or Hugging Face folder (required)")
    tokenizer_path: str = _flag(None, "tokenizer folder or hub name (default: --model-path)")
    attn_implementation: str = _flag("auto", "attention kernel: auto (the model family's choice: T5 eager on CPU, "
                                     "where torch's SDPA has no fused kernel for training with dropout and its "
                                     "fallback computes bf16 attention in fp32, and sdpa elsewhere; decoder-only "
                                     "models sdpa everywhere), eager or sdpa", choices=("auto", "eager", "sdpa"))
    fused_kernels: bool = _flag(True, "swap the seven-operation gelu_new (T5, GPT-2) and T5's five-operation "
                                "T5LayerNorm for torch's one-kernel gelu(approximate='tanh') and rms_norm (same "
                                "functions), and on CPU torch's serial bernoulli dropout modules for an "
                                "integer-threshold one; see minillm/models/fused.py (OPT, LLaMA: no effect)")
    gradient_checkpointing: bool = _flag(False, "the student keeps only each transformer layer's inputs and "
                                         "recomputes the layer's activations in backward (less activation memory, "
                                         "about one more forward pass per step), in train mode and in MiniLLM's "
                                         "eval-mode training alike; passes without gradients (sampling, generation, "
                                         "evaluation) are unchanged and keep the key-value cache; frozen teachers "
                                         "are never checkpointed")
    # distillation (--type kd, seqkd)
    teacher_model_path: str = _flag(None, "frozen teacher checkpoint (hub name or folder; same vocabulary as the "
                                    "student); required by --type kd and by seqkd with --kd-ratio > 0")
    kd_ratio: float = _flag(None, "weight r of the word-level distillation term: (1 - r) CE + r D (default: 0.5 "
                            "for kd, 0 for seqkd)", type=float)
    kd_loss: str = _flag("fkl", "divergence D between teacher and student at each gold position "
                         "(minillm/divergences.py)", choices=tuple(DIVERGENCES))
    jsd_beta: float = _flag(0.5, "beta of --kd-loss jsd (0: forward KL, 1: reverse KL)")
    skew_alpha: float = _flag(0.1, "alpha of --kd-loss sfkl / srkl")
    kd_temperature: float = _flag(1.0, "temperature of both distributions in D")
    # MiniLLM (--type minillm): on-policy reverse-KL distillation (minillm/objectives/minillm.py)
    prompt_data_dir: str = _flag(None, "processed folder whose prompt/{round}/train shards are the prompts rollouts "
                                 "are sampled for (default: --data-dir)")
    lm_data_dir: str = _flag(None, "processed folder whose full/{round}/train pairs feed the LM term: a plain-text "
                             "corpus (process_data_pretrain.sh, round pretrain) or gold pairs of the --train-round "
                             "(unset: no LM term)")
    lm_coef: float = _flag(1.0, "weight of the LM term (with --lm-data-dir)")
    num_rollouts: int = _flag(256, "rollouts per collection, over all processes (each samples its share)")
    chunk_size: int = _flag(16, "prompts per sampling call, per process")
    ppo_epochs: int = _flag(4, "passes over each collection's rollouts")
    rollout_max_new_tokens: int = _flag(64, "length limit of sampled targets")
    teacher_mixed_alpha: float = _flag(0.2, "sample from (1 - alpha) student + alpha teacher")
    temperature: float = _flag(1.0, "sampling temperature of the student (and the mixed-in teacher)")
    top_k: int = _flag(0, "top-k cut of the student's distribution (0: none)")
    top_p: float = _flag(1.0, "top-p cut of the student's distribution (1: none)")
    teacher_topk: int = _flag(0, "keep the teacher's distribution at each sampled position as its top K tokens plus "
                              "one remainder bin (the single-step KL is then taken over those K + 1 bins, a lower "
                              "bound); 0: the whole vocabulary")
    gather_for_sampling: bool = _flag(True, "under ZeRO-3, gather the student's and teacher's parameters once per "
                                      "collection when they fit in 80 %% of the free accelerator memory; off (or not "
                                      "fitting): decode in lockstep, gathering at every call")
    gamma: float = _flag(0.95, "discount of the long-term return")
    length_norm: bool = _flag(True, "divide each return by the number of rewards it sums")
    single_step_reg: bool = _flag(True, "add the exact token-level KL(q || p) at every sampled position and leave "
                                  "r_t out of the long-term return")
    whiten_advantages: bool = _flag(True, "whiten advantages over the valid tokens of all processes' rollouts")
    whiten_scope: str = _flag("collection", "what --whiten-advantages whitens over: collection (one mean and variance "
                              "over all processes' rollouts of a collection, so every micro-batch's advantages share "
                              "one scale and the update does not depend on how the collection is cut) or micro-batch "
                              "(each micro-batch over its valid tokens and those of the other processes' micro-batches "
                              "formed with it: the reference's behaviour, for replication)",
                              choices=("collection", "micro-batch"))
    cliprange: float = _flag(0.2, "PPO clip range of the ratio (0: no clipping)")
    reward_scaling: float = _flag(0.5, "rewards are divided by this")
    cliprange_reward: float = _flag(100.0, "rewards are clipped to +-this after scaling (0: no clipping)")
    # data
    data_dir: str = _flag(None, "output folder of process_data_anli.sh (required)")
    train_round: str = _flag("all", "round whose train split is used: an ANLI round, all (ANLI's three) or dolly",
                             choices=TRAIN_ROUNDS)
    eval_rounds: tuple = _flag(("r1", "r2", "r3"), "rounds evaluated (each reported, plus overall)", nargs="+",
                               choices=EVAL_ROUNDS)
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
    select_by: str = _flag("auto", "dev metric that picks best/ (ties go to the later step): auto is the rule every "
                           "student of a comparison is selected by, accuracy (rank classification) for label "
                           "targets and rougeL for rationale (label_reason) targets", choices=SELECT_CHOICES)
    also_select_by: str = _flag(None, "also keep best_<metric>/, the checkpoint best by this dev metric (the SFT "
                                "student that initialises MiniLLM: loss, MiniLLM's rule)", choices=SELECT_METRICS)
    eval_batch_size: int = _flag(32, "evaluation batch per process")
    eval_max_new_tokens: int = _flag(16, "greedy generation length in evaluation")
    eval_generate: bool = _flag(True, "also evaluate greedy generation (accuracy, Rouge-L); off: rank classification and loss only")
    eval_max_examples: int = _flag(0, "evaluate at most this many examples per round (0: all)")
    log_interval: int = _flag(10, "optimizer steps between metric lines")
    resume: bool = _flag(False, "continue from save_dir/last/ (model, optimizer, scheduler, RNG, data position)")
    allow_pickle_weights: bool = _flag(False, "load the student and teacher from pickle weights (pytorch_model.bin) "
                                       "when their folder has no safetensors: unpickling can run code stored in "
                                       "the file, so only for a source you trust")
    # faults
    max_nonfinite_steps: int = _flag(10, "stop the run when this many optimizer steps in a row have a non-finite "
                                     "loss or gradient (each such step is skipped: no update of the weights, the "
                                     "optimizer state or the learning-rate schedule); last/ keeps the last periodic "
                                     "checkpoint")
    collective_timeout: float = _flag(600.0, "seconds a collective (all-reduce, barrier) waits for the other processes "
                                      "before it fails, so that a run whose process died or hung stops instead of "
                                      "hanging: with gloo the collective raises and the survivors name the lost "
                                      "rank(s); with NCCL torch's watchdog ends the process "
                                      "(TORCH_NCCL_ASYNC_ERROR_HANDLING left at its default)")
    # distributed / precision
    deepspeed_config: str = _flag(None, "DeepSpeed JSON (configs/deepspeed/): ZeRO stage, precision, clipping")
    # MiniLLM's recipes split large models with Megatron tensor parallelism; this engine has none, so the two flags
    # are accepted for those recipes and satisfied by ZeRO-3, which shards every parameter over all processes.
    model_parallel: bool = _flag(False, "MiniLLM's tensor-parallel switch: the model is sharded with ZeRO-3 "
                                 "instead (--deepspeed-config must be a ZeRO stage 3 file)")
    model_parallel_size: int = _flag(1, "MiniLLM's tensor-parallel degree, with --model-parallel: recorded; ZeRO-3 "
                                     "shards over all processes whatever its value")

    def __post_init__(self):
        if self.kd_ratio is None:  # seqkd is SFT on the teacher's targets unless asked for word-level KD as well
            self.kd_ratio = 0.0 if self.type == "seqkd" else 0.5

    def validate(self) -> None:
        problems = []
        for name in ("model_path", "data_dir", "save_dir", "deepspeed_config"):
            if getattr(self, name) is None:
                problems.append(f"--{name.replace('_', '-')} is required")
        for name in ("batch_size", "grad_acc", "epochs", "eval_batch_size", "log_interval", "bucket_window"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        for name in ("max_steps", "eval_interval", "save_interval", "warmup_steps", "eval_max_examples"):
            if getattr(self, name) < 0:
                problems.append(f"--{name.replace('_', '-')} must be >= 0 (got {getattr(self, name)})")
        if self.lr <= 0:
            problems.append(f"--lr must be > 0 (got {self.lr})")
        if self.max_nonfinite_steps < 1:
            problems.append(f"--max-nonfinite-steps must be >= 1 (got {self.max_nonfinite_steps})")
        if not self.collective_timeout > 0:
            problems.append(f"--collective-timeout must be > 0 seconds (got {self.collective_timeout})")
        uses_teacher = self.type in ("kd", "minillm") or (self.type == "seqkd" and self.kd_ratio > 0)
        for name in ("model_path", "tokenizer_path") + (("teacher_model_path",) if uses_teacher else ()):
            value = getattr(self, name)
            # A hub name (google/flan-t5-xl) is resolved online; a path (absolute, ./, ../, ~) must be a folder here.
            if value is not None and value.startswith(("/", ".", "~")) and not Path(value).expanduser().is_dir():
                problems.append(f"--{name.replace('_', '-')} {value}: no such folder; train that checkpoint first "
                                "(or set CKPT / TEACHER_CKPT to an existing one)")
        if self.deepspeed_config is not None and not Path(self.deepspeed_config).is_file():
            problems.append(f"--deepspeed-config {self.deepspeed_config}: file not found")
        if self.save_dir is not None:
            problems += _save_dir_problems(self.save_dir)
        if self.data_dir is not None and not (Path(self.data_dir) / "meta.json").is_file():
            problems.append(f"--data-dir {self.data_dir}: no meta.json; run t5-scripts/tools/process_data_anli.sh")
        selected = self.selection_metric() if self.data_dir is not None else self.select_by
        for flag, metric in (("--select-by", selected), ("--also-select-by", self.also_select_by)):
            if metric == "accuracy" and self._data_target() == "response":
                problems.append(f"{flag} accuracy needs answer options; --data-dir {self.data_dir} holds free-text "
                                "responses (Dolly): select by rougeL or loss")
            if metric == "rougeL" and not self.eval_generate:
                auto = (" (auto: the data has free-text targets)"
                        if flag == "--select-by" and self.select_by == "auto" else "")
                problems.append(f"{flag} rougeL{auto} needs generation in evaluation; drop --no-eval-generate")
        if self.lr_min > self.lr:
            problems.append(f"--lr-min {self.lr_min} exceeds --lr {self.lr}")
        if self.type == "kd" and self.teacher_model_path is None:
            problems.append("--type kd needs --teacher-model-path (the frozen teacher checkpoint)")
        if self.type == "seqkd" and self.kd_ratio > 0 and self.teacher_model_path is None:
            problems.append(f"--type seqkd with --kd-ratio {self.kd_ratio} needs --teacher-model-path")
        if self.type == "seqkd" and self.data_dir is not None and (Path(self.data_dir) / "meta.json").is_file():
            targets = json.loads((Path(self.data_dir) / "meta.json").read_text()).get("train_targets", "gold")
            if targets != "teacher":
                problems.append(f"--type seqkd: --data-dir {self.data_dir} holds {targets} training targets; build "
                                "the teacher's with generate_data_seqkd.sh and process_pseudo_data_seqkd.sh")
        if not 0.0 <= self.kd_ratio <= 1.0:
            problems.append(f"--kd-ratio must be in [0, 1] (got {self.kd_ratio})")
        if not 0.0 <= self.jsd_beta <= 1.0:
            problems.append(f"--jsd-beta must be in [0, 1] (got {self.jsd_beta})")
        if not 0.0 <= self.skew_alpha < 1.0:
            problems.append(f"--skew-alpha must be in [0, 1) (got {self.skew_alpha})")
        if self.kd_temperature <= 0:
            problems.append(f"--kd-temperature must be > 0 (got {self.kd_temperature})")
        if self.type == "minillm":
            problems += self._minillm_problems()
        problems += self._model_parallel_problems()
        if problems:
            raise ValueError("; ".join(problems))
        if 0 < self.max_steps < self.warmup_steps and os.environ.get("RANK", "0") == "0":
            print(f"--warmup-steps {self.warmup_steps} is longer than the run (--max-steps {self.max_steps}): the "
                  "learning rate never reaches --lr", file=sys.stderr)
        if self.model_parallel and os.environ.get("RANK", "0") == "0":  # one line per run, not one per process
            print(f"--model-parallel-size {self.model_parallel_size}: tensor parallelism is not used; the model is "
                  f"sharded with ZeRO-3 instead (--deepspeed-config {self.deepspeed_config})", file=sys.stderr)

    def _model_parallel_problems(self) -> list[str]:
        if self.model_parallel_size < 1:
            return [f"--model-parallel-size must be >= 1 (got {self.model_parallel_size})"]
        if self.model_parallel_size > 1 and not self.model_parallel:
            return [f"--model-parallel-size {self.model_parallel_size} needs --model-parallel (as in MiniLLM)"]
        if not self.model_parallel or self.deepspeed_config is None or not Path(self.deepspeed_config).is_file():
            return []
        try:
            stage = zero_stage(json.loads(Path(self.deepspeed_config).read_text()))
        except (OSError, ValueError, TypeError, AttributeError):
            return []  # the trainer reports an unreadable file, with the reason, when it loads it
        if stage < 3:
            return [f"--model-parallel is served by ZeRO-3 sharding, but --deepspeed-config {self.deepspeed_config} "
                    f"has ZeRO stage {stage}; use a configs/deepspeed/zero3_*.json (ZERO_STAGE=3 or 3_offload)"]
        return []

    def _minillm_problems(self) -> list[str]:
        problems = []
        if self.teacher_model_path is None:
            problems.append("--type minillm needs --teacher-model-path (the frozen teacher checkpoint)")
        if self.max_steps <= 0:
            problems.append("--type minillm needs --max-steps (the reference's --total-iters)")
        if self.teacher_topk < 0:
            problems.append(f"--teacher-topk must be >= 0 (got {self.teacher_topk})")
        for name in ("num_rollouts", "chunk_size", "ppo_epochs", "rollout_max_new_tokens"):
            if getattr(self, name) < 1:
                problems.append(f"--{name.replace('_', '-')} must be >= 1 (got {getattr(self, name)})")
        if not 0.0 <= self.teacher_mixed_alpha < 1.0:
            problems.append(f"--teacher-mixed-alpha must be in [0, 1) (got {self.teacher_mixed_alpha})")
        if self.temperature <= 0 or self.reward_scaling <= 0:
            problems.append("--temperature and --reward-scaling must be > 0")
        if not 0.0 < self.top_p <= 1.0 or self.top_k < 0:
            problems.append("--top-p must be in (0, 1] and --top-k >= 0")
        if not 0.0 <= self.gamma <= 1.0:
            problems.append(f"--gamma must be in [0, 1] (got {self.gamma})")
        if self.cliprange < 0 or self.cliprange_reward < 0:
            problems.append("--cliprange and --cliprange-reward must be >= 0 (0: off)")
        if self.whiten_scope not in ("collection", "micro-batch"):
            problems.append(f"--whiten-scope must be collection or micro-batch (got {self.whiten_scope!r})")
        for flag, folder in (("--prompt-data-dir", self.prompt_data_dir), ("--lm-data-dir", self.lm_data_dir)):
            if folder is not None and not (Path(folder) / "meta.json").is_file():
                problems.append(f"{flag} {folder}: no meta.json; run t5-scripts/tools/process_data_anli.sh")
        return problems

    def selection_metric(self) -> str:
        """The metric ``--select-by`` names; ``auto`` reads the data's target kind from ``--data-dir``'s meta.json:
        free text (ANLI rationales, Dolly responses) is judged by Rouge-L, as MiniLLM selects; bare labels by
        accuracy."""
        if self.select_by != "auto":
            return self.select_by
        return "rougeL" if self._data_target() in ("label_reason", "response") else "accuracy"

    def _data_target(self) -> str:
        """The target kind of ``--data-dir`` (its meta.json's ``target``; ``label`` when it cannot be read)."""
        meta = Path(self.data_dir) / "meta.json" if self.data_dir is not None else None
        return json.loads(meta.read_text()).get("target", "label") if meta is not None and meta.is_file() else "label"

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1)


def _save_dir_problems(save_dir: str) -> list[str]:
    """``--save-dir`` must be a folder this process can write in, or one it can make (its nearest existing parent
    writable): checked before anything loads, so that a run is not refused at its first log line or checkpoint."""
    path = Path(save_dir).expanduser()
    existing = next(folder for folder in (path, *path.parents) if folder.exists())
    if not existing.is_dir():
        return [f"--save-dir {save_dir}: {existing} is a file, not a folder; choose another --save-dir (SAVE_DIR)"]
    if not os.access(existing, os.W_OK | os.X_OK):
        return [f"--save-dir {save_dir}: {existing} is not writable; choose another --save-dir (SAVE_DIR)"]
    return []


def build_parser() -> argparse.ArgumentParser:
    # allow_abbrev=False: a misspelt or shortened flag (--max-step) is refused, never taken for another (--max-steps)
    # prog: under `python -m` argparse would call itself __main__.py in every error line
    parser = argparse.ArgumentParser(prog="python -m minillm.finetune", allow_abbrev=False,
                                     description="Train a student (Flan-T5 or a decoder-only model) on processed "
                                                 "shards (ANLI, Dolly) with DeepSpeed.")
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

"""Completing a DeepSpeed JSON from the run's flags, and the precision rules.

The JSON files in ``configs/deepspeed/`` hold what is about hardware and memory (ZeRO stage, offload, precision,
gradient clipping); the batch geometry comes from the flags and is written in here, so one file serves every model
size. A file that sets a batch key to a different value than the flags is an error, not a silent override.
"""

from __future__ import annotations

import json
from pathlib import Path

# T5-family activations overflow fp16's range (the feed-forward output `wo` above all): see check_precision.
T5_FAMILY = ("t5", "mt5", "umt5", "longt5", "switch_transformers")


def load_deepspeed_config(path: str | Path, micro_batch: int, grad_acc: int, world_size: int) -> dict:
    path = Path(path)
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"--deepspeed-config {path}: cannot read a JSON object ({e})") from None
    if "gradient_clipping" not in config:
        raise ValueError(f"--deepspeed-config {path}: set \"gradient_clipping\" explicitly "
                         "(DeepSpeed silently clips at 1.0 otherwise; 0 disables)")
    if "optimizer" in config or "scheduler" in config:
        raise ValueError(f"--deepspeed-config {path}: remove \"optimizer\"/\"scheduler\"; the trainer builds AdamW "
                         "and the schedule from --lr, --scheduler and --warmup-steps")
    geometry = {"train_micro_batch_size_per_gpu": micro_batch, "gradient_accumulation_steps": grad_acc,
                "train_batch_size": micro_batch * grad_acc * world_size}
    for key, value in geometry.items():
        if key in config and config[key] != value:
            raise ValueError(f"--deepspeed-config {path}: {key}={config[key]} disagrees with the flags ({value}); "
                             "remove it from the file and set --batch-size / --grad-acc / the process count")
        config[key] = value
    config.setdefault("steps_per_print", 10**9)  # the trainer logs; keep DeepSpeed's own step lines out
    config.setdefault("wall_clock_breakdown", False)
    if zero_stage(config) >= 1:
        config["zero_allow_untested_optimizer"] = True  # the client AdamW is torch's own
    return config


def precision(config: dict) -> str:
    if config.get("bf16", {}).get("enabled", False):
        return "bf16"
    if config.get("fp16", {}).get("enabled", False):
        return "fp16"
    return "fp32"


def zero_stage(config: dict) -> int:
    return int(config.get("zero_optimization", {}).get("stage", 0))


def master_weights_in_trainer(config: dict) -> bool:
    """bf16 without ZeRO: the trainer's own fp32-master AdamW (:mod:`minillm.engine.master_weights`) replaces
    DeepSpeed's stage-0 bf16 optimizer wrapper, which is several times slower than the update itself."""
    return precision(config) == "bf16" and zero_stage(config) == 0


def clipping_in_trainer(config: dict) -> bool:
    """bf16 or fp32 without ZeRO: the trainer's optimizer clips (:mod:`minillm.engine.clipped_adamw`,
    :mod:`minillm.engine.master_weights`): one multi-tensor norm, the factor applied inside the fused AdamW kernel,
    where DeepSpeed would loop over tensors and multiply every gradient."""
    return precision(config) in ("bf16", "fp32") and zero_stage(config) == 0


def engine_config(config: dict) -> dict:
    """The configuration handed to ``deepspeed.initialize``. With :func:`clipping_in_trainer` DeepSpeed does no
    clipping of its own; with :func:`master_weights_in_trainer` the model is also already bf16 and its optimizer
    keeps the fp32 masters, so DeepSpeed runs its plain fp32 path, without its bf16 wrapper."""
    if not clipping_in_trainer(config):
        return config
    if master_weights_in_trainer(config):
        config = {**config, "bf16": {**config["bf16"], "enabled": False}}
    return {**config, "gradient_clipping": 0.0}


def offloads_optimizer(config: dict) -> bool:
    return config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") not in ("none", None)


def check_precision(config: dict, model_type: str, config_path) -> None:
    """fp16 is refused for T5-family models.

    T5's feed-forward outputs exceed fp16's largest value (65504) in pre-trained checkpoints; transformers keeps
    the ``wo`` projections in fp32 to avoid it, but a DeepSpeed fp16 engine casts the whole module to half, which
    would silently undo that. There is no safe fp16 path here, so the run stops instead: bf16 has fp32's range, and
    fp32 works everywhere (V100 included).
    """
    if precision(config) == "fp16" and model_type in T5_FAMILY:
        raise ValueError(f"--deepspeed-config {config_path}: fp16 is not supported for {model_type} models "
                         "(activations overflow fp16; DeepSpeed would cast the fp32-kept `wo` layers to half); "
                         "use a *_bf16.json config on bf16 hardware (A100/H100) or *_fp32.json (V100)")

"""Per-GPU memory plan of a training recipe, without a GPU: does it fit the card (default a 32 GB V100)?

    python tools/plan_memory.py --script t5-scripts/minillm/train_large_xl.sh      # one recipe (its DRY_RUN command)
    python tools/plan_memory.py --command "torchrun ... --module minillm.finetune --model-path ..."
    python tools/plan_memory.py --model google/flan-t5-xl --zero-stage 3 --batch-size 4 --num-gpus 8   # explicit
    python tools/plan_memory.py --all-recipes --markdown                       # the table of docs/memory.md

A recipe script is run with DRY_RUN=1 (t5-scripts/common.sh prints the launcher command it would start) and the
command is read: the process count (torchrun --nproc-per-node, deepspeed --num_gpus x --num_nodes), the DeepSpeed
file (stage, offload, precision, bucket sizes), and every minillm.finetune flag through the trainer's own parser
(minillm.engine.config.parse_config, so the defaults are the trainer's). Checkpoint paths are mapped to the known
architectures below (hub names such as google/flan-t5-xl, or the results/FAMILY/sft/SIZE folders the recipes chain);
parameter counts come from instantiating each configuration on the ``meta`` device (no memory, no download).
PRECISION defaults to fp32 for scripts: what t5-scripts/common.sh picks on a V100, which has no bf16.

What is counted, per GPU, in bytes (P parameters, N data-parallel processes, e the activation/parameter element
size: 4 in fp32, 2 in bf16; docs/memory.md states each formula with its sources):

* model states -- parameters, gradients, AdamW moments (and the fp32 master copy in bf16), by ZeRO stage and offload.
  bf16 at stages 2 and 3 is DeepSpeed's own estimator (estimate_zero2/3_model_states_mem_needs, what the *_all_cold
  printers tabulate); fp32, which those estimators do not cover, the same structure with 4-byte parameters and
  gradients and no master copy: stage 0 16P; 1: 8P + 8P/N; 2: 4P + 12P/N; 3: 16P/N + 8 x largest layer;
  optimizer offload removes the moments (and, ZeRO-2, the gradient partition) from the GPU; parameter offload
  (ZeRO-3) the parameters too, keeping the gathered layers.
* DeepSpeed's buffers -- stages 1-2 with contiguous gradients: reduce_bucket_size elements of gradient dtype, twice
  with overlap_comm (stage_1_and_2.py setup_buckets); stage 3: one reduce bucket plus the prefetch bucket.
* activations -- saved for backward, per transformer layer and token (``layer_bytes``), the vocabulary-sized
  tensors of the loss (``head_bytes``), and at the start of backward the gradients of the logits; with
  --gradient-checkpointing only each layer's input, plus one layer's activations recomputed in backward.
* the frozen teacher (KD, MiniLLM, seqkd with --kd-ratio > 0): e_t x P_t, divided by N under ZeRO-3 (the trainer
  shards it with a ZeRO-3 inference engine), whole otherwise; its forward pass's logits.
* MiniLLM's rollout store: per process num_rollouts / N rows of the teacher's log-distributions [n, T, V] fp32 (or
  top-k [n, T, K + 1] fp32 and ids [n, T, K] int64) and seven [n, T] records; during collection the store exists
  twice (parts and their concatenation) beside both models' key-value caches and one chunk's logits.

The plan is the larger of two phases -- training a micro-batch, and collecting rollouts (MiniLLM) -- plus an
allowance: ``--context-gib`` (CUDA context, cuBLAS workspace, NCCL buffers; 1.0) and ``--fragmentation`` (the
caching allocator's unusable share, 10 % of what is allocated). It fits when that is at most ``--card-gib`` x
``--usable`` (a "32 GB" V100 is 32 GiB, of which torch reports 31.7 GiB).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GiB = 2 ** 30

# ---------------------------------------------------------------------------------------------- architectures
# The real hyperparameters of every checkpoint a recipe names (from each model's published config.json).
T5_COMMON = dict(model_type="t5", vocab_size=32128, d_kv=64, feed_forward_proj="gated-gelu",
                 tie_word_embeddings=False, dropout_rate=0.1, relative_attention_num_buckets=32)
GPT2_COMMON = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, activation_function="gelu_new",
                   resid_pdrop=0.1, embd_pdrop=0.1, attn_pdrop=0.1)
OPT_COMMON = dict(model_type="opt", vocab_size=50272, max_position_embeddings=2048, activation_function="relu",
                  dropout=0.1, attention_dropout=0.0, do_layer_norm_before=True)
LLAMA_COMMON = dict(model_type="llama", vocab_size=32000, max_position_embeddings=2048, hidden_act="silu",
                    tie_word_embeddings=False, rms_norm_eps=1e-6)
MODELS = {
    "flan-t5-small": dict(T5_COMMON, d_model=512, d_ff=1024, num_heads=6, num_layers=8, num_decoder_layers=8),
    "flan-t5-base": dict(T5_COMMON, d_model=768, d_ff=2048, num_heads=12, num_layers=12, num_decoder_layers=12),
    "flan-t5-large": dict(T5_COMMON, d_model=1024, d_ff=2816, num_heads=16, num_layers=24, num_decoder_layers=24),
    "flan-t5-xl": dict(T5_COMMON, d_model=2048, d_ff=5120, num_heads=32, num_layers=24, num_decoder_layers=24),
    "flan-t5-xxl": dict(T5_COMMON, d_model=4096, d_ff=10240, num_heads=64, num_layers=24, num_decoder_layers=24),
    "gpt2": dict(GPT2_COMMON, n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(GPT2_COMMON, n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(GPT2_COMMON, n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(GPT2_COMMON, n_embd=1600, n_layer=48, n_head=25),
    "opt-1.3b": dict(OPT_COMMON, hidden_size=2048, num_hidden_layers=24, num_attention_heads=32, ffn_dim=8192,
                     word_embed_proj_dim=2048),
    "opt-2.7b": dict(OPT_COMMON, hidden_size=2560, num_hidden_layers=32, num_attention_heads=32, ffn_dim=10240,
                     word_embed_proj_dim=2560),
    "opt-6.7b": dict(OPT_COMMON, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, ffn_dim=16384,
                     word_embed_proj_dim=4096),
    "opt-13b": dict(OPT_COMMON, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40, ffn_dim=20480,
                    word_embed_proj_dim=5120),
    "llama-7b": dict(LLAMA_COMMON, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=32, intermediate_size=11008),
    "llama-13b": dict(LLAMA_COMMON, hidden_size=5120, num_hidden_layers=40, num_attention_heads=40,
                      num_key_value_heads=40, intermediate_size=13824),
}
# A checkpoint path -> one of MODELS: hub names, and the folders the recipes chain (results/FAMILY/METHOD/SIZE/...,
# BASE/checkpoints/llama-7B). The first pattern that matches wins.
_SIZE_WORDS = {"anli": {s: f"flan-t5-{s}" for s in ("small", "base", "large", "xl", "xxl")},
               "gpt2": {"base": "gpt2", "medium": "gpt2-medium", "large": "gpt2-large", "xlarge": "gpt2-xl"},
               "opt": {s: f"opt-{s.lower()}" for s in ("1.3B", "2.7B", "6.7B", "13B")},
               "llama": {"7B": "llama-7b", "13B": "llama-13b"}}


def resolve_model(path: str) -> str:
    """The MODELS key of a checkpoint path or hub name; ValueError if it names no known architecture."""
    name = path.rstrip("/").lower()
    hub = re.search(r"(flan-t5-(?:small|base|large|xxl|xl)|gpt2-(?:medium|large|xl)|opt-(?:1\.3b|2\.7b|6\.7b|13b)"
                    r"|llama-(?:7b|13b))(?:/|$)", name)
    if hub:
        return hub.group(1)
    if re.search(r"(^|/)gpt2$", name):
        return "gpt2"
    folder = re.search(r"results/(anli|gpt2|opt|llama)/[^/]+/([^/]+)", path)
    if folder and folder.group(2) in _SIZE_WORDS[folder.group(1)]:
        return _SIZE_WORDS[folder.group(1)][folder.group(2)]
    raise ValueError(f"{path}: not a known checkpoint (known: {', '.join(MODELS)}; recipe folders "
                     "results/{anli,gpt2,opt,llama}/METHOD/SIZE)")


def hf_config(name_or_dict):
    from transformers import AutoConfig

    kwargs = dict(MODELS[name_or_dict]) if isinstance(name_or_dict, str) else dict(name_or_dict)
    return AutoConfig.for_model(kwargs.pop("model_type"), **kwargs)


@dataclasses.dataclass(frozen=True)
class Arch:
    """What the formulas need of an architecture."""

    kind: str  # "encdec" or "decoder"
    family: str  # t5, gpt2, opt, llama
    hidden: int
    ffn: int
    heads: int
    head_dim: int
    layers: int  # decoder-only: its layers; T5: encoder layers
    decoder_layers: int  # T5: decoder layers; decoder-only: 0
    vocab: int
    dropout: float  # residual / FFN dropout
    attn_dropout: float  # on the attention probabilities
    params: int
    largest_layer: int  # the most parameters one module holds directly (DeepSpeed's "largest layer")


@functools.lru_cache(maxsize=None)
def arch_of(name: str, dropout: float | None = None) -> Arch:
    arch = arch_from_config(hf_config(name), dropout)
    if MODELS[name].get("tie_word_embeddings") is False and arch.family == "t5":
        # Flan-T5 (T5 v1.1) has its own lm_head beside the shared embedding; transformers 5's T5Config keeps
        # tie_word_embeddings True whatever it is given, so the meta model shares them: the head is added here.
        arch = dataclasses.replace(arch, params=arch.params + arch.vocab * arch.hidden)
    return arch


def arch_from_config(config, dropout: float | None = None) -> Arch:
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("meta"):
        model = cls.from_config(config)
    params = sum(p.numel() for p in model.parameters())
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    t = config.model_type
    if t == "t5":
        return Arch("encdec", t, config.d_model, config.d_ff, config.num_heads, config.d_kv, config.num_layers,
                    config.num_decoder_layers, config.vocab_size, *(2 * (config.dropout_rate if dropout is None
                                                                         else dropout,)), params, largest)
    if t == "gpt2":
        h = config.n_embd
        return Arch("decoder", t, h, config.n_inner or 4 * h, config.n_head, h // config.n_head, config.n_layer, 0,
                    config.vocab_size, config.resid_pdrop if dropout is None else dropout,
                    config.attn_pdrop if dropout is None else dropout, params, largest)
    h = config.hidden_size
    ffn = config.ffn_dim if t == "opt" else config.intermediate_size
    drop = config.dropout if t == "opt" else 0.0  # LLaMA has no residual dropout
    attn_drop = config.attention_dropout
    return Arch("decoder", t, h, ffn, config.num_attention_heads, h // config.num_attention_heads,
                config.num_hidden_layers, 0, config.vocab_size, drop if dropout is None else dropout,
                attn_drop if dropout is None else dropout, params, largest)


# ---------------------------------------------------------------------------------------------- activations
# Bytes saved for backward per token, per transformer layer, enumerated from what each Hugging Face operation keeps
# (torch autograd: a linear keeps its input, a matmul both inputs, softmax its output, dropout a 1-byte mask and the
# next op its output, GELU-tanh ("gelu_new", a Python formula) x, tanh(.), 0.5x and 1 + tanh(.), ReLU its output,
# SiLU its input, LayerNorm its input, HF's RMSNorm its input and its normalised output). Korthikanti et al. (2022)
# count 34 sbh + 5 a s^2 b for a GPT layer in 16-bit; these are the same sums with the element size e, the FFN width
# f, the activation function and the attention kernel as parameters:
#   norm + its output feeding a projection       2 e h   (per sub-layer)
#   attention, eager: q, k, v, context           4 e h  + a s_k (2 e + 1) with dropout, a s_k e without
#   attention, fused (SDPA flash/mem-efficient): q, k, v, output, and the output projection's input  5 e h
#   FFN: gelu_new gated (T5) 7 e f + f (dropout mask); gelu_new (GPT-2) 5 e f; ReLU (OPT) 1 e f (+ 1 e f with
#        activation dropout); SwiGLU (LLaMA) 4 e f
#   residual dropout masks                       1 h per sub-layer when dropout > 0
# T5's decoder layer adds cross-attention: per target token 2 e h (norm) + 3 e h (q, context, output projection
# input) + the scores over the s_src source positions; per source token and layer 2 e h (its keys and values).
FFN_COEF = {"t5": (7, 1), "gpt2": (5, 0), "opt": (1, 0), "llama": (4, 0)}  # (e f multiple, f mask if dropout)
NORM_COEF = {"t5": 3, "llama": 3, "gpt2": 2, "opt": 2}  # RMSNorm: input, x rsqrt, weight x; LayerNorm: input, out


def _attn(arch: Arch, e: int, keys: int, fused: bool, mask: int) -> float:
    """Bytes per query token of one attention sub-layer (norm, projections, scores); ``mask`` the bytes of a
    dropout mask element (1 on a GPU: a bool; e on a CPU, whose dropout keeps a noise tensor of the input's type)."""
    h = arch.hidden
    norm = NORM_COEF[arch.family] * e * h
    resid = mask * h if arch.dropout > 0 else 0
    if fused:
        return norm + 5 * e * h + resid
    scores = arch.heads * keys * (e + (mask + e if arch.attn_dropout > 0 else 0))
    return norm + 4 * e * h + scores + resid


def _ffn(arch: Arch, e: int, mask: int) -> float:
    coef, fmask = FFN_COEF[arch.family]
    drop = arch.dropout > 0
    return NORM_COEF[arch.family] * e * arch.hidden + coef * e * arch.ffn + (fmask * mask * arch.ffn + mask * arch.hidden
                                                                            if drop else 0)


def layer_bytes(arch: Arch, e: int, src: int, tgt: int, fused: bool, mask: int = 1) -> dict:
    """Bytes saved per sequence by one encoder layer (``enc``) and one decoder layer (``dec``): for T5 ``src``
    source and ``tgt`` target tokens; for a decoder-only model one of its layers over ``src`` tokens (``enc``).
    ``mask``: bytes per dropout-mask element (1 on a GPU, e on a CPU)."""
    if arch.kind == "decoder":  # its layers are arch.layers, counted in the "enc" slot (decoder_layers is 0)
        return {"enc": src * (_attn(arch, e, src, fused, mask) + _ffn(arch, e, mask)), "dec": 0.0}
    enc = src * (_attn(arch, e, src, fused, mask) + _ffn(arch, e, mask))
    h = arch.hidden
    cross_scores = 0 if fused else arch.heads * src * (e + (e + mask if arch.attn_dropout > 0 else 0))
    resid = mask * h if arch.dropout > 0 else 0
    cross = tgt * (NORM_COEF[arch.family] * e * h + 3 * e * h + resid + cross_scores) + src * 2 * e * h
    dec = tgt * (_attn(arch, e, tgt, fused, mask) + _ffn(arch, e, mask)) + cross
    return {"enc": enc, "dec": dec}


# Vocabulary-sized fp32 tensors saved per target token by the loss (the student's log-softmax, and what each
# objective adds: KD's divergence keeps the teacher's probabilities and the student's log-probabilities, MiniLLM's
# single-step term the student's distribution and the teacher's stored log-distribution row).
HEAD_FP32_COPIES = {"sft": 1, "seqkd": 1, "kd": 3, "minillm": 3}


def stack_bytes(arch: Arch, e: int, batch: int, src: int, tgt: int, fused: bool, checkpointing: bool,
                mask: int = 1) -> float:
    """Activations of the transformer stack (not the vocabulary head) for one micro-batch."""
    per = layer_bytes(arch, e, src, tgt, fused, mask)
    h = arch.hidden
    embed = (src + (tgt if arch.kind == "encdec" else 0)) * (e * h + (mask if arch.dropout > 0 else 0) * h)
    final = (2 * e * h) * (tgt if arch.kind == "decoder" else src + tgt)  # final norms (+ lm_head input)
    if not checkpointing:
        return batch * (arch.layers * per["enc"] + arch.decoder_layers * per["dec"] + embed + final)
    inputs = e * h * (arch.layers * src + arch.decoder_layers * tgt)  # each layer's input, kept
    recompute = max(per["enc"], per["dec"])  # one layer's activations, rebuilt in backward
    return batch * (inputs + recompute + embed + final)


def head_bytes(arch: Arch, batch: int, tgt: int, objective: str, e: int) -> float:
    """The loss's vocabulary-sized saved tensors: the logits (element size e, kept as the fp32 upcast's input only
    when e < 4) and HEAD_FP32_COPIES fp32 copies, per target token."""
    return batch * tgt * arch.vocab * (4 * HEAD_FP32_COPIES[objective] + (e if e < 4 else 0))


# ---------------------------------------------------------------------------------------------- model states
def model_states(params: int, largest: int, stage: int, precision: str, world: int, offload_opt: bool,
                 offload_param: bool, gpus_per_node: int = 8) -> dict:
    """Per-GPU bytes of parameters, gradients and optimizer states (AdamW: two moments; bf16 adds the fp32
    master copy). bf16 at stages 2-3 is DeepSpeed's estimator, split into its terms (``deepspeed`` holds the
    estimator's own total for comparison)."""
    P, N = params, world
    if precision == "fp32":
        if stage == 0:
            parts = {"params": 4 * P, "grads": 4 * P, "optimizer": 8 * P}
        elif stage == 1:
            parts = {"params": 4 * P, "grads": 4 * P, "optimizer": 0 if offload_opt else 8 * P / N}
        elif stage == 2:
            parts = {"params": 4 * P, "grads": 0 if offload_opt else 4 * P / N, "optimizer": 0 if offload_opt else 8 * P / N}
        else:
            gathered = 2 * 4 * largest  # the gathered layer and the one prefetched
            parts = {"params": gathered + (0 if offload_param else 4 * P / N),
                     "grads": 0 if offload_opt else 4 * P / N, "optimizer": 0 if offload_opt else 8 * P / N}
        return {**parts, "deepspeed": None}
    if stage == 0:  # minillm.engine.master_weights: bf16 model, fp32 masters + moments
        parts = {"params": 2 * P, "grads": 2 * P, "optimizer": 12 * P}
        return {**parts, "deepspeed": None}
    if stage == 1:  # full 16-bit gradients, the fp32 gradient partition, masters and moments partitioned
        parts = {"params": 2 * P, "grads": 2 * P + (0 if offload_opt else 4 * P / N),
                 "optimizer": 0 if offload_opt else 12 * P / N}
        return {**parts, "deepspeed": None}
    nodes = max(1, N // gpus_per_node)
    per_node = N // nodes
    if stage == 2:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

        _, gpu = estimate_zero2_model_states_mem_needs(P, per_node, nodes, cpu_offload=offload_opt)
        parts = {"params": 2 * P, "grads": 0 if offload_opt else 6 * P / N, "optimizer": 0 if offload_opt else 12 * P / N}
        return {**parts, "deepspeed": gpu}
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, largest_mem = estimate_zero3_model_states_mem_needs(P, largest, per_node, nodes, cpu_offload=offload_opt,
                                                                cpu_offload_params=offload_param)
    # DeepSpeed's stage-3 18 bytes per parameter: 2 (16-bit partition) + 4 (fp32 gradient partition) + 12
    parts = {"params": largest_mem + (0 if offload_param else 2 * P / N),
             "grads": 0 if offload_opt else 4 * P / N, "optimizer": 0 if offload_opt else 12 * P / N}
    return {**parts, "deepspeed": gpu}


def deepspeed_buffers(ds: dict, stage: int, precision: str, params: int) -> float:
    """DeepSpeed's preallocated communication buffers (defaults of deepspeed/runtime/zero/config.py)."""
    if stage == 0:
        return 0.0
    zero = ds.get("zero_optimization", {})
    grad_bytes = 4 if precision == "fp32" or stage == 1 else 2  # ZeRO-1 stages an fp32 accumulator
    reduce = float(zero.get("reduce_bucket_size", 5e8))
    if stage in (1, 2):
        if not zero.get("contiguous_gradients", True):
            return 0.0
        copies = 2 if zero.get("overlap_comm", False) else 1
        return copies * reduce * grad_bytes
    prefetch = float(zero.get("stage3_prefetch_bucket_size", 5e7))
    return reduce * grad_bytes + prefetch * (4 if precision == "fp32" else 2)


# ---------------------------------------------------------------------------------------------- the recipe
@dataclasses.dataclass
class Recipe:
    student: str
    objective: str = "sft"  # sft, kd, seqkd, minillm
    teacher: str | None = None
    stage: int = 0
    offload_optimizer: bool = False
    offload_param: bool = False
    precision: str = "fp32"
    micro_batch: int = 1
    prompt_length: int = 512  # T5: source tokens; decoder-only: prompt tokens
    target_length: int = 128
    world_size: int = 1
    gpus_per_node: int = 8
    gradient_checkpointing: bool = False
    dropout: float | None = None
    attention: str = "auto"  # auto (T5 eager on GPU too, conservatively; decoders fused SDPA), eager, fused
    num_rollouts: int = 256
    chunk_size: int = 16
    rollout_length: int = 64
    teacher_topk: int = 0
    lm_term: bool = False
    ds_config: dict = dataclasses.field(default_factory=dict)
    source: str = ""  # the script or command it was read from

    def fused_attention(self, arch: Arch) -> bool:
        if self.attention == "auto":
            # T5 runs SDPA on a GPU, but with its learned position bias as an additive mask and dropout the
            # flash kernel is out and the fallback may materialise the scores: counted as eager (an upper bound).
            return arch.kind == "decoder"
        return self.attention == "fused"


def sequence_lengths(recipe: Recipe, arch: Arch, target: int) -> tuple[int, int]:
    """(src, tgt) for layer_bytes: T5 source and target; decoder-only the whole sequence and its target part."""
    if arch.kind == "encdec":
        return recipe.prompt_length, target
    return recipe.prompt_length + target, target


def plan(recipe: Recipe, card_gib: float = 32.0, usable: float = 0.992, context_gib: float = 1.0,
         fragmentation: float = 0.10) -> dict:
    """Per-GPU bytes of every component, each phase's total, the allowance and whether it fits."""
    student = arch_of(recipe.student, recipe.dropout)
    e = 2 if recipe.precision in ("bf16", "fp16") else 4
    N = recipe.world_size
    states = model_states(student.params, student.largest_layer, recipe.stage, recipe.precision, N,
                          recipe.offload_optimizer, recipe.offload_param, recipe.gpus_per_node)
    comps = {k: states[k] for k in ("params", "grads", "optimizer")}
    comps["deepspeed_buffers"] = deepspeed_buffers(recipe.ds_config, recipe.stage, recipe.precision, student.params)
    fused = recipe.fused_attention(student)

    teacher = arch_of(recipe.teacher) if recipe.teacher else None
    if teacher:
        te = e
        comps["teacher"] = te * teacher.params / N + 2 * te * teacher.largest_layer if recipe.stage == 3 else \
            te * teacher.params
    else:
        comps["teacher"] = 0.0

    b = recipe.micro_batch
    if recipe.objective == "minillm":
        passes = [(recipe.rollout_length, "minillm")] + ([(recipe.target_length, "sft")] if recipe.lm_term else [])
    else:
        passes = [(recipe.target_length, recipe.objective if recipe.teacher else "sft")]
    stack = head = logit_grads = 0.0
    for target, objective in passes:
        src, tgt = sequence_lengths(recipe, student, target)
        stack += stack_bytes(student, e, b, src, tgt, fused, recipe.gradient_checkpointing)
        head += head_bytes(student, b, tgt, objective, e)
        logit_grads = max(logit_grads, 2 * 4 * b * tgt * student.vocab)  # d loss / d log-probs and / d logits
    comps["activations"] = stack
    comps["loss_vocab_tensors"] = head
    comps["backward_transient"] = logit_grads
    if teacher and recipe.objective == "kd":  # the teacher's forward: its logits beside the student's graph
        comps["teacher_forward"] = b * recipe.target_length * teacher.vocab * (e + 4)
    store = collect = 0.0
    if recipe.objective == "minillm":
        n = math.ceil(recipe.num_rollouts / N)
        T = recipe.rollout_length
        width = recipe.teacher_topk + 1 if recipe.teacher_topk else student.vocab
        store = n * T * (4 * width + (8 * recipe.teacher_topk if recipe.teacher_topk else 0) + 7 * 8)
        store += n * recipe.prompt_length * 16  # prompts and their masks (int64)
        comps["rollout_store"] = store
        # collection: the store twice (parts + concatenation), both models' key-value caches and one chunk's
        # teacher logits + log-softmax (deferred teacher pass) or per-step logits
        c = recipe.chunk_size
        seq = recipe.prompt_length + T
        kv = sum(2 * e * a.hidden * (a.layers + a.decoder_layers) * seq * c for a in (student, teacher) if a)
        chunk_logits = c * T * teacher.vocab * (e + 4 + 4)
        collect = 2 * store + kv + chunk_logits
    train_phase = sum(v for k, v in comps.items() if k != "rollout_store") + store
    states_total = comps["params"] + comps["grads"] + comps["optimizer"] + comps["deepspeed_buffers"] + \
        comps["teacher"]
    collect_phase = states_total + collect if recipe.objective == "minillm" else 0.0
    peak = max(train_phase, collect_phase)
    need = peak * (1 + fragmentation) + context_gib * GiB
    capacity = card_gib * usable * GiB
    return {"recipe": recipe, "student": student, "teacher": teacher, "components": comps,
            "deepspeed_estimate": states["deepspeed"], "train_phase": train_phase, "collect_phase": collect_phase,
            "peak": peak, "need": need, "capacity": capacity, "fits": need <= capacity}


# ---------------------------------------------------------------------------------------------- reading commands
def _entrypoint(argv: list[str]) -> tuple[str, list[str], int, int]:
    """(module, flags, processes per node, nodes) of a printed launcher command."""
    launcher = Path(argv[0]).name
    if launcher == "torchrun":
        per_node = int(argv[argv.index("--nproc-per-node") + 1])
        at = argv.index("--module")
        return argv[at + 1], argv[at + 2:], per_node, 1
    if launcher == "deepspeed":
        per_node = int(argv[argv.index("--num_gpus") + 1])
        nodes = int(argv[argv.index("--num_nodes") + 1]) if "--num_nodes" in argv else 1
        at = argv.index("--module")
        return argv[at + 1], argv[at + 2:], per_node, nodes
    if launcher == "python" and argv[1] == "-m":
        return argv[2], argv[3:], 1, 1
    raise ValueError(f"not a training launch: {' '.join(argv[:3])} ...")


def recipe_from_command(command: str, gpus_per_node: int = 8, source: str = "") -> Recipe:
    from minillm.engine.config import parse_config

    module, flags, per_node, nodes = _entrypoint(shlex.split(command))
    if module != "minillm.finetune":
        raise ValueError(f"{module}: not a training run (minillm.finetune)")
    config = parse_config(flags)
    ds = json.loads(Path(config.deepspeed_config).read_text())
    zero = ds.get("zero_optimization", {})
    precision = "bf16" if ds.get("bf16", {}).get("enabled") else "fp16" if ds.get("fp16", {}).get("enabled") else "fp32"
    teacher = None
    if config.teacher_model_path and (config.type in ("kd", "minillm") or
                                      (config.type == "seqkd" and config.kd_ratio > 0)):
        teacher = resolve_model(config.teacher_model_path)
    attention = {"eager": "eager", "sdpa": "auto"}.get(config.attn_implementation, "auto")
    return Recipe(
        student=resolve_model(config.model_path), objective=config.type, teacher=teacher,
        stage=int(zero.get("stage", 0)),
        offload_optimizer=zero.get("offload_optimizer", {}).get("device", "none") not in ("none", None),
        offload_param=zero.get("offload_param", {}).get("device", "none") not in ("none", None),
        precision=precision, micro_batch=config.batch_size, prompt_length=config.max_prompt_length,
        target_length=config.max_target_length, world_size=per_node * nodes,
        gpus_per_node=per_node,
        gradient_checkpointing=bool(getattr(config, "gradient_checkpointing", False)), dropout=config.dropout,
        attention=attention, num_rollouts=config.num_rollouts, chunk_size=config.chunk_size,
        rollout_length=config.rollout_max_new_tokens, teacher_topk=config.teacher_topk,
        lm_term=bool(config.lm_data_dir), ds_config=ds, source=source)


# Inputs a recipe refuses to start without (tests/test_scripts.py keeps the same list).
REQUIRED_ENV = {f"t5-scripts/minillm/{name}": {"PROMPT_DATA_DIR": "prompt_data"}
                for name in ("train_small_xl.sh", "train_base_xl.sh", "train_large_xl.sh", "train_small_xl_no_lm.sh")}


def dry_run(script: str, precision: str = "fp32", num_gpus: str | None = None, base: str | None = None) -> str:
    """The command ``script`` would start (DRY_RUN=1), with PRECISION as on the cluster (fp32 on a V100)."""
    import tempfile

    rel = str(Path(script).resolve().relative_to(REPO)) if Path(script).is_absolute() or Path(script).exists() \
        else script
    env = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if name in os.environ}
    env.update(DRY_RUN="1", PRECISION=precision, MASTER_PORT="29500", **REQUIRED_ENV.get(rel, {}))
    with tempfile.TemporaryDirectory() as tmp:
        args = ["bash", str(REPO / rel), base or tmp] + ([num_gpus] if num_gpus else [])
        result = subprocess.run(args, env=env, capture_output=True, text=True, timeout=60, cwd=tmp)
    if result.returncode != 0 or not result.stdout.strip():
        raise ValueError(f"{rel}: DRY_RUN=1 exited {result.returncode}: {result.stderr.strip()}")
    return result.stdout.strip().splitlines()[-1]


def training_recipes() -> list[str]:
    """Every script that launches minillm.finetune (T5 and decoder-only), relative to the repository."""
    found = []
    for folder in ("t5-scripts", "scripts"):
        for path in sorted((REPO / folder).rglob("*.sh")):
            text = path.read_text()
            if path.name != "common.sh" and not path.name.startswith("run_default") and \
                    re.search(r"^\s*launch_(dolly_training|training|minillm)\b", text, re.M):
                found.append(str(path.relative_to(REPO)))
    return found


def recipe_from_script(script: str, precision: str = "fp32", gpus_per_node: int = 8) -> Recipe:
    """The recipe as ``script`` runs it on nodes of ``gpus_per_node`` GPUs: the script's second argument (its
    process count per node) set to ``gpus_per_node`` (0: the script's own default); multi-node recipes (HOSTFILE,
    NUM_NODES) keep their node count."""
    return recipe_from_command(dry_run(script, precision, str(gpus_per_node) if gpus_per_node else None),
                               gpus_per_node, source=script)


# ---------------------------------------------------------------------------------------------- output
def _gib(x: float) -> str:
    return f"{x / GiB:.1f}"


def describe(p: dict) -> str:
    r: Recipe = p["recipe"]
    s = p["student"]
    lines = [f"{r.source or r.student}: {r.objective} {r.student} ({s.params / 1e6:.0f}M)"
             + (f", teacher {r.teacher} ({p['teacher'].params / 1e6:.0f}M)" if r.teacher else "")
             + f"; {r.world_size} GPUs, ZeRO-{r.stage}{' offload' if r.offload_optimizer else ''}"
             + f"{'+param' if r.offload_param else ''}, {r.precision}, micro-batch {r.micro_batch}, "
             + f"lengths {r.prompt_length}/{r.rollout_length if r.objective == 'minillm' else r.target_length}"
             + (", gradient checkpointing" if r.gradient_checkpointing else "")]
    for k, v in p["components"].items():
        lines.append(f"  {k:20s} {_gib(v):>7s} GiB")
    if p["deepspeed_estimate"] is not None:
        lines.append(f"  (DeepSpeed's estimator for the model states: {_gib(p['deepspeed_estimate'])} GiB)")
    if r.objective == "minillm":
        lines.append(f"  phases: training {_gib(p['train_phase'])} GiB, rollout collection {_gib(p['collect_phase'])} GiB")
    lines.append(f"  peak {_gib(p['peak'])} GiB -> with allowance {_gib(p['need'])} GiB of {_gib(p['capacity'])} GiB: "
                 + ("fits" if p["fits"] else "DOES NOT FIT"))
    return "\n".join(lines)


def markdown_table(plans: list[dict]) -> str:
    rows = ["| recipe | student / teacher | GPUs | ZeRO | micro-batch | ckpt | states | activ.+loss | teacher | "
            "rollouts | peak | need | fits |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        r, c = p["recipe"], p["components"]
        states = c["params"] + c["grads"] + c["optimizer"] + c["deepspeed_buffers"]
        act = c["activations"] + c["loss_vocab_tensors"] + c["backward_transient"] + c.get("teacher_forward", 0)
        zero = f"{r.stage}" + (" off" if r.offload_optimizer else "") + ("+p" if r.offload_param else "")
        rows.append(f"| {r.source} | {r.student}{' / ' + r.teacher if r.teacher else ''} | {r.world_size} | {zero} | "
                    f"{r.micro_batch} | {'yes' if r.gradient_checkpointing else 'no'} | {_gib(states)} | {_gib(act)} | "
                    f"{_gib(c['teacher'])} | {_gib(c.get('rollout_store', 0))} | {_gib(p['peak'])} | "
                    f"{_gib(p['need'])} | {'yes' if p['fits'] else '**no**'} |")
    return "\n".join(rows)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--script", help="a recipe script (run with DRY_RUN=1)")
    src.add_argument("--command", help="a launcher command line as DRY_RUN prints it")
    src.add_argument("--model", help="explicit: the student (hub name, recipe folder or one of the known names)")
    src.add_argument("--all-recipes", action="store_true", help="every training recipe under t5-scripts/, scripts/")
    ap.add_argument("--teacher")
    ap.add_argument("--objective", default="sft", choices=["sft", "kd", "seqkd", "minillm"])
    ap.add_argument("--zero-stage", type=int, default=0, choices=[0, 1, 2, 3])
    ap.add_argument("--offload-optimizer", action="store_true")
    ap.add_argument("--offload-param", action="store_true")
    ap.add_argument("--batch-size", type=int, default=1, help="micro-batch per GPU")
    ap.add_argument("--prompt-length", type=int, default=512)
    ap.add_argument("--target-length", type=int, default=128)
    ap.add_argument("--rollout-length", type=int, default=64)
    ap.add_argument("--num-rollouts", type=int, default=256)
    ap.add_argument("--chunk-size", type=int, default=16)
    ap.add_argument("--teacher-topk", type=int, default=0)
    ap.add_argument("--lm-term", action="store_true")
    ap.add_argument("--num-gpus", type=int, default=8,
                    help="GPUs (processes) per node; scripts get it as their NUM_GPUS argument (0: their default)")
    ap.add_argument("--num-nodes", type=int, default=1)
    ap.add_argument("--gradient-checkpointing", action="store_true")
    ap.add_argument("--attention", default="auto", choices=["auto", "eager", "fused"])
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                    help="explicit plans, and PRECISION for scripts (fp32: a V100)")
    ap.add_argument("--card-gib", type=float, default=32.0, help="GPU memory (a V100-32GB: 32)")
    ap.add_argument("--context-gib", type=float, default=1.0, help="CUDA context, cuBLAS workspace, NCCL")
    ap.add_argument("--fragmentation", type=float, default=0.10, help="share added for the allocator's waste")
    ap.add_argument("--markdown", action="store_true", help="a markdown table (with --all-recipes)")
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    allowance = dict(card_gib=args.card_gib, context_gib=args.context_gib, fragmentation=args.fragmentation)
    if args.all_recipes:
        plans = [plan(recipe_from_script(s, args.precision, args.num_gpus), **allowance) for s in training_recipes()]
    elif args.script:
        plans = [plan(recipe_from_script(args.script, args.precision, args.num_gpus), **allowance)]
    elif args.command:
        plans = [plan(recipe_from_command(args.command, args.num_gpus, source="command"), **allowance)]
    else:
        model = args.model if args.model in MODELS else resolve_model(args.model)
        recipe = Recipe(student=model, objective=args.objective,
                        teacher=(args.teacher if args.teacher in MODELS else resolve_model(args.teacher))
                        if args.teacher else None,
                        stage=args.zero_stage, offload_optimizer=args.offload_optimizer,
                        offload_param=args.offload_param, precision=args.precision, micro_batch=args.batch_size,
                        prompt_length=args.prompt_length, target_length=args.target_length,
                        world_size=args.num_gpus * args.num_nodes, gpus_per_node=args.num_gpus,
                        gradient_checkpointing=args.gradient_checkpointing, attention=args.attention,
                        num_rollouts=args.num_rollouts, chunk_size=args.chunk_size,
                        rollout_length=args.rollout_length, teacher_topk=args.teacher_topk, lm_term=args.lm_term,
                        ds_config={"zero_optimization": {"stage": args.zero_stage,
                                                         "overlap_comm": args.zero_stage >= 2}},
                        source=f"{args.model} (explicit)")
        plans = [plan(recipe, **allowance)]
    if args.markdown:
        print(markdown_table(plans))
    else:
        print("\n\n".join(describe(p) for p in plans))
    return 0 if all(p["fits"] for p in plans) else 1


if __name__ == "__main__":
    sys.exit(main())

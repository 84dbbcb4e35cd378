"""What the tests share: tiny models and configurations (Flan-T5's family and the decoder-only ones: GPT-2, OPT,
LLaMA, with each family's special ids), a stand-in for DeepSpeed's engine, and running the recipe scripts and
command lines the way a user does (environment, exit status, JSON-lines output)."""

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig, OPTForCausalLM,
                          T5Config, T5ForConditionalGeneration)
from transformers.models.llama.modeling_llama import LlamaRMSNorm
from transformers.models.t5.modeling_t5 import T5LayerNorm

from minillm.cli import make_dolly_sample
from minillm.data.templates import get_instruction_template
from minillm.models import ModelAdapter
from minillm.models import adapter_for as family_adapter_for
from minillm.models.tiny import CAUSAL_SPECIAL_TOKENS

REPO = Path(__file__).resolve().parents[1]
PAD, EOS = 0, 1

FAMILIES = ("t5", "gpt2", "opt", "llama")
# (pad, EOS, banned ids) of each family: T5's pad is its decoder start, never an output; GPT-2 pads with its EOS and
# bans nothing (a sequence must be able to end); OPT's <pad> and LLaMA's <unk> (its pad) are never outputs.
SPECIAL_IDS = {"t5": (PAD, EOS, (PAD,)), "gpt2": (0, 0, ()), "opt": (1, 2, (1,)), "llama": (0, 2, (0,))}


def output_words(family: str, vocab_size: int) -> list[int]:
    """The ids a target may hold besides EOS: neither banned nor EOS (LLaMA's BOS and OPT's <s> included)."""
    _, eos, banned = SPECIAL_IDS[family]
    return [i for i in range(vocab_size) if i != eos and i not in banned]


class InputDtypeT5LayerNorm(T5LayerNorm):
    """T5's RMS norm ``w * x / sqrt(mean(x^2) + eps)`` computed in the input's dtype. Transformers takes the mean
    square in fp32 even for fp64 inputs, which rounds a float64 model's activations to about 1e-7 relative and would
    cap the exact-gradient tests there; for fp32 inputs the two are the same computation."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def tiny_t5(vocab_size: int, d_model: int, seed: int, dtype=torch.float64, sharpen: float = 0.3,
            eos_logit_zero: bool = False) -> T5ForConditionalGeneration:
    """A random T5 with Flan-T5's conventions (pad 0 = decoder start, EOS 1), in eval mode. Random init gives
    near-uniform distributions: the output layer is scaled by ``sharpen`` so tests have signal, and
    ``eos_logit_zero`` pins EOS's logit to 0 so sampled targets end at varied lengths. Its norms compute in the
    model's dtype (:class:`InputDtypeT5LayerNorm`), so a float64 model is float64 end to end."""
    config = T5Config(tie_word_embeddings=False, vocab_size=vocab_size, d_model=d_model, d_ff=2 * d_model,
                      num_layers=1, num_decoder_layers=2,
                      num_heads=2, d_kv=d_model // 2, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                      decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).to(dtype).eval()
    for module in model.modules():
        if isinstance(module, T5LayerNorm):
            module.__class__ = InputDtypeT5LayerNorm  # same parameter, only the forward changes
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())  # untied (as Flan-T5)
    with torch.no_grad():
        model.lm_head.weight.mul_(sharpen)
        if eos_logit_zero:
            model.lm_head.weight[EOS] = 0.0
    return model


class InputDtypeLlamaRMSNorm(LlamaRMSNorm):
    """LLaMA's RMS norm in the input's dtype, for the same reason as :class:`InputDtypeT5LayerNorm` (transformers
    rounds it through fp32); for fp32 inputs the two are the same computation."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


def tiny_causal(family: str, vocab_size: int, width: int, seed: int, dtype=torch.float64,
                init_std: float = 0.2) -> torch.nn.Module:
    """A random two-layer GPT-2, OPT or LLaMA with the family's special ids (those of
    :data:`minillm.models.tiny.CAUSAL_SPECIAL_TOKENS`, which fit a vocabulary of 3 tokens or more), SDPA attention
    (the eager kernels take the softmax in fp32), in eval mode and ``dtype`` end to end. Weights are drawn with
    standard deviation ``init_std`` instead of the families' 0.02, which over a tiny vocabulary would give nearly
    uniform distributions and no signal."""
    special = CAUSAL_SPECIAL_TOKENS[family]["config"]
    if family == "gpt2":
        config = GPT2Config(vocab_size=vocab_size, n_layer=2, n_embd=width, n_head=2, n_inner=2 * width,
                            n_positions=64, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                            initializer_range=init_std, **special)
        model_class = GPT2LMHeadModel
    elif family == "opt":
        config = OPTConfig(vocab_size=vocab_size, num_hidden_layers=2, hidden_size=width, word_embed_proj_dim=width,
                           num_attention_heads=2, ffn_dim=2 * width, max_position_embeddings=64, dropout=0.0,
                           attention_dropout=0.0, init_std=init_std, **special)
        model_class = OPTForCausalLM
    else:
        config = LlamaConfig(vocab_size=vocab_size, num_hidden_layers=2, hidden_size=width, num_attention_heads=2,
                             num_key_value_heads=2, intermediate_size=2 * width, max_position_embeddings=64,
                             attention_dropout=0.0, tie_word_embeddings=False, initializer_range=init_std, **special)
        model_class = LlamaForCausalLM
    config._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = model_class(config).to(dtype).eval()
    for module in model.modules():
        if isinstance(module, LlamaRMSNorm):
            module.__class__ = InputDtypeLlamaRMSNorm  # same parameter, only the forward changes
    return model


def minillm_config(**overrides) -> SimpleNamespace:
    """MiniLLM settings in their unbiased configuration unless overridden."""
    values = dict(teacher_model_path="teacher", rollout_max_new_tokens=3, teacher_mixed_alpha=0.0, temperature=1.0,
                  top_k=0, top_p=1.0, gamma=1.0, length_norm=False, whiten_advantages=False, cliprange=None,
                  reward_scaling=1.0, cliprange_reward=None, single_step_reg=False, lm_coef=0.0, teacher_topk=0,
                  whiten_scope="collection")
    values.update(overrides)
    return SimpleNamespace(**values)


def hand_keep(scaled_logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """The sampler's keep-set, restated one position at a time: the ``top_k`` most likely tokens (0: all), then of
    those, renormalised, the most likely ones until their mass reaches ``top_p``."""
    keep = torch.zeros(scaled_logits.shape, dtype=torch.bool)
    flat_keep = keep.view(-1, scaled_logits.shape[-1])
    for row, row_keep in zip(scaled_logits.detach().reshape(-1, scaled_logits.shape[-1]), flat_keep):
        order = [v for v in row.argsort(descending=True).tolist() if row[v] > -math.inf]
        if top_k:
            order = order[:top_k]
        mass = 0.0
        for v, prob in zip(order, row[order].softmax(-1).tolist()):
            row_keep[v] = True
            mass += prob
            if mass >= top_p:
                break
    return keep


def adapter_for(model) -> ModelAdapter:
    """The adapter the engine picks for ``model`` (from its config; special ids from the config too)."""
    return family_adapter_for(model)


class Engine(torch.nn.Module):
    """A DeepSpeed engine as the adapter and the sampler see it: calls (forward) reach the model, its attributes
    (``get_encoder``, ``config``) do not."""

    def __init__(self, model):
        super().__init__()
        self.module = model

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def load_tool(name: str):
    """The script tools/<name>.py as module ``name``, loaded once: tools/ is a folder of scripts, not a package, and
    its scripts import each other by their plain names (the folder of a script is first on its sys.path)."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # before running it: dataclasses look their module up by name
        spec.loader.exec_module(module)
    return sys.modules[name]


def script_env(defaults: dict | None = None, /, **overrides) -> dict[str, str]:
    """This process's environment, then ``defaults``, then ``overrides``, every value as a string: what a recipe
    script or a command line started by a test runs with."""
    merged = {**(defaults or {}), **overrides}
    return dict(os.environ, **{key: str(value) for key, value in merged.items()})


def assert_ok(done: subprocess.CompletedProcess) -> None:
    """``done`` exited with status 0; a failure shows the end of what it printed."""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def run_t5_script(script: str, env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``bash t5-scripts/<script> <repository>`` (BASE the repository) with ``env``, its output captured; the exit
    status is the caller's to check."""
    return subprocess.run(["bash", str(REPO / "t5-scripts" / script), str(REPO)], env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_ok(command: list[str], timeout: int = 300, **env_overrides) -> subprocess.CompletedProcess:
    """``command`` run from the repository root with :func:`script_env`'s environment; it must exit with status 0."""
    done = subprocess.run(command, cwd=REPO, env=script_env(**env_overrides), capture_output=True, text=True,
                          timeout=timeout)
    assert_ok(done)
    return done


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, one a line."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def write_dolly_sample(folder: Path, rows: int) -> tuple[Path, list[str]]:
    """The offline Dolly sample (minillm-make-dolly-sample) of ``rows`` rows as ``folder``/sample.jsonl, and a
    tokenizer corpus of its text: the alpaca template with and without an input, and every field of every row."""
    path = Path(folder) / "sample.jsonl"
    make_dolly_sample.main(["--out", str(path), "--rows", str(rows)])
    template = get_instruction_template("alpaca")
    corpus = [template.prompt("x", "y"), template.prompt("x", "")]
    corpus += [" ".join(row.values()) for row in read_jsonl(path)]
    return path, corpus

"""The model seam: everything the engine, the objectives, rollouts and evaluation may ask of a model.

No module outside ``minillm/models/`` names a model class; it asks :func:`minillm.models.load_model` for a model
and :func:`minillm.models.adapter_for` for the adapter that goes with it (chosen from the model's config:
``is_encoder_decoder`` -> :class:`~minillm.models.seq2seq.Seq2SeqAdapter`, else
:class:`~minillm.models.causal.CausalLMAdapter`).

Batch convention, the same for every family (the adapter converts internally):

- ``input_ids`` / ``attention_mask`` ``[B, S]``: the prompt, **right**-padded with the pad id;
- ``labels`` ``[B, T]``: the target (response) ids, ending in EOS, right-padded with -100 (``IGNORE_INDEX``);
- logits ``[B, T, V]`` aligned with ``labels``: ``logits[b, t]`` is the model's distribution for ``labels[b, t]``
  given the prompt and ``labels[b, :t]``.

A decoding state steps one model token by token with its own key-value cache, so that two models (student and
teacher) can sample together; the log-probabilities recorded while decoding equal the teacher-forced ones of
:meth:`ModelAdapter.logits` on the finished targets (to 1e-5 in fp32), which the policy-gradient math relies on.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, runtime_checkable

import torch

IGNORE_INDEX = -100


@runtime_checkable
class ModelAdapter(Protocol):
    """How a (prompt, target) batch meets one model family."""

    pad_token_id: int
    eos_token_id: int
    banned_ids: tuple[int, ...]
    """Ids no distribution may put mass on, in sampling, scoring, generation and the token-level KL (a -inf logit):
    the pad id when it is not a real output (T5: pad is the decoder start; a causal model whose pad differs from
    EOS); empty when pad must equal EOS (GPT-2), so that sampling can still end a sequence."""

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Teacher-forced logits ``[B, T, V]`` aligned with ``batch["labels"]`` (raw: nothing banned)."""

    def token_logprobs(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``log p(labels[b, t] | ...)`` ``[B, T]`` in fp32 from aligned logits, 0 where ``labels`` is -100."""

    def encode_prompts(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """A prompt context computed once per batch of prompts and reused by :meth:`context_logits` and
        :meth:`generate` (encoder-decoder: the encoder states; decoder-only: the prompts themselves)."""

    def context_logits(self, model, context: Any, labels: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """Teacher-forced logits ``[B * repeat, T, V]`` aligned with ``labels`` ``[B * repeat, T]``, whose row
        ``b * repeat + k`` continues prompt ``b`` of ``context`` (rank classification scores ``repeat`` options
        per prompt in one pass)."""

    def start_decoding(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> Any:
        """A fresh decoding state for ``model`` over these prompts (no model call yet, or the encoder pass)."""

    def decode_step(self, model, state: Any, tokens: torch.Tensor | None) -> tuple[torch.Tensor, Any]:
        """Feed ``tokens`` ``[B]`` (``None`` at the first step) and return the next-token logits ``[B, V]`` (raw)
        and the advanced state. Rows that have ended are fed the pad id; what they produce is never used."""

    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 context: Any = None, **generate_kwargs) -> torch.Tensor:
        """Generated targets ``[B, T]`` in the labels convention (EOS kept, -100 after it), ``banned_ids`` never
        generated; ``context`` from :meth:`encode_prompts` when the caller has it; ``generate_kwargs`` go to the
        Hugging Face ``generate`` (sampling, beams, ``no_repeat_ngram_size``, ``synced_gpus``)."""

    def token_counts(self, batch: dict) -> tuple[int, int]:
        """(real tokens, computed cells) of a batch: its padding fraction is ``1 - real / cells``."""


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits)`` picked at ``labels`` in fp32, zero where ``labels`` is -100 (also when ``logits`` ban
    ids: the -inf picked at a padding position is replaced, not multiplied by 0, which would give NaN)."""
    mask = labels != IGNORE_INDEX
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    picked = logprobs.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
    return picked.masked_fill(~mask, 0.0)


def ban(logits: torch.Tensor, banned_ids) -> torch.Tensor:
    """``logits`` in fp32 (fp64 stays fp64) with the banned ids at -inf."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    if banned_ids:
        logits = logits.index_fill(-1, torch.as_tensor(banned_ids, device=logits.device), -math.inf)
    return logits


def unwrap(model):
    """The Hugging Face model inside a DeepSpeed engine (engines forward calls, not ``get_encoder`` or ``config``)."""
    return getattr(model, "module", model)


def from_pretrained(auto_class, path, *, dtype: torch.dtype, options: dict, attn_implementation: str | None,
                    fused_kernels: bool, device_type: str):
    """``auto_class.from_pretrained(path)`` in ``dtype`` with ``options``, the attention kernel
    ``attn_implementation`` (already resolved by the family; None keeps the library's default) and, with
    ``fused_kernels``, the fused elementwise modules (:func:`minillm.models.fused.fuse_elementwise`; the CPU forms
    when ``device_type`` is ``cpu``)."""
    from .fused import fuse_elementwise

    if attn_implementation is not None:
        options = {**options, "attn_implementation": attn_implementation}
    model = auto_class.from_pretrained(path, dtype=dtype, **options)
    if fused_kernels:
        fuse_elementwise(model, cpu=device_type == "cpu")
    return model

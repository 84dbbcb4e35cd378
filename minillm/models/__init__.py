"""Models: loading and the adapter that goes with each family (the seam described in :mod:`minillm.models.base`).

The family comes from the checkpoint's config: ``is_encoder_decoder`` -> :class:`~minillm.models.seq2seq.
Seq2SeqAdapter`, else :class:`~minillm.models.causal.CausalLMAdapter` (imported when first needed).
"""

from __future__ import annotations

import contextlib

import torch

from .base import IGNORE_INDEX, ModelAdapter, unwrap
from .seq2seq import Seq2SeqAdapter


def _family(is_encoder_decoder: bool):
    if is_encoder_decoder:
        return Seq2SeqAdapter
    from .causal import CausalLMAdapter

    return CausalLMAdapter


def load_model(path, *, dtype=torch.float32, attn_implementation: str | None = "auto", fused_kernels: bool = False,
               device_type: str = "cpu", dropout: float | None = None, flag: str | None = "--model-path"):
    """The model at ``path`` (hub name or folder), loaded by its family's adapter (``load``, with these keyword
    arguments). A checkpoint that cannot be loaded (not on the hub, offline, a folder without weights) is bad input:
    a one-line ValueError naming ``flag``; with ``flag`` None the error is left as it is, for callers that report
    load failures their own way."""
    from transformers import AutoConfig

    with _load_errors_as_value_errors(flag, path):
        family = _family(AutoConfig.from_pretrained(path).is_encoder_decoder)
        return family.load(path, dtype=dtype, attn_implementation=attn_implementation, fused_kernels=fused_kernels,
                           device_type=device_type, dropout=dropout)


def load_tokenizer(path, flag: str | None = "--tokenizer-path"):
    """The tokenizer at ``path``; errors as in :func:`load_model`."""
    from transformers import AutoTokenizer

    with _load_errors_as_value_errors(flag, path):
        return AutoTokenizer.from_pretrained(path)


def adapter_for(model, tokenizer=None) -> ModelAdapter:
    """The adapter of ``model``'s family (a DeepSpeed engine is unwrapped to read the config)."""
    return _family(unwrap(model).config.is_encoder_decoder).for_model(model, tokenizer)


@contextlib.contextmanager
def _load_errors_as_value_errors(flag: str | None, path):
    if flag is None:
        yield
        return
    try:
        yield
    except OSError as err:
        first_line = (str(err).strip() or type(err).__name__).splitlines()[0]
        raise ValueError(f"{flag} {path}: cannot load it ({first_line})") from None


__all__ = ["IGNORE_INDEX", "ModelAdapter", "Seq2SeqAdapter", "adapter_for", "load_model", "load_tokenizer"]

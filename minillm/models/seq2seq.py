"""Encoder-decoder models (the T5 family) behind the :class:`~minillm.models.base.ModelAdapter` seam.

The encoder reads the prompt; the decoder input is the target shifted right by one with the decoder start token
(T5: pad, id 0) in front, so the decoder's output at position t predicts ``labels[t]``. The labels never carry the
start token: it is added exactly once, here (fed by :meth:`Seq2SeqAdapter.decoder_input_ids` when teacher forcing,
fed first by :meth:`Seq2SeqAdapter.decode_step` when decoding). Pad is the start token and the padding, never an
output: it is the one banned id, suppressed in generation and given a -inf logit wherever distributions are sampled
or scored, so evaluation and SeqKD targets come from the distribution that scoring and on-policy sampling use.

A prompt context is the encoder's output: computed once per batch of prompts, it serves every decoder pass over
them (options, gold targets, generation) and each decoding state, so no prompt is encoded twice. Each model of a
pair encodes with its own encoder: a teacher decoder never reads the student's encoder states (different widths
would crash; equal widths would be silently wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import IGNORE_INDEX, from_pretrained, token_logprobs, unwrap


@dataclass(frozen=True)
class EncodedPrompts:
    """The encoder's output over a batch of prompts, with the prompts' attention mask (the decoder attends to the
    encoder states through it)."""

    encoder_outputs: object  # transformers' BaseModelOutput
    attention_mask: torch.Tensor


@dataclass(frozen=True)
class DecodingState:
    """One model's decoding: its prompt context and its own key-value cache (None before the first step)."""

    context: EncodedPrompts
    cache: object = None


class Seq2SeqAdapter:
    """Encoder-decoder models with a Hugging Face ``AutoModelForSeq2SeqLM`` interface (T5 family)."""

    def __init__(self, decoder_start_token_id: int, pad_token_id: int, eos_token_id: int):
        self.decoder_start_token_id = decoder_start_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.banned_ids = (pad_token_id,)

    @classmethod
    def load(cls, path, *, dtype=torch.float32, attn_implementation: str | None = "auto", fused_kernels: bool = False,
             device_type: str = "cpu", dropout: float | None = None, allow_pickle: bool = False):
        """The model at ``path`` (hub name or folder) in ``dtype``, on the CPU; its weights from safetensors only
        unless ``allow_pickle`` (:func:`minillm.models.load_model`).

        ``attn_implementation``: ``auto`` is eager attention on a CPU (faster there: torch's SDPA has no fused CPU
        kernel for training with dropout; docs/performance.md) and SDPA elsewhere; None keeps the library's default;
        any other name is passed on.
        ``fused_kernels`` swaps T5's elementwise modules for fused ones (:func:`minillm.models.fused.fuse_elementwise`,
        the CPU forms when ``device_type`` is ``cpu``); ``dropout`` overrides the checkpoint's ``dropout_rate``."""
        from transformers import AutoModelForSeq2SeqLM

        options = {} if dropout is None else {"dropout_rate": dropout}
        options["use_safetensors"] = None if allow_pickle else True  # None: safetensors first, else a pickle
        if attn_implementation == "auto":
            attn_implementation = "eager" if device_type == "cpu" else "sdpa"
        return from_pretrained(AutoModelForSeq2SeqLM, path, dtype=dtype, options=options,
                               attn_implementation=attn_implementation, fused_kernels=fused_kernels,
                               device_type=device_type)

    @classmethod
    def for_model(cls, model, tokenizer=None) -> "Seq2SeqAdapter":
        """The adapter for ``model`` (a DeepSpeed engine is unwrapped); the special ids come from its config, which
        for T5 agrees with the tokenizer, so ``tokenizer`` is not needed."""
        config = unwrap(model).config
        return cls(config.decoder_start_token_id, config.pad_token_id, config.eos_token_id)

    # ------------------------------------------------------------------------------------------ teacher forcing

    def decoder_input_ids(self, labels: torch.Tensor) -> torch.Tensor:
        """``[start, y_0, ..., y_{T-2}]`` with padding (-100) replaced by the pad id."""
        shifted = labels.new_full(labels.shape, self.pad_token_id)
        shifted[:, 1:] = labels[:, :-1]
        shifted[:, 0] = self.decoder_start_token_id
        return shifted.masked_fill(shifted == IGNORE_INDEX, self.pad_token_id)

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Teacher-forced logits ``[B, T, V]`` aligned with ``batch["labels"]``."""
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     decoder_input_ids=self.decoder_input_ids(batch["labels"]), use_cache=False).logits

    token_logprobs = staticmethod(token_logprobs)

    def encode_prompts(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> EncodedPrompts:
        """The encoder pass (through the bare model: an engine forwards calls, not ``get_encoder``; ZeRO-3 still
        gathers the encoder's parameters through its hooks)."""
        encoder = unwrap(model).get_encoder()
        return EncodedPrompts(encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True),
                              attention_mask)

    def context_logits(self, model, context: EncodedPrompts, labels: torch.Tensor, repeat: int = 1) -> torch.Tensor:
        """One decoder pass over ``labels`` whose row ``b * repeat + k`` continues prompt ``b``: the encoder states
        repeated ``repeat`` times along the batch (``repeat_interleave``)."""
        from transformers.modeling_outputs import BaseModelOutput

        hidden, mask = context.encoder_outputs.last_hidden_state, context.attention_mask
        if repeat > 1:
            hidden, mask = hidden.repeat_interleave(repeat, dim=0), mask.repeat_interleave(repeat, dim=0)
        return model(encoder_outputs=BaseModelOutput(last_hidden_state=hidden), attention_mask=mask,
                     decoder_input_ids=self.decoder_input_ids(labels), use_cache=False).logits

    # ------------------------------------------------------------------------------------------ decoding

    def start_decoding(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DecodingState:
        """The encoder pass; no decoder call yet."""
        return DecodingState(self.encode_prompts(model, input_ids, attention_mask))

    def decode_step(self, model, state: DecodingState, tokens: torch.Tensor | None
                    ) -> tuple[torch.Tensor, DecodingState]:
        """One incremental decoder call on the model's own key-value cache: the decoder start token at the first
        step (``tokens`` None), else ``tokens``."""
        if tokens is None:
            batch = state.context.attention_mask.shape[0]
            tokens = state.context.attention_mask.new_full((batch,), self.decoder_start_token_id, dtype=torch.long)
        out = model(encoder_outputs=state.context.encoder_outputs, attention_mask=state.context.attention_mask,
                    decoder_input_ids=tokens.unsqueeze(-1), cache=state.cache, use_cache=True)
        return out.logits[:, -1], DecodingState(state.context, out.cache)

    @torch.no_grad()
    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 context: EncodedPrompts | None = None, **generate_kwargs) -> torch.Tensor:
        """Generated target ids ``[B, T]`` without the decoder start token, padded with -100 after EOS. The pad id
        gets a -inf logit at every step before any sampling warper (``suppress_tokens``), so it is never generated;
        the decoder start token (pad in T5) is still the first decoder input. With ``context`` the encoder does not
        run again."""
        if context is not None:
            generate_kwargs["encoder_outputs"] = context.encoder_outputs
        out = unwrap(model).generate(input_ids=input_ids, attention_mask=attention_mask,
                                     max_new_tokens=max_new_tokens, decoder_start_token_id=self.decoder_start_token_id,
                                     pad_token_id=self.pad_token_id, eos_token_id=self.eos_token_id,
                                     suppress_tokens=list(self.banned_ids), **generate_kwargs)
        targets = out[:, 1:]
        after_eos = (targets == self.eos_token_id).long().cumsum(-1) - (targets == self.eos_token_id).long()
        return targets.masked_fill(after_eos > 0, IGNORE_INDEX).contiguous()

    @staticmethod
    def token_counts(batch: dict) -> tuple[int, int]:
        """Over the encoder input and the decoder target, which are computed apart: real tokens are the prompt's
        unmasked ids plus the target's non -100 ids; cells are both tensors' sizes."""
        real = int(batch["attention_mask"].sum()) + int((batch["labels"] != IGNORE_INDEX).sum())
        return real, batch["input_ids"].numel() + batch["labels"].numel()

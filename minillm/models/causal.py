"""Decoder-only models (GPT-2, OPT, LLaMA) behind the :class:`~minillm.models.base.ModelAdapter` seam.

A decoder-only model reads prompt and response as one sequence. With the prompt ``x`` (``S`` columns) and the
labels ``y`` (``T`` columns) it is fed ``[x, y_0, ..., y_{T-2}]`` and its output at position ``S - 1 + t`` is the
distribution of ``y_t`` given ``x`` and ``y_<t``: slicing the last ``T`` positions gives logits aligned with the
labels, so the loss covers the response tokens only by construction. ``y_{T-1}`` is never fed: no logit needs it.

Why left padding: the batch convention pads prompts on the right, which would put pad cells between a short prompt
and its response. The adapter moves every row's pad cells to the front (a stable sort on the attention mask), so
each prompt ends at column ``S - 1`` and one slice serves every row; the pad cells are masked out of attention.

Why explicit position ids: a row that starts with ``k`` pad cells must still see its first real token at position
0. ``position_ids = cumsum(attention_mask) - 1`` (clamped at 0 on the pad cells) gives each real token its position
in the unpadded sequence. GPT-2 counts columns (``0 .. S + T - 2``) when none are given, and its learned absolute
positions would then be shifted by ``k`` (OPT derives its positions from the mask; LLaMA's rotary attention scores
depend on relative positions only): the ids are always passed, in teacher forcing, decoding and generation alike.

Padding is masked by the attention mask, never by comparing ids with the pad id: GPT-2 pads with its EOS, and an
EOS inside a prompt is attended to normally. Pad is banned (``banned_ids``) only when it differs from EOS (OPT's
``<pad>``, LLaMA's ``<unk>``); GPT-2 bans nothing, since its pad is the EOS every sequence must be able to end with.

Decoding steps one model on its own key-value cache (transformers' ``DynamicCache``, the ``cache`` argument and
output field in transformers 5): the first step runs the whole left-padded prompt, each later step one token per
row with the mask extended by one column and the position ids continuing, so the recorded log-probabilities equal
the teacher-forced ones of :meth:`CausalLMAdapter.logits` on the finished targets.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import IGNORE_INDEX, from_pretrained, token_logprobs, unwrap

# The config fields a dropout override sets, per model type (GPT-2 has three separate rates; LLaMA only drops
# attention weights).
DROPOUT_FIELDS = {
    "gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    "opt": ("dropout", "attention_dropout"),
    "llama": ("attention_dropout",),
}


@dataclass(frozen=True)
class LeftPaddedPrompts:
    """A batch of prompts with their pad cells moved to the front, so that every prompt ends in the last column."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor


@dataclass(frozen=True)
class DecodingState:
    """One model's decoding: the prompts, the attention mask over every column fed so far, the position of the last
    fed token of each row ``[B]``, and the model's own key-value cache (None before the first step; transformers
    extends a cache in place, so a state is spent once it has been stepped)."""

    prompts: LeftPaddedPrompts
    attention_mask: torch.Tensor
    last_position: torch.Tensor | None = None
    cache: object = None


def left_pad(input_ids: torch.Tensor, attention_mask: torch.Tensor, pad_token_id: int) -> LeftPaddedPrompts:
    """Each row's masked cells moved to the front and filled with ``pad_token_id``, its tokens kept in order (a
    stable sort of the mask: already left-padded rows are unchanged)."""
    order = torch.sort(attention_mask, dim=-1, stable=True).indices
    mask = attention_mask.gather(-1, order)
    ids = input_ids.gather(-1, order).masked_fill(mask == 0, pad_token_id)
    return LeftPaddedPrompts(ids, mask)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Each attended cell's position among its row's attended cells (``cumsum(mask) - 1``), 0 on leading pad cells."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


class CausalLMAdapter:
    """Decoder-only models with a Hugging Face ``AutoModelForCausalLM`` interface (GPT-2, OPT, LLaMA)."""

    def __init__(self, pad_token_id: int, eos_token_id: int):
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.banned_ids = () if pad_token_id == eos_token_id else (pad_token_id,)

    @classmethod
    def load(cls, path, *, dtype=torch.float32, attn_implementation: str | None = "auto", fused_kernels: bool = False,
             device_type: str = "cpu", dropout: float | None = None, allow_pickle: bool = False):
        """The model at ``path`` (hub name or folder) in ``dtype``, on the CPU; its weights from safetensors only
        unless ``allow_pickle`` (:func:`minillm.models.load_model`).

        ``attn_implementation``: ``auto`` is SDPA on every device; None keeps the library's default; any other name
        is passed on. ``fused_kernels`` swaps GPT-2's seven-operation ``gelu_new`` for torch's one-kernel tanh GELU
        and, when ``device_type`` is ``cpu``, its dropout modules for the CPU dropout
        (:func:`minillm.models.fused.fuse_elementwise`; OPT and LLaMA have no such modules and load unchanged).
        ``dropout`` overrides every dropout rate of the checkpoint's config (:data:`DROPOUT_FIELDS`); a ValueError
        for a model type whose fields are not known."""
        from transformers import AutoConfig, AutoModelForCausalLM

        options = {"use_safetensors": None if allow_pickle else True}  # None: safetensors first, else a pickle
        if dropout is not None:
            model_type = AutoConfig.from_pretrained(path).model_type
            if model_type not in DROPOUT_FIELDS:
                raise ValueError(f"{path}: no dropout override for model type {model_type!r}; "
                                 f"known types: {', '.join(DROPOUT_FIELDS)}")
            options.update(dict.fromkeys(DROPOUT_FIELDS[model_type], dropout))
        return from_pretrained(AutoModelForCausalLM, path, dtype=dtype, options=options,
                               attn_implementation="sdpa" if attn_implementation == "auto" else attn_implementation,
                               fused_kernels=fused_kernels, device_type=device_type)

    @classmethod
    def for_model(cls, model, tokenizer=None) -> "CausalLMAdapter":
        """The adapter for ``model`` (a DeepSpeed engine is unwrapped). EOS: the tokenizer's, else the config's.
        Pad: the tokenizer's or else the config's pad id when it differs from EOS (OPT); else the tokenizer's unk
        when it differs from EOS (LLaMA, which has no pad token); else EOS (GPT-2)."""
        config = unwrap(model).config
        eos = tokenizer.eos_token_id if tokenizer is not None else config.eos_token_id
        if not isinstance(eos, int):
            raise ValueError(f"the model needs exactly one EOS id, got {eos!r}: pass its tokenizer")
        candidates = [config.pad_token_id]
        if tokenizer is not None:
            candidates = [tokenizer.pad_token_id, config.pad_token_id, tokenizer.unk_token_id]
        pad = next((candidate for candidate in candidates if candidate is not None and candidate != eos), eos)
        return cls(pad, eos)

    # ------------------------------------------------------------------------------------------ teacher forcing

    def _forward_with_labels(self, model, prompts: LeftPaddedPrompts, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, T, V]`` of ``[prompt, labels[:, :-1]]``: position ``S - 1 + t`` predicts ``labels[:, t]``.
        Label padding (-100) is fed as pad and masked; it only follows a row's last label, so it never reaches a
        logit that is used."""
        fed_labels = labels[:, :-1]
        label_mask = (fed_labels != IGNORE_INDEX).to(prompts.attention_mask.dtype)
        input_ids = torch.cat([prompts.input_ids, fed_labels.masked_fill(label_mask == 0, self.pad_token_id)], -1)
        attention_mask = torch.cat([prompts.attention_mask, label_mask], -1)
        # The last T positions as an index tensor, not an int: transformers slices with it, giving contiguous hidden
        # states, which the output layer multiplies as one matrix. A slice is a strided view, which matmul
        # multiplies batch by batch against the [V, d] weight expanded per row (several times slower).
        width = input_ids.shape[1]
        keep = torch.arange(width - labels.shape[1], width, device=input_ids.device)
        return model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                     use_cache=False, logits_to_keep=keep).logits

    def logits(self, model, batch: dict) -> torch.Tensor:
        """Teacher-forced logits ``[B, T, V]`` aligned with ``batch["labels"]`` (raw: nothing banned)."""
        prompts = left_pad(batch["input_ids"], batch["attention_mask"], self.pad_token_id)
        return self._forward_with_labels(model, prompts, batch["labels"])

    token_logprobs = staticmethod(token_logprobs)

    def encode_prompts(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> LeftPaddedPrompts:
        """The prompts themselves, left-padded (no model call: a decoder-only model has no separate prompt pass)."""
        return left_pad(input_ids, attention_mask, self.pad_token_id)

    def context_logits(self, model, context: LeftPaddedPrompts, labels: torch.Tensor, repeat: int = 1
                       ) -> torch.Tensor:
        """Teacher-forced logits over ``labels`` whose row ``b * repeat + k`` continues prompt ``b``: the prompt
        rows repeated ``repeat`` times along the batch (``repeat_interleave``)."""
        if repeat > 1:
            context = LeftPaddedPrompts(context.input_ids.repeat_interleave(repeat, dim=0),
                                        context.attention_mask.repeat_interleave(repeat, dim=0))
        return self._forward_with_labels(model, context, labels)

    # ------------------------------------------------------------------------------------------ decoding

    def start_decoding(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> DecodingState:
        """The prompts, left-padded; no model call yet (the first :meth:`decode_step` runs the prompt)."""
        prompts = left_pad(input_ids, attention_mask, self.pad_token_id)
        return DecodingState(prompts, prompts.attention_mask)

    def decode_step(self, model, state: DecodingState, tokens: torch.Tensor | None
                    ) -> tuple[torch.Tensor, DecodingState]:
        """Logits ``[B, V]`` of the next token and the advanced state. The first step (``tokens`` None) runs the
        whole prompt, filling the cache, and returns the last column's logits (every prompt ends there); later
        steps feed ``tokens`` ``[B]`` as one new column, attended (mask extended by 1) at the next position."""
        if tokens is None:
            positions = position_ids(state.attention_mask)
            out = model(input_ids=state.prompts.input_ids, attention_mask=state.attention_mask,
                        position_ids=positions, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1], DecodingState(state.prompts, state.attention_mask, positions[:, -1], out.cache)
        attention_mask = torch.cat([state.attention_mask, state.attention_mask.new_ones((tokens.shape[0], 1))], -1)
        positions = state.last_position + 1
        out = model(input_ids=tokens.unsqueeze(-1), attention_mask=attention_mask, position_ids=positions.unsqueeze(-1),
                    cache=state.cache, use_cache=True)
        return out.logits[:, -1], DecodingState(state.prompts, attention_mask, positions, out.cache)

    @torch.no_grad()
    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 context: LeftPaddedPrompts | None = None, **generate_kwargs) -> torch.Tensor:
        """Generated targets ``[B, T]`` (only the new tokens, EOS kept, -100 after it) from Hugging Face
        ``generate`` on the left-padded prompts (``context`` when given; it derives the same position ids from the
        mask). ``banned_ids`` are suppressed at every step before any sampling warper (``suppress_tokens``)."""
        prompts = context if context is not None else left_pad(input_ids, attention_mask, self.pad_token_id)
        if self.banned_ids:
            generate_kwargs["suppress_tokens"] = list(self.banned_ids)
        out = unwrap(model).generate(input_ids=prompts.input_ids, attention_mask=prompts.attention_mask,
                                     max_new_tokens=max_new_tokens, pad_token_id=self.pad_token_id,
                                     eos_token_id=self.eos_token_id, **generate_kwargs)
        targets = out[:, prompts.input_ids.shape[1]:]
        is_eos = (targets == self.eos_token_id).long()
        after_eos = is_eos.cumsum(-1) - is_eos
        return targets.masked_fill(after_eos > 0, IGNORE_INDEX).contiguous()

    @staticmethod
    def token_counts(batch: dict) -> tuple[int, int]:
        """Over the one sequence computed, ``[prompt, labels[:, :-1]]``: real tokens are the prompt's attended ids
        plus the fed labels that are not -100; cells are its size, ``B * (S + T - 1)``."""
        labels = batch["labels"]
        real = int(batch["attention_mask"].sum()) + int((labels[:, :-1] != IGNORE_INDEX).sum())
        return real, labels.shape[0] * (batch["input_ids"].shape[1] + labels.shape[1] - 1)

"""Model adapters: the one place that knows how a (prompt, target) batch meets a model.

Everything above this layer (objectives, evaluation, the training loop) works with a batch of

- ``input_ids`` / ``attention_mask`` ``[B, S]``: the prompt, right-padded with the pad id;
- ``labels`` ``[B, T]``: the target ids, ending in EOS, right-padded with -100;

and with logits ``[B, T, V]`` aligned with ``labels``: ``logits[b, t]`` is the model's distribution for
``labels[b, t]`` given the prompt and ``labels[b, :t]``. How that alignment is reached is the adapter's business.

Encoder-decoder (T5): the encoder reads the prompt; the decoder input is the target shifted right by one with the
decoder start token (T5: pad, id 0) in front, so the decoder's output at position t predicts ``labels[t]``. The
labels never carry the start token: it is added exactly once, here. Generation never emits the pad id (it is the
start token and the padding, never an output): it is suppressed at every step, so evaluation and SeqKD targets
come from the distribution that scoring and on-policy sampling use, with pad banned.

A decoder-only adapter (GPT-2, OPT, LLaMA, later) will concatenate prompt and target, run one forward pass, and
slice the logits at ``prompt_length - 1 + t``, so that the same ``[B, T, V]`` alignment holds.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100


class Seq2SeqAdapter:
    """Encoder-decoder models with a Hugging Face ``AutoModelForSeq2SeqLM`` interface (T5 family)."""

    def __init__(self, decoder_start_token_id: int, pad_token_id: int, eos_token_id: int):
        self.decoder_start_token_id = decoder_start_token_id
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id

    @classmethod
    def for_model(cls, model) -> "Seq2SeqAdapter":
        config = model.config
        return cls(config.decoder_start_token_id, config.pad_token_id, config.eos_token_id)

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

    @staticmethod
    def token_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """log p(labels[b, t] | ...) in fp32, zero where ``labels`` is -100 (also when ``logits`` ban ids: the
        -inf picked at a padding position is replaced, not multiplied by 0, which would give NaN)."""
        mask = labels != IGNORE_INDEX
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(-1, labels.masked_fill(~mask, 0).unsqueeze(-1)).squeeze(-1)
        return picked.masked_fill(~mask, 0.0)

    @torch.no_grad()
    def generate(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
                 **generate_kwargs) -> torch.Tensor:
        """Generated target ids ``[B, T]`` without the decoder start token, padded with -100 after EOS. The pad id
        gets a -inf logit at every step before any sampling warper (``suppress_tokens``), so it is never generated;
        the decoder start token (pad in T5) is still the first decoder input."""
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                             decoder_start_token_id=self.decoder_start_token_id, pad_token_id=self.pad_token_id,
                             eos_token_id=self.eos_token_id, suppress_tokens=[self.pad_token_id], **generate_kwargs)
        targets = out[:, 1:]
        after_eos = (targets == self.eos_token_id).long().cumsum(-1) - (targets == self.eos_token_id).long()
        return targets.masked_fill(after_eos > 0, IGNORE_INDEX).contiguous()


def pad_right(sequences: list, value: int, dtype=torch.long) -> torch.Tensor:
    """Stack 1-D int sequences into ``[B, max_len]``, right-padded with ``value``."""
    width = max((len(s) for s in sequences), default=0)
    out = torch.full((len(sequences), width), value, dtype=dtype)
    for i, s in enumerate(sequences):
        out[i, : len(s)] = torch.as_tensor(s, dtype=dtype)
    return out


def collate_prompts(prompts, pad_token_id: int) -> dict:
    """Prompt id sequences -> right-padded ``input_ids`` and ``attention_mask`` (the encoder side of a batch)."""
    return {"input_ids": pad_right(prompts, pad_token_id),
            "attention_mask": pad_right([[1] * len(p) for p in prompts], 0)}


def collate(examples: list[tuple], pad_token_id: int) -> dict:
    """(prompt ids, target ids) pairs -> a padded batch in the adapter convention."""
    prompts, targets = zip(*examples)
    return {**collate_prompts(prompts, pad_token_id), "labels": pad_right(targets, IGNORE_INDEX)}

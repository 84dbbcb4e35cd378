"""Tiny models and configurations shared by the MiniLLM tests."""

import math
from types import SimpleNamespace

import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5LayerNorm

from minillm.models import Seq2SeqAdapter

PAD, EOS = 0, 1


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


def adapter_for(model) -> Seq2SeqAdapter:
    return Seq2SeqAdapter.for_model(model)

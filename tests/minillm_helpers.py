"""Tiny models and configurations shared by the MiniLLM tests."""

from types import SimpleNamespace

import torch
from transformers import T5Config, T5ForConditionalGeneration

from minillm.models.adapter import Seq2SeqAdapter

PAD, EOS = 0, 1


def tiny_t5(vocab_size: int, d_model: int, seed: int, dtype=torch.float64, sharpen: float = 0.3,
            eos_logit_zero: bool = False) -> T5ForConditionalGeneration:
    """A random T5 with Flan-T5's conventions (pad 0 = decoder start, EOS 1), in eval mode. Random init gives
    near-uniform distributions: the output layer is scaled by ``sharpen`` so tests have signal, and
    ``eos_logit_zero`` pins EOS's logit to 0 so sampled targets end at varied lengths."""
    config = T5Config(tie_word_embeddings=False, vocab_size=vocab_size, d_model=d_model, d_ff=2 * d_model,
                      num_layers=1, num_decoder_layers=2,
                      num_heads=2, d_kv=d_model // 2, dropout_rate=0.0, feed_forward_proj="gated-gelu",
                      decoder_start_token_id=PAD, pad_token_id=PAD, eos_token_id=EOS)
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config).to(dtype).eval()
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
                  reward_scaling=1.0, cliprange_reward=None, single_step_reg=False, lm_coef=0.0, teacher_topk=0)
    values.update(overrides)
    return SimpleNamespace(**values)


def adapter_for(model) -> Seq2SeqAdapter:
    return Seq2SeqAdapter.for_model(model)

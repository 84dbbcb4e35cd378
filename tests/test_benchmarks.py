"""The throughput benchmark's model-FLOP count (tools/bench_sft_throughput.py), checked against torch's own count of
the matrix multiplies a T5 forward pass runs."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from tools.bench_sft_throughput import forward_flops


@pytest.mark.parametrize("prompt_length,target_length", [(7, 3), (12, 1)])
def test_forward_flops_equal_the_matmuls_torch_counts(prompt_length, target_length):
    # Unequal sizes everywhere (inner = heads x d_kv differs from d_model, more decoder than encoder layers) so
    # that a formula mixing two of them cannot agree by accident.
    config = T5Config(vocab_size=50, d_model=16, d_kv=6, num_heads=3, d_ff=20, num_layers=2, num_decoder_layers=3,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    model = T5ForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")  # attention as explicit matmuls: torch's counter skips SDPA's CPU kernel
    input_ids = torch.randint(2, 50, (1, prompt_length))
    decoder_input_ids = torch.randint(2, 50, (1, target_length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False)
    assert forward_flops(config, prompt_length, target_length) == counter.get_total_flops()

"""minillm/models/fused.py: the fused GELU and RMS norm compute what transformers' T5 modules compute."""

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.activations import NewGELUActivation
from transformers.models.t5.modeling_t5 import T5LayerNorm

from minillm.models.fused import FusedT5LayerNorm, TanhGELU, fuse_elementwise


def tiny_t5(seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=96, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                      feed_forward_proj="gated-gelu", dropout_rate=0.0, decoder_start_token_id=0)
    return T5ForConditionalGeneration(config).eval()


def test_gelu_matches_gelu_new_in_float64():
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64, requires_grad=True)
    reference, fused = NewGELUActivation()(x), TanhGELU()(x)
    assert torch.allclose(fused, reference, rtol=0, atol=1e-14)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    (grad_fused,) = torch.autograd.grad(fused.sum(), x)
    assert torch.allclose(grad_fused, grad_reference, rtol=0, atol=1e-13)


# transformers takes the mean square in fp32 whatever the input dtype, so fp32 is the precision to compare at.
# bf16 weights: transformers rounds x / rms to bf16 before scaling by w, the fused kernel rounds once: results are
# within two bf16 rounding steps (2^-8 relative each).
@pytest.mark.parametrize("x_dtype,w_dtype,tolerance", [(torch.float32, torch.float32, 2e-6),
                                                       (torch.bfloat16, torch.float32, 2e-6),
                                                       (torch.bfloat16, torch.bfloat16, 2 ** -7)])
def test_rms_norm_matches_t5_layer_norm(x_dtype, w_dtype, tolerance):
    torch.manual_seed(0)
    reference = T5LayerNorm(48, eps=1e-6).to(w_dtype)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
    fused = copy.deepcopy(reference)
    fused.__class__ = FusedT5LayerNorm
    x = (torch.randn(3, 5, 48) * 3).to(x_dtype)
    out_reference, out_fused = reference(x), fused(x)
    assert out_fused.dtype == out_reference.dtype
    assert torch.allclose(out_fused.float(), out_reference.float(), rtol=tolerance, atol=tolerance)


def test_fused_model_keeps_weights_and_outputs():
    model = tiny_t5()
    fused = copy.deepcopy(model)
    counts = fuse_elementwise(fused)
    # 2 + 2 gated FF activations; norms: 2 x 2 per encoder layer, 3 per decoder layer, plus the two final norms
    assert counts == {"gelu_tanh": 4, "rms_norm": 2 * 2 + 2 * 3 + 2}
    assert not any(isinstance(m, (NewGELUActivation,)) or type(m) is T5LayerNorm for m in fused.modules())
    assert fused.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), model.state_dict().values()))

    input_ids = torch.randint(2, 96, (3, 7))
    labels = torch.randint(2, 96, (3, 4))
    out_model = model(input_ids=input_ids, labels=labels)
    out_fused = fused(input_ids=input_ids, labels=labels)
    assert torch.allclose(out_fused.logits, out_model.logits, atol=1e-5)
    out_model.loss.backward()
    out_fused.loss.backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        assert torch.allclose(q.grad, p.grad, atol=1e-5, rtol=1e-4), name
    assert fuse_elementwise(fused) == {"gelu_tanh": 0, "rms_norm": 0}  # idempotent

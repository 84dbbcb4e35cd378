"""minillm/models/fused.py: the fused GELU and RMS norm compute what transformers' T5 modules compute."""

import copy

import pytest
import torch
from transformers import T5Config, T5ForConditionalGeneration
from transformers.activations import NewGELUActivation
from transformers.models.t5.modeling_t5 import T5LayerNorm

from minillm.models.fused import (CPU_ATTENTION, CPUT5LayerNorm, FusedT5LayerNorm, TanhGELU, _RowRMSNorm,
                                  cpu_dropout, fuse_elementwise)


def tiny_t5(seed: int = 0, dropout_rate: float = 0.0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(vocab_size=96, d_model=32, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, d_kv=16,
                      feed_forward_proj="gated-gelu", dropout_rate=dropout_rate, decoder_start_token_id=0)
    config._attn_implementation = "eager"
    return T5ForConditionalGeneration(config).eval()


def padded_batch():
    """Prompts of lengths 7, 4 and 2 (right-padded) and targets of lengths 4, 2 and 3 (-100 after)."""
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(2, 96, (3, 7), generator=generator)
    attention_mask = torch.tensor([[1] * 7, [1] * 4 + [0] * 3, [1] * 2 + [0] * 5])
    labels = torch.randint(2, 96, (3, 4), generator=generator)
    labels[1, 2:] = -100
    labels[2, 3:] = -100
    return {"input_ids": input_ids.masked_fill(attention_mask == 0, 0), "attention_mask": attention_mask,
            "labels": labels}


def test_gelu_matches_gelu_new_in_float64():
    x = torch.linspace(-8, 8, 2001, dtype=torch.float64, requires_grad=True)
    reference, fused = NewGELUActivation()(x), TanhGELU()(x)
    assert torch.allclose(fused, reference, rtol=0, atol=1e-14)
    (grad_reference,) = torch.autograd.grad(reference.sum(), x)
    (grad_fused,) = torch.autograd.grad(fused.sum(), x)
    assert torch.allclose(grad_fused, grad_reference, rtol=0, atol=1e-13)


def norm_and_swapped_copy(norm_class: type, w_dtype: torch.dtype) -> tuple[T5LayerNorm, T5LayerNorm]:
    """A 48-wide ``T5LayerNorm`` with weights in [0.5, 1.5] (seed 0, then the global generator left seeded for the
    inputs) and a copy of it whose class is ``norm_class``."""
    torch.manual_seed(0)
    reference = T5LayerNorm(48, eps=1e-6).to(w_dtype)
    with torch.no_grad():
        reference.weight.uniform_(0.5, 1.5)
    swapped = copy.deepcopy(reference)
    swapped.__class__ = norm_class
    return reference, swapped


# transformers takes the mean square in fp32 whatever the input dtype, so fp32 is the precision to compare at.
# bf16 weights: transformers rounds x / rms to bf16 before scaling by w, the fused kernel rounds once: results are
# within two bf16 rounding steps (2^-8 relative each).
@pytest.mark.parametrize("x_dtype,w_dtype,tolerance", [(torch.float32, torch.float32, 2e-6),
                                                       (torch.bfloat16, torch.float32, 2e-6),
                                                       (torch.bfloat16, torch.bfloat16, 2 ** -7)])
def test_rms_norm_matches_t5_layer_norm(x_dtype, w_dtype, tolerance):
    reference, fused = norm_and_swapped_copy(FusedT5LayerNorm, w_dtype)
    x = (torch.randn(3, 5, 48) * 3).to(x_dtype)
    out_reference, out_fused = reference(x), fused(x)
    assert out_fused.dtype == out_reference.dtype
    assert torch.allclose(out_fused.float(), out_reference.float(), rtol=tolerance, atol=tolerance)


def test_cpu_rms_norm_gradient_is_exact_in_float64():
    """The hand-written backward against finite differences, for x and w (float64: it accumulates in float64)."""
    torch.manual_seed(0)
    x = torch.randn(3, 5, 7, dtype=torch.float64, requires_grad=True)
    weight = torch.empty(7, dtype=torch.float64).uniform_(0.5, 1.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, w: _RowRMSNorm.apply(x, w, 1e-6, torch.float64), (x, weight))


# The CPU norm rounds where transformers does: in bf16 the output equals transformers' wherever the two fp32 mean
# squares agree (summation order aside); gradients are computed in fp32 and rounded once to the parameter's or
# input's dtype, transformers' partly in bf16, so bf16 gradients agree to two bf16 roundings of the largest one.
@pytest.mark.parametrize("x_dtype,w_dtype,tolerance", [(torch.float32, torch.float32, 2e-6),
                                                       (torch.bfloat16, torch.float32, 2e-6),
                                                       (torch.bfloat16, torch.bfloat16, 2 ** -8)])
def test_cpu_rms_norm_matches_t5_layer_norm_forward_and_backward(x_dtype, w_dtype, tolerance):
    reference, cpu_norm = norm_and_swapped_copy(CPUT5LayerNorm, w_dtype)
    x = (torch.randn(3, 5, 48) * 3).to(x_dtype).requires_grad_()
    out_reference, out_cpu = reference(x), cpu_norm(x)
    assert out_cpu.dtype == out_reference.dtype
    assert torch.allclose(out_cpu.float(), out_reference.float(), rtol=tolerance, atol=tolerance)
    if x_dtype == w_dtype == torch.bfloat16:
        assert (out_cpu != out_reference).float().mean() < 0.01  # bitwise equal but for rare mean-square ties
    upstream = torch.randn(out_reference.shape).to(out_reference.dtype)
    grads_reference = torch.autograd.grad(out_reference, (x, reference.weight), upstream)
    grads_cpu = torch.autograd.grad(out_cpu, (x, cpu_norm.weight), upstream)
    for got, want in zip(grads_cpu, grads_reference):
        assert got.dtype == want.dtype
        relative = 2 ** -7 if got.dtype == torch.bfloat16 else 1e-5  # two bf16 roundings; fp32 summation order
        assert torch.allclose(got.float(), want.float(), rtol=0, atol=float(want.float().abs().max()) * relative)


@pytest.mark.parametrize("cpu", [False, True])
def test_fused_model_keeps_weights_outputs_and_gradients(cpu):
    """Padded prompts and targets exercise the encoder's padding mask and the decoder's causal mask, which the
    registered attention function must receive in eager's additive form."""
    model = tiny_t5()
    fused = copy.deepcopy(model)
    counts = fuse_elementwise(fused, cpu=cpu)
    # 2 + 2 gated FF activations; norms: 2 per encoder layer, 3 per decoder layer, plus the two final norms;
    # dropouts: 3 per encoder layer (attention, FF block, inside the FF), 4 per decoder layer (plus cross-attention),
    # one per stack (shared by the embedding and the final norm); attention: 2 self per stack + 2 cross
    assert counts == {"gelu_tanh": 4, "rms_norm": 2 * 2 + 2 * 3 + 2, "dropout": (2 * 3 + 2 * 4 + 2) if cpu else 0,
                      "attention": 6 if cpu else 0}
    assert fused.config._attn_implementation == (CPU_ATTENTION if cpu else "eager")
    assert not any(isinstance(m, NewGELUActivation) or type(m) is T5LayerNorm for m in fused.modules())
    assert fused.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(fused.state_dict().values(), model.state_dict().values()))

    batch = padded_batch()
    assert torch.allclose(fused(**batch).logits, model(**batch).logits, atol=1e-5)
    model.train()
    fused.train()  # dropout_rate 0: training mode differs only in the modules swapped
    out_model, out_fused = model(**batch), fused(**batch)
    assert torch.allclose(out_fused.loss, out_model.loss, atol=1e-6)
    out_model.loss.backward()
    out_fused.loss.backward()
    for (name, p), q in zip(model.named_parameters(), fused.parameters()):
        assert torch.allclose(q.grad, p.grad, atol=1e-5, rtol=1e-4), name
    assert fuse_elementwise(fused, cpu=cpu)["gelu_tanh"] == 0  # nothing left to swap


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_cpu_dropout_rate_scale_and_backward(p):
    torch.manual_seed(0)
    x = torch.rand(1_000_000, dtype=torch.float64) + 0.5  # no zeros, so a zero output means dropped
    x.requires_grad_(True)
    torch.manual_seed(1)
    y = cpu_dropout(x, p, training=True)
    dropped = y == 0
    # binomial standard deviation sqrt(p (1 - p) / n) <= 5e-4: 6 of them
    assert abs(float(dropped.double().mean()) - p) < 3e-3
    kept_scale = (y[~dropped] / x[~dropped]).detach()
    scale = 2**16 / (2**16 - round(p * 2**16))
    assert torch.allclose(kept_scale, torch.full_like(kept_scale, scale), rtol=1e-12)
    assert abs(scale - 1 / (1 - p)) < 4e-5
    (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))  # dy/dx = keep * scale, the forward mask
    assert torch.equal(grad == 0, dropped) and torch.allclose(grad[~dropped], kept_scale)
    torch.manual_seed(1)
    assert torch.equal(cpu_dropout(x, p, training=True), y)  # the global torch seed fixes the mask


def test_cpu_dropout_lanes_are_independent():
    """Four elements share one 64-bit draw: each lane position must drop at rate p, neighbours independently
    (P(both dropped) = p^2), also for a shape that does not fill the last draw and for a non-contiguous input."""
    p = 0.25
    torch.manual_seed(2)
    x = torch.ones(999_999, dtype=torch.float32)
    dropped = (cpu_dropout(x, p, training=True) == 0).double()
    for lane in range(4):  # binomial sd sqrt(p (1 - p) / 250,000) < 9e-4
        assert abs(float(dropped[lane::4].mean()) - p) < 5e-3, lane
    both = dropped[:-1] * dropped[1:]
    assert abs(float(both.mean()) - p * p) < 3e-3  # sd < 4e-4
    transposed = torch.ones(300, 401).t()
    y = cpu_dropout(transposed, p, training=True)
    assert y.shape == (401, 300) and abs(float((y == 0).double().mean()) - p) < 6e-3


def test_cpu_dropout_rate_is_quantised_to_sixteen_bits():
    x = torch.ones(100_000)
    assert cpu_dropout(x, 2**-18, training=True) is x  # round(p * 2^16) = 0: nothing to drop
    assert torch.equal(cpu_dropout(x, 1 - 2**-18, training=True), torch.zeros_like(x))


def test_cpu_dropout_identity_cases():
    x = torch.randn(1000, dtype=torch.bfloat16)
    assert cpu_dropout(x, 0.3, training=False) is x and cpu_dropout(x, 0.0, training=True) is x
    assert torch.equal(cpu_dropout(x, 1.0, training=True), torch.zeros_like(x))
    y = cpu_dropout(x, 0.3, training=True)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape


def test_cpu_dropout_in_a_model_is_unbiased():
    """With dropout on, the fused model's training loss averages to the one of transformers' dropout (both are
    unbiased inverted dropout at the same rate); a wrong rate or scale shows as a shifted mean."""
    model = tiny_t5(dropout_rate=0.3)
    fused = copy.deepcopy(model)
    fuse_elementwise(fused, cpu=True)
    batch = padded_batch()
    model.train()
    fused.train()
    torch.manual_seed(0)
    with torch.no_grad():
        reference = torch.stack([model(**batch).loss for _ in range(300)])
        ours = torch.stack([fused(**batch).loss for _ in range(300)])
    standard_error = float((reference.var() / 300 + ours.var() / 300).sqrt())
    assert abs(float(reference.mean() - ours.mean())) < 4 * standard_error
    assert not torch.allclose(ours[0], ours[1])  # dropout is on

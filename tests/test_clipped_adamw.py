"""The fp32 optimizer of ZeRO stage 0 (minillm/engine/clipped_adamw.py) against DeepSpeed's clipping + AdamW."""

import math

import torch
from torch import nn

from minillm.engine.clipped_adamw import ClippedAdamW, clipping_divisor, global_grad_norm, set_gradient_divisor
from minillm.engine.deepspeed_config import engine_config
from minillm.engine.trainer import parameter_groups

SETTINGS = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8)


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))


def deepspeed_clip(parameters, max_norm: float) -> float:
    """DeepSpeed's fp32 rule (deepspeed.runtime.utils.clip_grad_norm_, one process): per-tensor norms, their
    root sum of squares, then every gradient times min(1, max_norm / (norm + 1e-6))."""
    norm = torch.stack([p.grad.norm(2) for p in parameters]).pow(2).sum().pow(0.5)
    coefficient = torch.min(torch.tensor([1.0]), torch.tensor([max_norm]) / (norm + 1e-6))
    for p in parameters:
        p.grad.mul_(coefficient)
    return float(norm)


def test_global_norm_and_clipping_divisor_hand_computed():
    assert global_grad_norm([torch.tensor([3.0, 0.0]), torch.tensor([[4.0]])]) == 5.0
    assert global_grad_norm([]) == 0.0
    assert clipping_divisor(5.0, 10.0) is None  # under the limit: gradients used as they are
    assert clipping_divisor(5.0, 1.0) == 5.0 + 1e-6  # c = 1 / (5 + 1e-6)
    assert clipping_divisor(5.0, 2.5) == (5.0 + 1e-6) / 2.5
    assert clipping_divisor(5.0, 0.0) is None  # 0: clipping off
    assert clipping_divisor(float("inf"), 1.0) is None and clipping_divisor(float("nan"), 1.0) is None


def test_global_norm_is_accurate_on_long_tensors():
    """Against the float64 norm, on a tensor of 16.8 million normal values (torch's fp32 norm of it in one piece is
    off by 6.5e-4 relative on this torch) and on a list mixing it with short tensors."""
    generator = torch.Generator().manual_seed(0)
    long = torch.randn(2**24 + 12345, generator=generator)
    short = [torch.randn(3, 7, generator=generator), torch.randn(1000, generator=generator)]
    for grads in ([long], [short[0], long, short[1]]):
        exact = math.sqrt(sum(float(torch.linalg.vector_norm(g, dtype=torch.float64)) ** 2 for g in grads))
        assert math.isclose(global_grad_norm(grads), exact, rel_tol=1e-6)


def test_gradient_divisor_divides_inside_the_fused_kernel():
    """Fused AdamW steps on 4 g with divisor 4 equal steps on g. eps = 1 makes the update depend on the gradient's
    scale (Adam with a tiny eps hardly does), so a divisor left out would show."""
    torch.manual_seed(0)
    divided = torch.randn(5, requires_grad=True)
    plain, undivided = divided.detach().clone().requires_grad_(), divided.detach().clone().requires_grad_()
    settings = dict(lr=1e-1, betas=(0.9, 0.999), eps=1.0, fused=True)
    optimizers = [torch.optim.AdamW([p], **settings) for p in (divided, plain, undivided)]
    for step in range(3):
        g = torch.randn(5) * (1 + step)
        divided.grad, plain.grad, undivided.grad = g * 4, g.clone(), g * 4
        set_gradient_divisor(optimizers[0], 4.0)
        for optimizer in optimizers:
            optimizer.step()
        assert torch.allclose(divided.grad, g)  # written back divided
    assert torch.allclose(divided, plain, rtol=0, atol=1e-7)
    assert not torch.allclose(undivided, plain, rtol=0, atol=1e-3)
    set_gradient_divisor(optimizers[0], None)
    assert optimizers[0].grad_scale is None


def test_matches_deepspeed_clipping_then_fused_adamw():
    reference, trained = model(), model()
    reference_optimizer = torch.optim.AdamW(parameter_groups(reference, 0.1), **SETTINGS, fused=True)
    optimizer = ClippedAdamW(parameter_groups(trained, 0.1), **SETTINGS, max_grad_norm=1.0)
    for step in range(6):
        generator = torch.Generator().manual_seed(100 + step)
        scale = 3.0 if step % 2 else 0.01  # odd steps are clipped, even ones are not
        grads = [torch.randn(p.shape, generator=generator) * scale for p in reference.parameters()]
        for p, q, g in zip(reference.parameters(), trained.parameters(), grads):
            p.grad, q.grad = g.clone(), g.clone()
        expected_norm = deepspeed_clip(list(reference.parameters()), 1.0)
        reference_optimizer.step()
        optimizer.step()
        assert math.isclose(optimizer._global_grad_norm, expected_norm, rel_tol=1e-6)
        assert (expected_norm > 1.0) == bool(step % 2)
    for p, q in zip(reference.parameters(), trained.parameters()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-7)


def test_deepspeed_does_not_clip_again_where_the_trainer_does():
    fp32 = {"gradient_clipping": 1.0, "zero_optimization": {"stage": 0}}
    assert engine_config(fp32)["gradient_clipping"] == 0.0
    bf16 = {**fp32, "bf16": {"enabled": True}}
    assert engine_config(bf16) == {**bf16, "bf16": {"enabled": False}, "gradient_clipping": 0.0}
    zero2 = {"gradient_clipping": 1.0, "zero_optimization": {"stage": 2}, "bf16": {"enabled": True}}
    assert engine_config(zero2) is zero2  # ZeRO's optimizers clip their partitions themselves

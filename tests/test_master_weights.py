"""The bf16 optimizer of ZeRO stage 0 (minillm/engine/master_weights.py) against torch's fp32 AdamW."""

import io

import torch
from torch import nn

from minillm.engine.master_weights import BF16MasterWeightAdamW
from minillm.engine.trainer import parameter_groups

SETTINGS = dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8)


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.LayerNorm(32), nn.Linear(32, 8))


def gradients(step: int, scale: float) -> list[torch.Tensor]:
    """bf16 gradients for the parameters of model(), reproducible per step."""
    generator = torch.Generator().manual_seed(100 + step)
    return [(torch.randn(p.shape, generator=generator) * scale).bfloat16() for p in model().parameters()]


def reference_step(reference: nn.Module, optimizer, grads, max_norm: float) -> None:
    """fp32 AdamW on the same gradients, clipped by DeepSpeed's rule."""
    for p, g in zip(reference.parameters(), grads):
        p.grad = g.float()
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in reference.parameters()]))
    clip = max_norm / (float(norm) + 1e-6)
    if clip < 1:
        for p in reference.parameters():
            p.grad.mul_(clip)
    optimizer.step()


def bf16_step(trained: nn.Module, optimizer, grads) -> None:
    for p, g in zip(trained.parameters(), grads):
        p.grad = g.clone()
    optimizer.step()


def test_matches_fp32_adamw_with_clipping_and_decay_on_matrices_only():
    reference, trained = model(), model()
    reference_optimizer = torch.optim.AdamW(parameter_groups(reference, 0.1), **SETTINGS)
    optimizer = BF16MasterWeightAdamW(parameter_groups(trained, 0.1), **SETTINGS, max_grad_norm=1.0)
    assert all(p.dtype == torch.bfloat16 for p in trained.parameters())
    norms = []
    for step in range(5):
        grads = gradients(step, scale=3.0 if step % 2 else 0.01)  # odd steps are clipped, even ones are not
        reference_step(reference, reference_optimizer, grads, max_norm=1.0)
        bf16_step(trained, optimizer, grads)
        norms.append(optimizer._global_grad_norm)
    masters = torch.cat([m for m in optimizer.masters])
    expected = torch.cat([p.detach().reshape(-1) for group in parameter_groups(reference, 0.1)
                          for p in group["params"]])
    assert torch.allclose(masters, expected, rtol=1e-5, atol=1e-7)
    for p, q in zip(trained.parameters(), reference.parameters()):
        assert torch.equal(p.detach(), q.detach().bfloat16())  # the bf16 weights are the rounded masters
    assert [norm > 1.0 for norm in norms] == [False, True, False, True, False] and not optimizer.overflow


def test_non_finite_gradient_skips_the_step():
    trained = model()
    optimizer = BF16MasterWeightAdamW(parameter_groups(trained, 0.1), **SETTINGS, max_grad_norm=1.0)
    before = [p.detach().clone() for p in trained.parameters()]
    grads = gradients(0, scale=1.0)
    grads[0][0, 0] = float("nan")
    bf16_step(trained, optimizer, grads)
    assert optimizer.overflow
    assert all(torch.equal(p, q) for p, q in zip(trained.parameters(), before))
    bf16_step(trained, optimizer, gradients(1, scale=1.0))
    assert not optimizer.overflow and not torch.equal(next(trained.parameters()), before[0])


def test_state_dict_resumes_bitwise():
    straight, resumed = model(), model()
    straight_optimizer = BF16MasterWeightAdamW(parameter_groups(straight, 0.1), **SETTINGS, max_grad_norm=1.0)
    for step in range(2):
        bf16_step(straight, straight_optimizer, gradients(step, scale=1.0))
    buffer = io.BytesIO()
    torch.save({"model": straight.state_dict(), "optimizer": straight_optimizer.state_dict()}, buffer)
    straight_optimizer.param_groups[0]["lr"] = 5e-3  # as a scheduler would, after the save

    saved = torch.load(io.BytesIO(buffer.getvalue()), weights_only=False)
    resumed_optimizer = BF16MasterWeightAdamW(parameter_groups(resumed, 0.1), **SETTINGS, max_grad_norm=1.0)
    resumed.load_state_dict(saved["model"])
    resumed_optimizer.load_state_dict(saved["optimizer"])
    resumed_optimizer.param_groups[0]["lr"] = 5e-3
    for step in range(2, 4):
        bf16_step(straight, straight_optimizer, gradients(step, scale=1.0))
        bf16_step(resumed, resumed_optimizer, gradients(step, scale=1.0))
    assert all(torch.equal(a, b) for a, b in zip(straight_optimizer.masters, resumed_optimizer.masters))
    assert all(torch.equal(p, q) for p, q in zip(straight.parameters(), resumed.parameters()))

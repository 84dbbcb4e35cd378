"""AdamW with fp32 master weights for a bf16 model: the bf16 path of ZeRO stage 0.

DeepSpeed trains a bf16 model without ZeRO through its unfused fp16/bf16 optimizer wrapper, which every step
allocates a fresh fp32 copy of each gradient, scans each one for inf/NaN, takes per-tensor norms, unscales with a
loss scale of 1 and then runs the client optimizer tensor by tensor: on a CPU, several times what the whole
optimizer should cost (docs/performance.md; ``python tools/bench_optimizer_step.py`` times this optimizer). This
optimizer does the same arithmetic in a few passes over flat buffers:

- the fp32 master weights of each parameter group live in one flat tensor (built from the fp32 model before the
  parameters are cast to bf16, so no precision is lost at the start), with a flat fp32 gradient beside it;
- ``step`` converts the bf16 gradients into that flat gradient, takes the global norm in fp32, skips the step if
  it is not finite (as DeepSpeed's bf16 path does), updates the masters with torch's fused AdamW kernel on the
  gradient clipped by that norm (DeepSpeed's rule, ``max_norm / (norm + 1e-6)`` when below 1, applied inside the
  kernel: :mod:`minillm.engine.clipped_adamw`) and writes them back into the bf16 parameters.

DeepSpeed then runs its plain fp32 path (no wrapper, no clipping of its own; see ``engine_config`` in
:mod:`minillm.engine.deepspeed_config`); it still all-reduces the gradients across ranks before ``step`` and
saves and loads this optimizer's ``state_dict``, which holds the masters, so a resumed run continues bitwise.
"""

from __future__ import annotations

import math

import torch

from .clipped_adamw import clipping_divisor, global_grad_norm, set_gradient_divisor


class BF16MasterWeightAdamW(torch.optim.Optimizer):
    """``param_groups``: the fp32 model's groups (``params``, ``weight_decay``); their parameters are cast to
    bf16 in place. ``max_grad_norm`` <= 0 turns clipping off. ``_global_grad_norm`` (read by DeepSpeed's
    ``get_global_grad_norm``) and ``overflow`` (a skipped step) describe the last step."""

    def __init__(self, param_groups: list[dict], lr: float, betas: tuple[float, float], eps: float,
                 max_grad_norm: float):
        super().__init__(param_groups, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": 0.0})
        self.max_grad_norm = max_grad_norm
        self._global_grad_norm = None
        self.overflow = False
        self.masters = []
        for group in self.param_groups:
            master = torch.cat([p.detach().reshape(-1).float() for p in group["params"]])
            master.grad = torch.zeros_like(master)
            self.masters.append(master)
            for p in group["params"]:
                p.data = p.data.to(torch.bfloat16)
        self.master_optimizer = torch.optim.AdamW(
            [{"params": [master], "weight_decay": group["weight_decay"]}
             for master, group in zip(self.masters, self.param_groups)],
            lr=lr, betas=betas, eps=eps, fused=True)

    @staticmethod
    def _slices(group: dict):
        offset = 0
        for p in group["params"]:
            yield p, slice(offset, offset + p.numel())
            offset += p.numel()

    @torch.no_grad()
    def step(self, closure=None):
        for group, master in zip(self.param_groups, self.masters):
            for p, where in self._slices(group):
                if p.grad is None:
                    master.grad[where].zero_()
                else:
                    master.grad[where].copy_(p.grad.reshape(-1))
        norm = global_grad_norm([master.grad for master in self.masters])
        self._global_grad_norm = norm
        self.overflow = not math.isfinite(norm)
        if self.overflow:
            return None
        for group, master_group in zip(self.param_groups, self.master_optimizer.param_groups):
            master_group.update(lr=group["lr"], betas=group["betas"], eps=group["eps"])
        set_gradient_divisor(self.master_optimizer, clipping_divisor(norm, self.max_grad_norm))
        self.master_optimizer.step()
        self._write_back()
        return None

    @torch.no_grad()
    def _write_back(self) -> None:
        for group, master in zip(self.param_groups, self.masters):
            for p, where in self._slices(group):
                p.copy_(master[where].view_as(p))

    def state_dict(self) -> dict:
        state = super().state_dict()  # the groups' hyperparameters (the learning rate the scheduler set)
        state["masters"] = self.masters
        state["master_optimizer"] = self.master_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        masters = state_dict.pop("masters")
        self.master_optimizer.load_state_dict(state_dict.pop("master_optimizer"))
        super().load_state_dict(state_dict)
        with torch.no_grad():
            for master, saved in zip(self.masters, masters):
                master.copy_(saved)
        self._write_back()

"""Optimizer step time at ZeRO stage 0: DeepSpeed's fp32 clipping rule against the trainer's optimizers.

    python tools/bench_optimizer_step.py [--preset flan-t5-small] [--threads N] [--iterations 10]

One randomly initialised model of the preset's shape per variant, with the same random gradients (scaled so that
clipping at 1.0 applies every step, as early in fine-tuning). Four steps take turns, one of each per round
(tools/step_timing.py), the gradients restored between them outside the timing:

1. fp32, DeepSpeed's rule: one norm per gradient, their root sum of squares, every gradient multiplied by
   ``min(1, 1 / (norm + 1e-6))``, then torch's fused AdamW (what DeepSpeed's stage-0 fp32 path runs);
2. fp32, ``ClippedAdamW``: the multi-tensor norm, clipping inside the fused AdamW kernel;
3. bf16 model, ``BF16MasterWeightAdamW`` with the clipping applied by a separate multiply of the master gradients;
4. bf16 model, ``BF16MasterWeightAdamW`` as it is (clipping inside the kernel).

It prints the median and best milliseconds of each.
"""

from __future__ import annotations

import argparse
import os

import torch

from minillm.engine.clipped_adamw import (ClippedAdamW, clipping_divisor, global_grad_norm,
                                          set_gradient_divisor)
from minillm.engine.master_weights import BF16MasterWeightAdamW
from minillm.engine.trainer import parameter_groups
from minillm.models.tiny import PRESETS, build_model
from step_timing import interleaved_medians

SETTINGS = dict(lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
MAX_NORM = 1.0


class DeepSpeedRuleAdamW(torch.optim.AdamW):
    """DeepSpeed's stage-0 fp32 clipping (deepspeed.runtime.utils.clip_grad_norm_ on one process) before torch's
    fused AdamW."""

    def __init__(self, param_groups):
        super().__init__(param_groups, **SETTINGS, fused=True)

    @torch.no_grad()
    def step(self, closure=None):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        norm = torch.stack([g.float().norm(2) for g in grads]).pow(2).sum().pow(0.5)
        coefficient = torch.clamp(MAX_NORM / (norm + 1e-6), max=1.0)
        for g in grads:
            g.mul_(coefficient)
        return super().step(closure)


class SeparateMultiplyMasterAdamW(BF16MasterWeightAdamW):
    """The bf16 optimizer with clipping by a multiply of the master gradients before the fused kernel."""

    @torch.no_grad()
    def step(self, closure=None):
        for group, master in zip(self.param_groups, self.masters):
            for p, where in self._slices(group):
                master.grad[where].copy_(p.grad.reshape(-1))
        grads = [master.grad for master in self.masters]
        norm = global_grad_norm(grads)
        self._global_grad_norm = norm
        divisor = clipping_divisor(norm, self.max_grad_norm)
        if divisor is not None:
            torch._foreach_div_(grads, divisor)
        set_gradient_divisor(self.master_optimizer, None)
        self.master_optimizer.step()
        self._write_back()
        return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="flan-t5-small", choices=tuple(PRESETS))
    parser.add_argument("--vocab-size", type=int, default=32128)
    parser.add_argument("--threads", type=int, default=0, help="default: all cores this process may use")
    parser.add_argument("--iterations", type=int, default=10, help="timed rounds (default 10)")
    args = parser.parse_args(argv)
    if args.iterations < 1 or args.threads < 0:
        parser.error("--iterations must be >= 1, --threads >= 0")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))

    builders = {
        "fp32, DeepSpeed's clipping + fused AdamW": lambda groups: DeepSpeedRuleAdamW(groups),
        "fp32, ClippedAdamW": lambda groups: ClippedAdamW(groups, **SETTINGS, max_grad_norm=MAX_NORM),
        "bf16, masters, separate clip multiply": lambda groups: SeparateMultiplyMasterAdamW(
            groups, **SETTINGS, max_grad_norm=MAX_NORM),
        "bf16, BF16MasterWeightAdamW": lambda groups: BF16MasterWeightAdamW(groups, **SETTINGS,
                                                                           max_grad_norm=MAX_NORM),
    }
    generator = torch.Generator().manual_seed(0)
    gradients = None
    variants = {}
    for name, build in builders.items():
        model = build_model(args.preset, args.vocab_size, seed=0)
        if gradients is None:  # norm about 10: clipped at 1.0 every step
            scale = 10.0 / sum(p.numel() for p in model.parameters()) ** 0.5
            gradients = [torch.randn(p.shape, generator=generator) * scale for p in model.parameters()]
        variants[name] = (model, build(parameter_groups(model, 0.01)))

    def restore_gradients() -> None:
        for model, _ in variants.values():
            for p, g in zip(model.parameters(), gradients):
                p.grad = g.to(p.dtype)

    restore_gradients()
    timings = interleaved_medians({name: optimizer.step for name, (_, optimizer) in variants.items()},
                                  args.iterations, restore_gradients)
    print(f"{args.preset}: {sum(p.numel() for p in next(iter(variants.values()))[0].parameters()):,} parameters, "
          f"{torch.get_num_threads()} thread(s), {args.iterations} steps each")
    for name, (median, best) in timings.items():
        print(f"{name:<42} median {median * 1e3:6.1f} ms/step, best {best * 1e3:6.1f}")


if __name__ == "__main__":
    main()

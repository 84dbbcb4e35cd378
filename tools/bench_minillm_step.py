"""Where a MiniLLM step's time goes, on CPU: sampling, teacher scoring, student forward/backward, optimizer, other.

    python tools/bench_minillm_step.py [--student flan-t5-small] [--teacher flan-t5-base] [--num-rollouts 16]
                                       [--chunk-size 16] [--batch-size 8] [--ppo-epochs 4] [--prompt-length 136]
                                       [--max-new-tokens 8] [--cycles 2] [--threads N] [--dtype fp32]

Randomly initialised student and teacher of the presets' shapes (one vocabulary), random prompts, and the real
pieces: :class:`minillm.objectives.minillm.batches.RolloutBatches` drives :class:`MiniLLMObjective` (collection: two-model
teacher-mixed sampling, rewards, advantages; then ``ppo_epochs`` passes of micro-batches) and a fused AdamW steps.
One cycle = one collection + its optimizer steps. Timed per cycle (after one warm-up cycle), with forward hooks on
the two models:

- sampling: time inside ``sample_rollouts`` minus the teacher's calls in it (student encoder and decoder steps,
  mixing, drawing, recording);
- teacher scoring: the teacher's calls (one encoder pass per sampling batch, one decoder step per position: its
  log-probs and distributions are recorded then, and the PPO epochs never call it);
- student forward/backward: the objective's loss and ``backward`` on each micro-batch;
- optimizer: ``step`` and ``zero_grad``;
- other: the rest of the cycle's wall time (rewards, returns, whitening, storing and slicing the rollouts into
  micro-batches, bookkeeping).

Random models rarely emit EOS, so every rollout runs to ``--max-new-tokens``: a worst case for sampling. Prints the
seconds and share of each part and the teacher forward passes per rollout sample.
"""

from __future__ import annotations

import argparse
import math

import numpy as np
import torch

from minillm.models.fused import fuse_elementwise
from minillm.models.tiny import PRESETS, build_model
from step_timing import DTYPES, MiniLLMCycles, minillm_settings


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="flan-t5-small", choices=tuple(PRESETS))
    p.add_argument("--teacher", default="flan-t5-base", choices=tuple(PRESETS))
    p.add_argument("--vocab-size", type=int, default=32128)
    p.add_argument("--num-rollouts", type=int, default=16)
    p.add_argument("--chunk-size", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--ppo-epochs", type=int, default=4)
    p.add_argument("--prompt-length", type=int, default=136, help="default: ANLI's mean Flan prompt")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--cycles", type=int, default=2, help="timed cycles after one warm-up cycle")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--dtype", default="fp32", choices=tuple(DTYPES),
                   help="fp32 (default; bf16 matmuls are very slow on CPUs without AVX512-BF16 or AMX)")
    args = p.parse_args(argv)
    for name in ("num_rollouts", "chunk_size", "batch_size", "ppo_epochs", "prompt_length", "max_new_tokens", "cycles"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.vocab_size < 3 or args.threads < 0:
        p.error("--vocab-size must be >= 3 (pad, EOS and one more) and --threads >= 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = DTYPES[args.dtype]

    student = build_model(args.student, args.vocab_size, seed=0).to(dtype)
    teacher = build_model(args.teacher, args.vocab_size, seed=1).to(dtype).requires_grad_(False)
    for model in (student, teacher):
        fuse_elementwise(model, cpu=True)
    student.eval()  # MiniLLM samples and trains without dropout
    settings = minillm_settings(num_rollouts=args.num_rollouts, chunk_size=args.chunk_size,
                                ppo_epochs=args.ppo_epochs, batch_size=args.batch_size,
                                max_new_tokens=args.max_new_tokens, alpha=0.2)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, args.vocab_size, args.prompt_length) for _ in range(4 * args.num_rollouts)]
    optimizer = torch.optim.AdamW([q for q in student.parameters()], lr=1e-6, fused=True)
    cycles = MiniLLMCycles(student, teacher, optimizer, prompts, settings, torch.device("cpu"))
    steps = cycles.steps

    cycles.run(0)  # warm-up
    mean, breakdown = MiniLLMCycles.breakdown([cycles.run(i) for i in range(1, args.cycles + 1)])
    print(f"student {args.student}, teacher {args.teacher}, {args.dtype}, {torch.get_num_threads()} threads; "
          f"{args.num_rollouts} rollouts/collection ({args.chunk_size} per sampling batch, {args.max_new_tokens} "
          f"tokens max), {args.ppo_epochs} PPO epochs x {steps // args.ppo_epochs} micro-batches of "
          f"{args.batch_size} = {steps} optimizer steps per cycle; mean of {args.cycles} cycles")
    for name, seconds in breakdown.items():
        print(f"  {name.replace('_', ' '):26s} {seconds:7.3f} s  {100 * seconds / mean['total']:5.1f} %")
    print(f"  {'cycle':26s} {mean['total']:7.3f} s  ({mean['total'] / steps:.3f} s per optimizer step)")
    batches = math.ceil(args.num_rollouts / args.chunk_size)  # sampling batches per collection, the last one short
    print(f"teacher calls per cycle: {mean['encoder_calls']:.0f} encoder passes ({mean['encoder_calls'] / batches:.2f} "
          f"per sampling batch) and {mean['decoder_calls']:.0f} incremental decoder steps "
          f"({mean['decoder_calls'] / (batches * args.max_new_tokens):.2f} per sampled position): teacher passes per "
          f"rollout sample {mean['encoder_calls'] / batches:.2f} (the reference: 1 + ppo_epochs = "
          f"{1 + args.ppo_epochs})")


if __name__ == "__main__":
    main()

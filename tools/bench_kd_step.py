"""KD step time against an SFT step plus one teacher forward pass, measured in one run.

    python tools/bench_kd_step.py [--student flan-t5-small] [--teacher flan-t5-base] [--batch-size 8]
                                  [--prompt-length 136] [--target-length 5] [--threads N] [--iterations 6]
                                  [--dtype bf16] [--kd-loss fkl]

Randomly initialised student and teacher of the presets' shapes (one vocabulary), and one batch. Three
measurements take turns, one of each per round (tools/step_timing.py):

1. an SFT step: ``SFTObjective`` forward, backward;
2. a teacher forward pass without gradient;
3. a KD step: ``KDObjective`` (student forward, teacher forward without gradient, divergence) forward, backward.

It prints the median seconds of each and ``KD / (SFT + teacher forward)``: 1.0 means the KD step costs exactly one
extra teacher forward pass; more is overhead of the divergence or of keeping teacher activations (the goal of issue
4 is at most 1.1).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import torch

from minillm.divergences import DIVERGENCES
from minillm.models import Seq2SeqAdapter
from minillm.models.fused import fuse_elementwise
from minillm.models.tiny import PRESETS, build_model
from minillm.objectives import build_objective
from step_timing import DTYPES, add_shape_args, interleaved_medians, parse_shape_args, random_batch


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="flan-t5-small", choices=tuple(PRESETS))
    parser.add_argument("--teacher", default="flan-t5-base", choices=tuple(PRESETS))
    parser.add_argument("--kd-loss", default="fkl", choices=tuple(DIVERGENCES))
    add_shape_args(parser, iterations=6)
    args = parse_shape_args(parser, argv)

    dtype = DTYPES[args.dtype]
    student = build_model(args.student, args.vocab_size, seed=0).train().to(dtype)
    teacher = build_model(args.teacher, args.vocab_size, seed=1).eval().to(dtype).requires_grad_(False)
    for model in (student, teacher):
        model.set_attn_implementation("eager")
        fuse_elementwise(model, cpu=True)
    adapter = Seq2SeqAdapter.for_model(student)
    config = SimpleNamespace(teacher_model_path="teacher", kd_ratio=0.5, kd_loss=args.kd_loss, jsd_beta=0.5,
                             skew_alpha=0.1, kd_temperature=1.0)
    sft = build_objective("sft", config, adapter)
    kd = build_objective("kd", config, adapter, lambda path: teacher)
    batch = random_batch(args)

    def teacher_forward() -> None:
        with torch.no_grad():
            adapter.logits(teacher, batch)

    def clear_gradients() -> None:
        for parameter in student.parameters():
            parameter.grad = None

    timings = interleaved_medians({"SFT step": lambda: sft(student, batch).loss_sum.backward(),
                                   "teacher forward": teacher_forward,
                                   "KD step": lambda: kd(student, batch).loss_sum.backward()},
                                  args.iterations, clear_gradients)
    median = {name: value[0] for name, value in timings.items()}
    print(f"student {args.student}, teacher {args.teacher}, {args.dtype}, batch {args.batch_size} x "
          f"{args.prompt_length} prompt + {args.target_length} target tokens, --kd-loss {args.kd_loss}, "
          f"{args.iterations} rounds")
    for name, value in median.items():
        print(f"{name:<16} median {value:.4f} s")
    ratio = median["KD step"] / (median["SFT step"] + median["teacher forward"])
    print(f"KD step / (SFT step + teacher forward) = {ratio:.3f}")


if __name__ == "__main__":
    main()

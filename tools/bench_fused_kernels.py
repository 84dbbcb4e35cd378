"""Forward + backward time of one T5 training batch with transformers' modules against minillm/models/fused.py.

    python tools/bench_fused_kernels.py [--preset flan-t5-small] [--batch-size 8] [--prompt-length 136]
                                        [--target-length 5] [--threads N] [--iterations 12] [--dtype bf16]
                                        [--profile N [--peak]]

Three copies of one randomly initialised model (eager attention, training mode, dropout as the preset sets it):
transformers' modules; the fused GELU and RMS norm (``fuse_elementwise(model)``, what a GPU runs); and the CPU set
(``fuse_elementwise(model, cpu=True)``: the fused GELU, the CPU RMS norm, the CPU dropout and attention). The copies
take turns, one step each (tools/step_timing.py); the script prints the median and best seconds per step of each
and the speed-ups over the first. With ``--profile N`` it then runs three more steps of the CPU set under torch's
profiler and prints where they went: the matrix multiplies' share of the time and their FLOP rate (2 m k n per
product, from the recorded shapes), and the N operations of most self time, per step. With ``--peak`` as well, it
first measures the machine's matmul peak in that precision (as tools/bench_sft_throughput.py does) and prints the
matrix multiplies' rate as a fraction of it.
"""

from __future__ import annotations

import argparse
import copy

import torch

from minillm.models.fused import fuse_elementwise
from minillm.models.tiny import PRESETS, build_model
from step_timing import (DTYPES, MATMULS, add_shape_args, interleaved_medians, matmul_flops, matmul_peak,
                         parse_shape_args, random_batch)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="flan-t5-small", choices=tuple(PRESETS))
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="then profile the CPU set and print its N costliest operations (default 0: no profile)")
    parser.add_argument("--peak", action="store_true",
                        help="with --profile: the matrix multiplies' rate as a fraction of the measured matmul peak")
    add_shape_args(parser, iterations=12)
    args = parse_shape_args(parser, argv)
    if args.profile < 0:
        parser.error(f"--profile must be >= 0, got {args.profile}")
    if args.peak and not args.profile:
        parser.error("--peak needs --profile N")

    reference = build_model(args.preset, args.vocab_size).train().to(DTYPES[args.dtype])
    reference.set_attn_implementation("eager")
    variants = {"transformers' modules": reference,
                "fused GELU + RMS norm": copy.deepcopy(reference),
                "CPU norm + dropout": copy.deepcopy(reference)}
    fuse_elementwise(variants["fused GELU + RMS norm"])
    fuse_elementwise(variants["CPU norm + dropout"], cpu=True)
    batch = random_batch(args)

    def clear_gradients() -> None:
        for model in variants.values():
            for parameter in model.parameters():
                parameter.grad = None

    timings = interleaved_medians({name: (lambda m=model: m(**batch).loss.backward())
                                   for name, model in variants.items()}, args.iterations, clear_gradients)
    print(f"{args.preset} {args.dtype}, batch {args.batch_size} x {args.prompt_length} prompt + "
          f"{args.target_length} target tokens, {args.iterations} steps each")
    baseline = timings["transformers' modules"][0]
    for name, (median, best) in timings.items():
        print(f"{name:<24} median {median:.4f} s/step, best {best:.4f}, speed-up {baseline / median:.2f}x")
    if args.profile:
        peak = matmul_peak("cpu", torch.get_num_threads(), args.dtype) if args.peak else None
        print_profile(variants["CPU norm + dropout"], batch, clear_gradients, args.profile, peak)


def print_profile(model, batch: dict, clear_gradients, top: int, peak: float | None, steps: int = 3) -> None:
    """Self CPU time per step of each aten operation (grouped by input shapes) over ``steps`` forward + backward
    passes; matrix multiplies (``mm``, ``bmm``, ``addmm``) summed apart, with their FLOP rate (and its fraction of
    ``peak`` GFLOP/s where given)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        for _ in range(steps):
            model(**batch).loss.backward()
            clear_gradients()
    events = [e for e in profile.key_averages(group_by_input_shape=True) if e.key.startswith("aten::")]
    total = sum(e.self_cpu_time_total for e in events)
    matmuls = [e for e in events if e.key in MATMULS]
    matmul_seconds = sum(e.self_cpu_time_total for e in matmuls) / 1e6
    rate = sum(matmul_flops(e.key, e.input_shapes) * e.count for e in matmuls) / matmul_seconds / 1e9
    print(f"profile of the CPU set, {steps} steps: {total / steps / 1e3:.1f} ms/step in aten operations, "
          f"matrix multiplies {matmul_seconds * 1e6 / total:.0%} at {rate:,.0f} GFLOP/s"
          + (f" = {rate / peak:.0%} of the matmul peak ({peak:,.0f} GFLOP/s)" if peak else ""))
    for e in sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]:
        print(f"{e.self_cpu_time_total / steps / 1e3:8.1f} ms/step {e.count // steps:4d} calls  {e.key:<24} "
              f"{e.input_shapes}")


if __name__ == "__main__":
    main()

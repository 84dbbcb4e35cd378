"""Forward + backward time of one T5 training batch with transformers' modules against minillm/models/fused.py.

    python tools/bench_fused_kernels.py [--preset flan-t5-small] [--batch-size 8] [--prompt-length 136]
                                        [--target-length 5] [--threads N] [--iterations 12] [--dtype bf16]

Three copies of one randomly initialised model (eager attention, training mode, dropout as the preset sets it):
transformers' modules; the fused GELU and RMS norm (``fuse_elementwise(model)``); and those plus the CPU dropout
(``fuse_elementwise(model, cpu=True)``). The copies take turns, one step each, so a machine whose speed drifts
slows all three alike; the script prints the median and best seconds per step of each and the speed-ups over the
first. The default shape is a flan-t5-small step on ANLI prompts at batch 8 (136 prompt tokens, 5 target tokens).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from minillm.models.fused import fuse_elementwise  # noqa: E402
from minillm.models.tiny import PRESETS, build_model  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="flan-t5-small", choices=tuple(PRESETS))
    p.add_argument("--vocab-size", type=int, default=32128)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--prompt-length", type=int, default=136)
    p.add_argument("--target-length", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="default: all cores this process may use")
    p.add_argument("--iterations", type=int, default=12, help="timed steps per variant (default 12)")
    p.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))
    args = p.parse_args(argv)
    if min(args.batch_size, args.prompt_length, args.target_length, args.iterations) < 1 or args.threads < 0:
        p.error("sizes and --iterations must be >= 1, --threads >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    reference = build_model(args.preset, args.vocab_size).train().to(DTYPES[args.dtype])
    reference.set_attn_implementation("eager")
    variants = {"transformers' modules": reference}
    variants["fused GELU + RMS norm"] = copy.deepcopy(reference)
    fuse_elementwise(variants["fused GELU + RMS norm"])
    variants["+ CPU dropout"] = copy.deepcopy(reference)
    fuse_elementwise(variants["+ CPU dropout"], cpu=True)

    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(2, args.vocab_size, (args.batch_size, args.prompt_length), generator=generator)
    labels = torch.randint(2, args.vocab_size, (args.batch_size, args.target_length), generator=generator)

    def step(model) -> float:
        start = time.perf_counter()
        model(input_ids=input_ids, labels=labels).loss.backward()
        elapsed = time.perf_counter() - start
        for parameter in model.parameters():
            parameter.grad = None
        return elapsed

    for model in variants.values():  # warm-up: allocator, oneDNN primitive caches
        step(model)
        step(model)
    times = {name: [] for name in variants}
    for _ in range(args.iterations):
        for name, model in variants.items():
            times[name].append(step(model))

    print(f"{args.preset} {args.dtype}, batch {args.batch_size} x {args.prompt_length} prompt + "
          f"{args.target_length} target tokens, {torch.get_num_threads()} thread(s), {args.iterations} steps each")
    baseline = statistics.median(times["transformers' modules"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:<24} median {median:.4f} s/step, best {min(values):.4f}, speed-up {baseline / median:.2f}x")


if __name__ == "__main__":
    main()

"""Shared pieces of the step benchmarks (bench_fused_kernels.py, bench_kd_step.py, bench_minillm_step.py,
bench_vs_trl.py, gpu_check.py): the batch-shape flags, a random batch of that shape, interleaved timing, a timer of
modules' forward calls, and the FLOPs of a profiled matrix product.

Interleaving: the measured pieces of work take turns, one of each per round, so a machine whose speed drifts (a
shared CPU does, by 10 % from one minute to the next) slows them all alike and their ratio holds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
MATMULS = ("aten::mm", "aten::bmm", "aten::addmm")  # the profiler's names of the matrix products


class CallTimer:
    """Seconds spent inside a set of modules' forward calls (outermost calls only: a module called inside another
    timed one is not counted twice) and how many there were. ``sync`` (e.g. ``torch.cuda.synchronize``) runs at both
    ends of a call, so that a GPU's queued work is inside the measured time."""

    def __init__(self, *modules, sync: Callable[[], None] | None = None):
        self.seconds, self.calls, self._depth, self._start = 0.0, 0, 0, 0.0
        self._sync = sync or (lambda: None)
        for module in modules:
            module.register_forward_pre_hook(self._enter)
            module.register_forward_hook(self._exit)

    def _enter(self, *_):
        if self._depth == 0:
            self._sync()
            self._start = time.perf_counter()
        self._depth += 1

    def _exit(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.seconds += time.perf_counter() - self._start
            self.calls += 1


def add_shape_args(parser: argparse.ArgumentParser, iterations: int) -> None:
    parser.add_argument("--vocab-size", type=int, default=32128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--prompt-length", type=int, default=136, help="default: ANLI's mean Flan prompt")
    parser.add_argument("--target-length", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="default: all cores this process may use")
    parser.add_argument("--iterations", type=int, default=iterations, help=f"timed rounds (default {iterations})")
    parser.add_argument("--dtype", default="bf16", choices=tuple(DTYPES))


def parse_shape_args(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if min(args.batch_size, args.prompt_length, args.target_length, args.iterations) < 1 or args.threads < 0:
        parser.error("sizes and --iterations must be >= 1, --threads >= 0")
    if args.vocab_size < 3:  # random batches draw token ids from [2, vocab_size): pad and EOS left out
        parser.error(f"--vocab-size must be >= 3, got {args.vocab_size}")
    torch.set_num_threads(args.threads or len(os.sched_getaffinity(0)))
    return args


def random_batch(args: argparse.Namespace) -> dict:
    """Full-length prompts and targets of random token ids (2 and up: no pad or EOS), in the adapter convention."""
    generator = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(2, args.vocab_size, (args.batch_size, args.prompt_length), generator=generator),
            "attention_mask": torch.ones(args.batch_size, args.prompt_length, dtype=torch.long),
            "labels": torch.randint(2, args.vocab_size, (args.batch_size, args.target_length), generator=generator)}


def interleaved_medians(work: dict[str, Callable[[], None]], iterations: int, after_each: Callable[[], None],
                        warmup: int = 2) -> dict[str, tuple[float, float]]:
    """Run every piece of ``work`` ``warmup`` times, then ``iterations`` rounds of one run each in turn, calling
    ``after_each`` (outside the timing) after every run; returns ``{name: (median seconds, best seconds)}``."""
    for job in work.values():
        for _ in range(warmup):
            job()
            after_each()
    times = {name: [] for name in work}
    for _ in range(iterations):
        for name, job in work.items():
            start = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - start)
            after_each()
    return {name: (statistics.median(values), min(values)) for name, values in times.items()}


def matmul_flops(name: str, input_shapes: list) -> int:
    """FLOPs of one ``aten::mm`` / ``bmm`` / ``addmm`` call from its recorded input shapes: ``2 m k n`` for an
    ``(m, k) @ (k, n)`` product (``addmm``'s first input is the added term), times the batch for ``bmm``."""
    a, b = input_shapes[1:3] if name == "aten::addmm" else input_shapes[:2]
    return 2 * (a[0] if name == "aten::bmm" else 1) * a[-2] * a[-1] * b[-1]

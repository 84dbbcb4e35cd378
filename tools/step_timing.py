"""Shared pieces of the step benchmarks (bench_fused_kernels.py, bench_kd_step.py, bench_minillm_step.py,
bench_sft_throughput.py, bench_vs_trl.py, gpu_check.py): the batch-shape flags, a random batch of that shape,
interleaved timing, a timer of modules' forward calls, the FLOPs of a profiled matrix product, the machine's
matrix-product peak, and a timed MiniLLM cycle.

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


def matmul_peak(device: str, threads: int, precision: str) -> float:
    """Best GFLOP/s of repeated ``n x n @ n x n`` products (2 n^3 FLOPs each) in ``precision`` over a few large
    ``n``."""
    torch.set_num_threads(threads)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    sizes, repeats = ((4096, 8192, 16384), 10) if device == "cuda" else ((2048, 3072, 4096), 5)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b  # first call: kernel selection and memory allocation
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e9)
    return best


def minillm_settings(*, num_rollouts: int, chunk_size: int, ppo_epochs: int, batch_size: int, max_new_tokens: int,
                     alpha: float):
    """The trainer's MiniLLM configuration (its defaults: single-step term, length normalisation, whitening per
    collection, gamma 0.95, clip 0.2, reward scaling 0.5) with the given sizes and teacher-mix ``alpha``, no LM term
    and one micro-batch per optimizer step: what a timed cycle uses."""
    from minillm.engine.config import TrainConfig

    return TrainConfig(type="minillm", teacher_model_path="teacher", rollout_max_new_tokens=max_new_tokens,
                       teacher_mixed_alpha=alpha, lm_coef=0.0, num_rollouts=num_rollouts, chunk_size=chunk_size,
                       ppo_epochs=ppo_epochs, batch_size=batch_size, grad_acc=1, seed=0)


class MiniLLMCycles:
    """MiniLLM cycles of an encoder-decoder student and teacher as the engine runs them, timed by part.

    One cycle = one collection of ``num_rollouts`` (the rollout batch source's first micro-batches call: sampling,
    teacher scoring, rewards, advantages) and its ``ppo_epochs`` passes of micro-batches, one optimizer step each.
    :meth:`run` returns a cycle's seconds: ``sampling`` (inside ``sample_rollouts``, the teacher's calls included),
    ``teacher`` (the teacher's encoder and decoder calls, forward hooks), ``forward_backward`` (the objective's loss
    and ``backward`` per micro-batch), ``optimizer`` (``step`` and ``zero_grad``), ``total``, and the teacher's
    ``encoder_calls`` and ``decoder_calls``. ``sync`` (a GPU's synchronize) runs before every clock read, so queued
    work is inside the part that queued it. The objective module's sampler is wrapped for the timing, for good."""

    def __init__(self, student, teacher, optimizer, prompts, settings, device: torch.device,
                 sync: Callable[[], None] | None = None):
        from minillm.engine.gathering import SamplingScope
        from minillm.models import Seq2SeqAdapter
        from minillm.objectives import Processes
        from minillm.objectives.minillm import objective as objective_module
        from minillm.objectives.minillm.batches import RolloutBatches

        self.student, self.optimizer, self.settings = student, optimizer, settings
        self.sync = sync or (lambda: None)
        self.objective = objective_module.MiniLLMObjective(settings, Seq2SeqAdapter.for_model(student),
                                                           lambda path: teacher)
        self.sampling_seconds = 0.0
        sample_rollouts = objective_module.sample_rollouts

        def timed_sample_rollouts(*args, **kwargs):
            self.sync()
            start = time.perf_counter()
            out = sample_rollouts(*args, **kwargs)
            self.sync()
            self.sampling_seconds += time.perf_counter() - start
            return out

        objective_module.sample_rollouts = timed_sample_rollouts
        processes = Processes(rank=0, world_size=1, device=device,
                              sampling=SamplingScope([student, teacher], False, True, device))
        self.source = RolloutBatches(self.objective, student, prompts, None, settings, processes)
        self.decoder = CallTimer(teacher, sync=sync)
        self.encoder = CallTimer(teacher.encoder, sync=sync)  # sampling calls the encoder directly
        self.steps = self.source.steps_per_epoch  # optimizer steps per cycle

    def run(self, index: int) -> dict:
        parts = dict.fromkeys(("forward_backward", "optimizer"), 0.0)
        before = (self.decoder.seconds + self.encoder.seconds, self.encoder.calls, self.decoder.calls,
                  self.sampling_seconds)
        self.sync()
        start = time.perf_counter()
        for step in range(index * self.steps, (index + 1) * self.steps):
            batches = self.source.micro_batches(step)
            if step == index * self.steps:
                parts["sampling"] = self.sampling_seconds - before[3]
                parts["teacher"] = self.decoder.seconds + self.encoder.seconds - before[0]
                parts["encoder_calls"] = self.encoder.calls - before[1]
                parts["decoder_calls"] = self.decoder.calls - before[2]
            for batch in batches:
                t1 = time.perf_counter()
                self.objective(self.student, batch).loss_sum.div(self.settings.batch_size).backward()
                self.sync()
                parts["forward_backward"] += time.perf_counter() - t1
            t2 = time.perf_counter()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.sync()
            parts["optimizer"] += time.perf_counter() - t2
        parts["total"] = time.perf_counter() - start
        return parts

    @staticmethod
    def breakdown(measured: list[dict]) -> tuple[dict, dict]:
        """The mean of each part over ``measured`` cycles, and the cycle split into sampling (less the teacher's
        calls in it), teacher scoring, student forward/backward, optimizer and the rest (rewards, returns,
        whitening, slicing the store into micro-batches, bookkeeping)."""
        mean = {k: sum(x[k] for x in measured) / len(measured) for k in measured[0]}
        parts = {"sampling": mean["sampling"] - mean["teacher"], "teacher_scoring": mean["teacher"],
                 "student_forward_backward": mean["forward_backward"], "optimizer": mean["optimizer"]}
        parts["other"] = mean["total"] - sum(parts.values())
        return mean, parts

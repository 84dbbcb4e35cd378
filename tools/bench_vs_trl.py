"""On-policy reverse-KL distillation throughput: our MiniLLM objective against TRL's DistillationTrainer and GKDTrainer.

    pip install -r requirements-bench.txt   # once: trl==1.16.0 (benchmark only)
    python tools/bench_vs_trl.py [--rounds 3] [--warmup-steps 2] [--steps 10] [--batch-size 8] [--max-new-tokens 8]
                                 [--lr 1e-5] [--threads N] [--trainers ours distillation gkd] [--floor]
                                 [--smoke]
                                 [--anli /work/shared/data/anli] [--tokenizer /work/shared/tokenizers/flan-t5]

One process, one machine, the same work for every trainer:

- models: a GPT-2-shaped student (4 layers x 256, 4 heads) and teacher (6 layers x 384, 6 heads), randomly
  initialised from ``--seed``, with the Flan-T5 tokenizer's vocabulary (``len(tokenizer)`` = 32,100 ids; pad 0,
  EOS 1), no dropout, fp32 on the CPU. Every trainer starts from its own copy of the same initial weights;
- prompts: ANLI R1 dev as the project's causal data makes them (the Flan template with its answer cue, no special
  tokens, so no EOS at the end), the same ids for every trainer (DistillationTrainer tokenizes the texts itself,
  with a copy of the tokenizer that adds no EOS; the script checks the ids agree), in one seeded order that every
  trainer reads from the start in every round (TRL's samplers unshuffled), so every trainer trains on the same
  batches of prompts;
- fully on-policy reverse KL: every optimizer step samples ``--max-new-tokens`` tokens for ``--batch-size`` fresh
  prompts from the current student (temperature 1, no top-k / top-p) and trains once on them;
- the same optimizer: ``torch.optim.AdamW(fused=True)``, ``--lr``, betas (0.9, 0.999), no weight decay, a constant
  rate, gradients clipped at norm 1.0.

The trainers:

- ``ours``: the engine's MiniLLM objective (``--type minillm``, :func:`minillm.objectives.build_objective`) with the
  trainer's defaults (single-step term on, length normalisation on, advantages whitened, gamma 0.95, PPO clip 0.2)
  and teacher-mix alpha 0 (student-only sampling), one collection of ``--batch-size`` rollouts per optimizer step
  and one PPO epoch (``num_rollouts = chunk_size = batch_size``, ``ppo_epochs = 1``), its copies of the models with
  the elementwise kernels the trainer swaps in at load (``--fused-kernels``, on by default: GPT-2's seven-operation
  ``gelu_new`` as torch's one-kernel tanh GELU, the same function): per step, what the engine's
  rollout batch source does for one collection (``prompt_batches``, ``objective.collect``, ``objective.micro_batch``)
  and the objective's loss, ``backward``, clip and step, driven by a plain loop as in
  ``tools/bench_minillm_step.py`` -- not the full ``minillm.finetune`` process with its DeepSpeed engine, logging
  and evaluation;
- ``distillation``: ``trl.DistillationTrainer`` (``DistillationConfig``: ``beta=1`` = reverse KL; it has no
  on-policy fraction in TRL 1.16: it always generates with the student, every step), ``max_completion_length``,
  temperature 1, no vLLM;
- ``gkd``: ``trl.experimental.gkd.GKDTrainer`` (``lmbda=1``: on-policy every step, ``beta=1``), the same
  generation settings.

Both TRL trainers run their own ``Trainer.train()`` loop with evaluation, saving, reporting and logging off
(``report_to=[]``, ``save_strategy="no"``, ``logging_strategy="no"``), no gradient checkpointing and no bf16 (TRL
turns both on by default), ``dataloader_num_workers=0``.

Each round runs every trainer in turn (ours, DistillationTrainer, GKD, then again): ``--warmup-steps`` untimed
optimizer steps, then ``--steps`` timed ones. samples/s = steps x batch size / seconds, where a sample is one
freshly generated completion trained on. The script checks that each trainer called the student's generation once
per optimizer step and prints where each trainer's time went: sampling (the student's generation call -- ours:
``collect``, which also computes rewards and advantages -- less the teacher's calls made inside it), teacher (the
teacher's backbone and output-layer module calls: ours scores the finished completions once, teacher-forced, at
the end of ``collect`` (alpha 0: the teacher is not needed to sample), GKD runs it once over prompt and completion; DistillationTrainer runs its backbone once and projects its hidden states
inside the loss, so its teacher output layer is counted in the rest) and the rest (student forward/backward, loss,
optimizer, loop). Forward hooks time the teacher; they cost every trainer the same. Two ratios are printed: of the
trainers' medians, and the median of the per-round ratios. Within a round the trainers run one after the other,
seconds apart, so a machine whose speed drifts between rounds disturbs the per-round ratios least.

``--floor`` then profiles one more round of each trainer (one warm-up and up to 3 steps) with torch's profiler
and prints the FLOPs of its matrix products per step (``mm``, ``addmm``, ``bmm``: every linear layer, the output
layers, and attention where it is not one fused kernel), with the seconds those products would take at the
machine's fp32 matrix-product peak (the best rate of large square products). That floor bounds ours from above:
even if nothing but its matrix products took time, and they all ran at the peak, ours could not exceed
``batch size / floor`` samples/s; the script prints that ceiling as a ratio to the other trainers' medians.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported with torch when a trainer is built, not for --help
    from step_timing import CallTimer

REPO = Path(__file__).resolve().parents[1]

TRAINERS = ("ours", "distillation", "gkd")
LABELS = {"ours": "ours (MiniLLM)", "distillation": "TRL DistillationTrainer", "gkd": "TRL GKDTrainer"}
BETAS, EPS, MAX_GRAD_NORM = (0.9, 0.999), 1e-8, 1.0
STUDENT_SHAPE, TEACHER_SHAPE = (4, 256, 4), (6, 384, 6)  # layers, width, heads


def fail(message: str) -> None:
    sys.exit(f"bench_vs_trl: error: {message}")


# ------------------------------------------------------------------------------------------- machine

def machine() -> str:
    import torch

    model = platform.processor() or "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = [f"torch {torch.__version__}"]
    for name in ("transformers", "trl"):
        with contextlib.suppress(ImportError):
            versions.append(f"{name} {__import__(name).__version__}")
    return (f"{model}, {os.cpu_count()} logical CPUs ({usable} usable), {torch.get_num_threads()} torch threads; "
            f"{', '.join(versions)}; Python {platform.python_version()}")


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


# ------------------------------------------------------------------------------------------- data and models

def causal_tokenizer(tokenizer):
    """A copy of ``tokenizer`` that adds no special tokens (T5's appends EOS to every text): what TRL tokenizes the
    prompt texts with, so that its ids are the project's causal prompt ids."""
    from tokenizers import processors

    causal = copy.deepcopy(tokenizer)
    causal.backend_tokenizer.post_processor = processors.TemplateProcessing(single="$A", pair="$A $B")
    return causal


def load_prompts(anli: Path, tokenizer, seed: int, limit: int) -> tuple[list[str], list[list[int]]]:
    """ANLI R1 dev prompts as the project's causal data makes them (the Flan template with its answer cue, encoded
    without special tokens: :func:`minillm.data.process.encode_prompts`), in one seeded order: texts and ids."""
    import numpy as np
    import pyarrow.parquet as pq

    from minillm.data.process import encode_prompts
    from minillm.data.templates import get_template

    path = anli / "plain_text" / "dev_r1-00000-of-00001.parquet"
    if not path.is_file():
        fail(f"{path} not found: --anli must be the ANLI folder in the Hugging Face layout (plain_text/*.parquet)")
    table = pq.read_table(path, columns=["premise", "hypothesis"]).to_pydict()
    template = get_template("flan")
    texts = [template.prompt(p, h, answer_cue=True) for p, h in zip(table["premise"], table["hypothesis"])]
    order = np.random.default_rng(seed).permutation(len(texts))[:limit]
    texts = [texts[i] for i in order]
    return texts, encode_prompts(tokenizer, texts, "causal")


def build_model(shape: tuple[int, int, int], vocab_size: int, seed: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    layers, width, heads = shape
    config = GPT2Config(vocab_size=vocab_size, n_layer=layers, n_embd=width, n_head=heads, n_positions=1024,
                        pad_token_id=0, eos_token_id=1, bos_token_id=1, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config).float()


def make_optimizer(model, lr: float):
    import torch

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=BETAS, eps=EPS,
                                  weight_decay=0.0, fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


# ------------------------------------------------------------------------------------------- timing helpers

class Probe:
    """Wraps the callable that generates with the student: counts calls and generated tokens, times them, and
    tells the teacher's share inside them apart."""

    def __init__(self, teacher_timer: CallTimer):
        self.teacher = teacher_timer
        self.calls, self.seconds, self.teacher_inside, self.completions = 0, 0.0, 0.0, 0

    def wrap(self, function, count_tokens):
        def wrapped(*args, **kwargs):
            teacher_before, start = self.teacher.seconds, time.perf_counter()
            out = function(*args, **kwargs)
            self.seconds += time.perf_counter() - start
            self.teacher_inside += self.teacher.seconds - teacher_before
            self.calls += 1
            self.completions += count_tokens(args, kwargs, out)
            return out
        return wrapped

    def snapshot(self) -> tuple:
        return self.calls, self.seconds, self.teacher_inside, self.completions, self.teacher.seconds


def matmul_gflop_per_step(runner, steps: int) -> float:
    """GFLOP of ``runner``'s matrix products per optimizer step, profiled over one round of one warm-up and
    ``steps`` steps (all counted: they do the same work on other prompts)."""
    from torch.profiler import ProfilerActivity, profile

    from step_timing import MATMULS, matmul_flops

    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        runner.round(1, steps)
    events = [e for e in prof.key_averages(group_by_input_shape=True) if e.key in MATMULS]
    return sum(matmul_flops(e.key, e.input_shapes) * e.count for e in events) / (steps + 1) / 1e9


# ------------------------------------------------------------------------------------------- the trainers

class Runner:
    """One trainer: ``round(warmup, steps)`` runs warmup + steps optimizer steps from the start of the prompt
    order and returns the timed steps' figures."""

    name = ""

    def __init__(self, student, teacher, prompts, args):
        from step_timing import CallTimer  # with torch: imported when a trainer is built, not for --help

        self.student, self.teacher, self.args = student, teacher, args
        self.teacher_timer = CallTimer(*self._teacher_modules(teacher))
        self.probe = Probe(self.teacher_timer)

    @staticmethod
    def _teacher_modules(teacher):
        return [teacher.base_model, teacher.get_output_embeddings()]  # TRL's DistillationTrainer calls both apart

    def _figures(self, before: tuple, after: tuple, seconds: float, steps: int) -> dict:
        calls, gen, inside, completions, teacher = (a - b for a, b in zip(after, before))
        if calls != steps:
            fail(f"{LABELS[self.name]}: {calls} generation calls in {steps} timed steps: not on-policy every step")
        samples = steps * self.args.batch_size
        return {"seconds": seconds, "samples_per_s": samples / seconds, "sampling": gen - inside, "teacher": teacher,
                "rest": seconds - (gen - inside) - teacher, "new_tokens": completions / samples}


class Ours(Runner):
    name = "ours"

    def __init__(self, student, teacher, prompts, args, tokenizer):
        import numpy as np

        from minillm.engine.config import TrainConfig
        from minillm.models import adapter_for
        from minillm.models.fused import fuse_elementwise
        from minillm.objectives import build_objective

        super().__init__(student, teacher, prompts, args)
        b = args.batch_size
        self.config = TrainConfig(type="minillm", teacher_model_path="teacher", num_rollouts=b, chunk_size=b,
                                  ppo_epochs=1, batch_size=b, grad_acc=1, rollout_max_new_tokens=args.max_new_tokens,
                                  teacher_mixed_alpha=0.0, temperature=1.0, top_k=0, top_p=1.0, lr=args.lr,
                                  weight_decay=0.0, scheduler="constant", seed=args.seed)
        for model in (student, teacher):  # as the trainer loads them (--fused-kernels, on by default)
            fuse_elementwise(model, cpu=True)
        self.teacher.requires_grad_(False).eval()
        self.adapter = adapter_for(student, tokenizer)
        self.objective = build_objective("minillm", self.config, self.adapter, lambda path: self.teacher)
        self.student.eval()  # MiniLLM samples and trains without dropout (the objective's uses_dropout is False)
        self.prompts = [np.asarray(x, dtype=np.int64) for x in prompts]
        self.objective.collect = self.probe.wrap(self.objective.collect, self._count_collected)
        self.optimizer, _ = make_optimizer(student, args.lr)
        self.parameters = [p for p in student.parameters() if p.requires_grad]

    @staticmethod
    def _count_collected(args, kwargs, out) -> int:
        store, _ = out
        return int(store["rollouts"].mask.sum())

    def step(self, step: int) -> None:
        """One optimizer step as the engine runs it with one collection per step (``num_rollouts = chunk_size =
        batch_size``, one PPO epoch): the step's prompts collated (``prompt_batches``), rollouts collected with the
        current student (sampling, rewards, advantages), the one micro-batch's loss, backward, clip, AdamW."""
        import numpy as np
        import torch

        from minillm.engine.batches import prompt_batches
        from minillm.engine.distributed import all_reduce_sum_

        b = self.args.batch_size
        batches = prompt_batches(self.prompts[step * b:(step + 1) * b], b, self.adapter.pad_token_id,
                                 torch.device("cpu"))
        generator = torch.Generator().manual_seed(int(np.random.default_rng([self.args.seed, step]).integers(2**62)))
        store, _ = self.objective.collect(self.student, batches, generator, all_reduce_sum_)
        batch = self.objective.micro_batch(store, np.arange(b), all_reduce_sum_)
        units = max(self.objective.units(batch), 1)
        self.objective(self.student, batch).loss_sum.div(units).backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, MAX_GRAD_NORM, foreach=True)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def round(self, warmup: int, steps: int) -> dict:
        for step in range(warmup):
            self.step(step)
        before, start = self.probe.snapshot(), time.perf_counter()
        for step in range(warmup, warmup + steps):
            self.step(step)
        return self._figures(before, self.probe.snapshot(), time.perf_counter() - start, steps)


class TRLRunner(Runner):
    """Shared by both TRL trainers: their own ``Trainer.train()`` runs warmup + steps steps per round; a callback
    records the time and the generation probe at each step's end, and the timed window runs from the end of the
    last warm-up step to the end of the last step (``train()``'s setup falls in the first, untimed step)."""

    def _start(self, trainer) -> None:
        from transformers import TrainerCallback
        from transformers.trainer_callback import PrinterCallback

        marks = self.marks = []
        probe = self.probe

        class StepClock(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                marks.append((time.perf_counter(), probe.snapshot()))

        self.trainer = trainer
        trainer.remove_callback(PrinterCallback)  # it prints train()'s closing summary even with logging off
        trainer.add_callback(StepClock())
        # both trainers generate through the student's own generate(): count, time and check every call
        self.student.generate = probe.wrap(self.student.generate, self._count_generated)

    @staticmethod
    def _count_generated(args, kwargs, out) -> int:
        """New tokens per row up to and including the first EOS (id 1)."""
        sequences = out.sequences if hasattr(out, "sequences") else out
        new = sequences[:, kwargs["input_ids"].shape[1]:]
        is_eos = (new == 1).long()
        return int((is_eos.cumsum(-1) - is_eos == 0).sum())

    def round(self, warmup: int, steps: int) -> dict:
        self.marks.clear()
        self.trainer.args.max_steps = warmup + steps
        self.trainer.train()
        if len(self.marks) != warmup + steps:
            fail(f"{LABELS[self.name]}: {len(self.marks)} steps ran instead of {warmup + steps}")
        (start, before), (end, after) = self.marks[warmup - 1], self.marks[-1]
        return self._figures(before, after, end - start, steps)

    @staticmethod
    def _common(args, output_dir: str) -> dict:
        """TrainingArguments both TRL configs take: the same optimizer settings as ours (the optimizer itself is
        passed in), fp32 on the CPU, no gradient checkpointing, nothing evaluated, logged, reported or saved."""
        return dict(output_dir=output_dir, per_device_train_batch_size=args.batch_size, gradient_accumulation_steps=1,
                    max_steps=args.warmup_steps + args.steps, learning_rate=args.lr, lr_scheduler_type="constant",
                    warmup_steps=0, weight_decay=0.0, adam_beta1=BETAS[0], adam_beta2=BETAS[1], adam_epsilon=EPS,
                    max_grad_norm=MAX_GRAD_NORM, seed=args.seed, use_cpu=True, bf16=False, fp16=False,
                    gradient_checkpointing=False, report_to=[], save_strategy="no", eval_strategy="no",
                    logging_strategy="no", logging_steps=10**9, disable_tqdm=True, dataloader_num_workers=0,
                    remove_unused_columns=False, temperature=1.0)


class Distillation(TRLRunner):
    name = "distillation"

    def __init__(self, student, teacher, prompts, args, texts, tokenizer, work: str):
        from datasets import Dataset
        from trl import DistillationConfig, DistillationTrainer

        super().__init__(student, teacher, prompts, args)
        config = DistillationConfig(**self._common(args, work), beta=1.0, top_k=0, top_p=1.0,
                                    max_completion_length=args.max_new_tokens, use_vllm=False, disable_dropout=True,
                                    shuffle_dataset=False, log_completions=False)
        trainer = DistillationTrainer(model=student, teacher_model=teacher, args=config,
                                      train_dataset=Dataset.from_dict({"prompt": texts}), processing_class=tokenizer,
                                      optimizers=make_optimizer(student, args.lr))
        self._start(trainer)


class GKD(TRLRunner):
    name = "gkd"

    def __init__(self, student, teacher, prompts, args, tokenizer, work: str):
        from datasets import Dataset
        from trl.experimental.gkd import GKDConfig, GKDTrainer

        super().__init__(student, teacher, prompts, args)
        config = GKDConfig(**self._common(args, work), lmbda=1.0, beta=1.0, max_new_tokens=args.max_new_tokens,
                           disable_dropout=True, seq_kd=False, train_sampling_strategy="sequential")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "experimental" and "use DistillationTrainer" notices
            trainer = GKDTrainer(model=student, teacher_model=teacher, args=config,
                                 train_dataset=Dataset.from_dict({"prompt_ids": prompts}), processing_class=tokenizer,
                                 data_collator=PromptCollator(tokenizer.pad_token_id),
                                 optimizers=make_optimizer(student, args.lr))
        self._start(trainer)


class PromptCollator:
    """GKD's batch for on-policy steps: left-padded prompts. No ``labels``: with ``lmbda = 1`` GKD replaces the
    batch by the student's completions before the loss (and gold labels would only set the loss's normaliser to the
    gold token count, the Trainer's ``num_items_in_batch``)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        ids = [e["prompt_ids"] for e in examples]
        width = max(len(x) for x in ids)
        prompts = torch.full((len(ids), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, x in enumerate(ids):
            prompts[row, width - len(x):] = torch.as_tensor(x)
            mask[row, width - len(x):] = 1
        return {"prompts": prompts, "prompt_attention_mask": mask, "input_ids": prompts.clone(),
                "attention_mask": mask.clone()}


# ------------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3, help="rounds; each runs every trainer once, in turn")
    p.add_argument("--warmup-steps", type=int, default=2, help="untimed optimizer steps at the start of each round")
    p.add_argument("--steps", type=int, default=10, help="timed optimizer steps per round and trainer")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--trainers", nargs="+", default=list(TRAINERS), choices=TRAINERS)
    p.add_argument("--anli", type=Path, default=REPO.parent / "shared" / "data" / "anli")
    p.add_argument("--tokenizer", type=Path, default=REPO.parent / "shared" / "tokenizers" / "flan-t5")
    p.add_argument("--floor", action="store_true",
                   help="then profile each trainer's matrix products and print the ceiling they put on ours")
    p.add_argument("--smoke", action="store_true", help="1 round of 1 warm-up and 1 timed step (a test)")
    args = p.parse_args(argv)
    if args.smoke:
        args.rounds, args.warmup_steps, args.steps = 1, 1, 1
    for name in ("rounds", "warmup_steps", "steps", "batch_size", "max_new_tokens"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.threads < 0 or args.lr <= 0:
        p.error("--threads must be >= 0 and --lr > 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if any(t != "ours" for t in args.trainers) and importlib.util.find_spec("trl") is None:
        fail("trl is not installed: pip install -r requirements-bench.txt (or --trainers ours)")
    import torch
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    for name in ("trl", "accelerate", "DeepSpeed"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' renames (gradient_checkpointing)
    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    if tokenizer.pad_token_id != 0 or tokenizer.eos_token_id != 1:
        fail(f"{args.tokenizer}: pad {tokenizer.pad_token_id} and EOS {tokenizer.eos_token_id}, expected 0 and 1")
    vocab = len(tokenizer)
    texts, prompts = load_prompts(args.anli, tokenizer, args.seed, (args.warmup_steps + args.steps) * args.batch_size)
    trl_tokenizer = causal_tokenizer(tokenizer)
    if [list(x) for x in trl_tokenizer(texts)["input_ids"]] != prompts:
        fail("TRL's tokenization of the prompt texts differs from the project's causal prompt ids")
    student0 = build_model(STUDENT_SHAPE, vocab, args.seed)
    teacher0 = build_model(TEACHER_SHAPE, vocab, args.seed + 1)

    print(f"machine: {machine()}")
    print(f"load average at start (1, 5, 15 min): {load_average()}")
    params = [sum(p.numel() for p in m.parameters()) / 1e6 for m in (student0, teacher0)]
    lengths = sorted(len(x) for x in prompts)
    print(f"student GPT-2 {STUDENT_SHAPE[0]}x{STUDENT_SHAPE[1]} ({params[0]:.1f} M), teacher "
          f"{TEACHER_SHAPE[0]}x{TEACHER_SHAPE[1]} ({params[1]:.1f} M), vocabulary {vocab}, fp32; ANLI R1 dev "
          f"prompts ({len(prompts)} used, median {statistics.median(lengths):.0f} tokens, max {lengths[-1]}); batch "
          f"{args.batch_size}, {args.max_new_tokens} new tokens, AdamW lr {args.lr:g}; {args.rounds} round(s) of "
          f"{args.warmup_steps} warm-up + {args.steps} timed steps per trainer")

    work = tempfile.TemporaryDirectory(prefix="bench_vs_trl_")
    runners = {}
    for name in args.trainers:
        student, teacher = copy.deepcopy(student0), copy.deepcopy(teacher0)
        if name == "ours":
            runners[name] = Ours(student, teacher, prompts, args, tokenizer)
        elif name == "distillation":
            runners[name] = Distillation(student, teacher, prompts, args, texts, trl_tokenizer,
                                         str(Path(work.name) / name))
        else:
            runners[name] = GKD(student, teacher, prompts, args, trl_tokenizer, str(Path(work.name) / name))

    results: dict[str, list[dict]] = {name: [] for name in runners}
    for r in range(1, args.rounds + 1):
        for name, runner in runners.items():
            weight = runner.student.get_input_embeddings().weight
            before = weight.detach().clone()
            figures = runner.round(args.warmup_steps, args.steps)
            if torch.equal(before, weight.detach()):
                fail(f"{LABELS[name]}: the student's weights did not change in round {r}")
            results[name].append(figures)
            print(f"round {r} {LABELS[name]:24s} {figures['samples_per_s']:7.2f} samples/s  "
                  f"({figures['seconds']:.2f} s for {args.steps} steps; {figures['new_tokens']:.2f} new tokens per "
                  "sample)", flush=True)
    print(f"load average at end (1, 5, 15 min): {load_average()}")

    medians = {name: statistics.median(f["samples_per_s"] for f in rounds) for name, rounds in results.items()}
    print("median samples/s over rounds:")
    for name, value in medians.items():
        rounds = ", ".join(f"{f['samples_per_s']:.2f}" for f in results[name])
        mean = {k: statistics.fmean(f[k] for f in results[name]) for k in ("seconds", "sampling", "teacher", "rest")}
        shares = ", ".join(f"{k} {100 * mean[k] / mean['seconds']:.0f} %" for k in ("sampling", "teacher", "rest"))
        print(f"  {LABELS[name]:24s} {value:7.2f}  (rounds: {rounds}; time: {shares})")
    if "ours" in medians:
        for other in (n for n in runners if n != "ours"):
            per_round = [o["samples_per_s"] / t["samples_per_s"] for o, t in zip(results["ours"], results[other])]
            print(f"ratio ours / {LABELS[other]}: {medians['ours'] / medians[other]:.2f}x (medians); per round "
                  f"{', '.join(f'{x:.2f}x' for x in per_round)}, median of these {statistics.median(per_round):.2f}x")
    if args.floor:
        print_floor(runners, medians, args)
    work.cleanup()


def print_floor(runners: dict, medians: dict, args: argparse.Namespace) -> None:
    """Each trainer's matrix-product GFLOP per step and their seconds at the machine's fp32 peak; for ours, the
    samples/s that floor allows and its ratio to the other trainers' medians (module docstring)."""
    import torch

    from step_timing import matmul_peak

    steps = min(args.steps, 3)
    gflop = {name: matmul_gflop_per_step(runner, steps) for name, runner in runners.items()}
    peak = matmul_peak("cpu", torch.get_num_threads(), "fp32")
    print(f"matrix products per step (torch profiler, 1 warm-up + {steps} steps per trainer), and their time at the "
          f"fp32 matmul peak of {peak:,.0f} GFLOP/s:")
    for name, value in gflop.items():
        print(f"  {LABELS[name]:24s} {value:7.2f} GFLOP  {value / peak:.3f} s/step at the peak")
    if "ours" in gflop:
        ceiling = args.batch_size / (gflop["ours"] / peak)
        others = ", ".join(f"{ceiling / medians[n]:.2f}x {LABELS[n]}" for n in runners if n != "ours")
        print(f"ceiling for ours (nothing but its matrix products, all at the peak): {ceiling:.2f} samples/s"
              + (f" = {others}" if others else ""))


if __name__ == "__main__":
    main()

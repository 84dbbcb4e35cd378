"""Benchmark SFT training throughput: our DeepSpeed engine against Hugging Face's Seq2SeqTrainer, in one run.

    INSTALL_BENCH=1 bash install.sh        # once: the benchmark-only pins (accelerate, for Seq2SeqTrainer)
    python tools/bench_sft_throughput.py [--steps 40] [--warmup-steps 5] [--batch-size 8] [--threads N] [--repeats 2]
                                         [--precisions bf16 fp32] [--preset flan-t5-small] [--anli ../shared/data/anli]
                                         [--tokenizer ../shared/tokenizers/flan-t5]

What it does, all in a temporary folder (nothing is written to the repository or to shared/):

1. the matrix-multiply peak of this machine in each precision benchmarked: the best GFLOP/s of repeated large
   matmuls on all the cores this process may use (``--threads``), or on the GPU;
2. the real ANLI R1 dev prompts through the project's pipeline (Flan template, label targets, the real Flan-T5
   tokenizer); R1 dev also serves as ``train_r1``, the split the trainer trains on;
3. a randomly initialised model of the preset's shape (untied head, vocabulary 32128);
4. our training (``python -m minillm.finetune``, one process) for ``--steps`` optimizer steps at ``--batch-size``,
   bf16 (``zero0_bf16.json`` on CPU, ``zero2_bf16.json`` on CUDA) and fp32, evaluation out of the way;
5. ``Seq2SeqTrainer`` on the same weights and examples: bf16 (autocast) and fp32, ``group_by_length`` sampling,
   ``DataCollatorForSeq2Seq``, no saving, evaluation or reporting;
6. the model FLOPs of our steps, from the model's shapes and the real token counts of the batches trained, as a
   fraction of the peak of the precision they ran in.

``--precisions fp32`` leaves bf16 out: on a CPU without bf16 instructions (AVX2 only) bf16 matmuls run tens of
times slower than fp32 ones, and neither trainer would use them there.

Throughput is taken over the steady-state steps (after ``--warmup-steps``): examples/s and real (non-padding
prompt + target) tokens/s. Each training run is a separate process with ``--threads`` threads; the four runs are
repeated ``--repeats`` times in alternation and each configuration keeps its fastest round (a shared machine's speed
drifts by 10 % from one minute to the next, enough to swing a ratio taken from single runs). The two trainers
bucket by length with different samplers, so a short run draws batches of somewhat different lengths: tokens/s is
the like-for-like figure, examples/s converges to it over longer runs.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

PRECISIONS = ("bf16", "fp32")
SEED = 42
LR = 1e-4
WEIGHT_DECAY = 0.01


def fail(message: str) -> None:
    sys.exit(f"bench_sft_throughput: error: {message}")


# ------------------------------------------------------------------------------------------- 2-3. data, model

def dev_as_train_text(dev: Path, work: Path) -> Path:
    """The text stage of the project's pipeline over one R1 dev parquet file ``dev``, linked in as train_r1 too.
    Returns the processed folder (``work/processed``), shards not built yet."""
    from minillm.data.process import build_text

    raw = work / "raw" / "plain_text"
    raw.mkdir(parents=True)
    for split in ("dev", "train"):
        (raw / f"{split}_r1-00000-of-00001.parquet").symlink_to(dev.resolve())
    out = work / "processed"
    build_text(work / "raw", out, "flan", "label")
    return out


def prepare_data(anli: Path, tokenizer: Path, work: Path) -> Path:
    """R1 dev through the project's pipeline, with R1 dev linked in as train_r1 too. Returns the data folder."""
    from minillm.data.process import build_shards

    out = dev_as_train_text(anli / "plain_text" / "dev_r1-00000-of-00001.parquet", work)
    build_shards(out, str(tokenizer))
    return out


def prepare_model(preset: str, tokenizer_dir: Path, work: Path) -> Path:
    from transformers import AutoTokenizer
    from transformers.utils.logging import disable_progress_bar

    from minillm.models.tiny import build_model, model_vocab_size, save_checkpoint

    disable_progress_bar()  # the "Writing model shards" bar
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = build_model(preset, model_vocab_size(tokenizer), seed=0)
    return save_checkpoint(model, tokenizer, work / "model")


# ------------------------------------------------------------------------------------------- 4. ours

def run_ours(model_dir: Path, data_dir: Path, work: Path, precision: str, device: str, args, env: dict) -> dict:
    stage = "2" if device == "cuda" else "0"
    save_dir = work / f"ours_{precision}"
    command = [sys.executable, "-m", "minillm.finetune", "--model-path", str(model_dir), "--data-dir", str(data_dir),
               "--save-dir", str(save_dir),
               "--deepspeed-config", str(REPO / "configs" / "deepspeed" / f"zero{stage}_{precision}.json"),
               "--train-round", "r1", "--batch-size", str(args.batch_size), "--max-steps", str(args.steps),
               "--lr", str(LR), "--weight-decay", str(WEIGHT_DECAY), "--scheduler", "constant", "--seed", str(SEED),
               "--log-interval", "1", "--eval-interval", str(10**9), "--eval-rounds", "r1", "--eval-max-examples",
               str(args.batch_size), "--eval-batch-size", str(args.batch_size), "--no-eval-generate"]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"our trainer ({precision}) failed: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    lines = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    # One train line per step (--log-interval 1); its rates cover that step's wall time.
    steady = [r for r in lines if "tokens_per_s" in r and r["step"] > args.warmup_steps]
    seconds = sum(1.0 / r["steps_per_s"] for r in steady)
    return {"steps": len(steady), "seconds": seconds,
            "examples": sum(r["examples_per_s"] / r["steps_per_s"] for r in steady),
            "tokens": sum(r["tokens_per_s"] / r["steps_per_s"] for r in steady)}


# ------------------------------------------------------------------------------------------- 5. Seq2SeqTrainer

def hf_worker(model_dir: Path, data_dir: Path, work: Path, precision: str, device: str, steps: int,
              warmup_steps: int, batch_size: int) -> dict:
    """Train with Seq2SeqTrainer in this process; the steady-state figures as a dict."""
    import torch
    from transformers import (AutoModelForSeq2SeqLM, AutoTokenizer, DataCollatorForSeq2Seq, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)

    from minillm.data.seq2seq import Seq2SeqExamples

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, dtype=torch.float32)
    examples = Seq2SeqExamples(data_dir, "r1", "train")
    dataset = [{"input_ids": p.tolist(), "labels": t.tolist()} for p, t in (examples[i] for i in range(len(examples)))]

    step_tokens: list[int] = []
    step_ends: list[float] = []

    class CountingTrainer(Seq2SeqTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            step_tokens.append(int(inputs["attention_mask"].sum()) + int((inputs["labels"] != -100).sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    class StepClock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            step_ends.append(time.perf_counter())

    training_args = Seq2SeqTrainingArguments(
        output_dir=str(work / f"hf_{precision}"), per_device_train_batch_size=batch_size, max_steps=steps,
        learning_rate=LR, weight_decay=WEIGHT_DECAY, lr_scheduler_type="constant", seed=SEED,
        bf16=precision == "bf16", use_cpu=device == "cpu", train_sampling_strategy="group_by_length",
        save_strategy="no", eval_strategy="no", logging_strategy="no", report_to="none", disable_tqdm=True)
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=dataset,
                              data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
                              callbacks=[StepClock()])
    trainer.train()
    # step k ends at step_ends[k - 1]; the steady state is steps warmup_steps + 1 .. steps
    return {"steps": steps - warmup_steps, "seconds": step_ends[-1] - step_ends[warmup_steps - 1],
            "examples": (steps - warmup_steps) * batch_size, "tokens": sum(step_tokens[warmup_steps:])}


def run_hf(model_dir: Path, data_dir: Path, work: Path, precision: str, device: str, args, env: dict) -> dict:
    command = [sys.executable, __file__, "--hf-worker", precision, "--work", str(work), "--model-dir", str(model_dir),
               "--data-dir", str(data_dir), "--device", device, "--steps", str(args.steps),
               "--warmup-steps", str(args.warmup_steps), "--batch-size", str(args.batch_size)]
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        fail(f"Seq2SeqTrainer ({precision}) failed: "
             f"{done.stderr.strip().splitlines()[-1] if done.stderr.strip() else ''}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------- 6. model FLOPs

def forward_flops(config, prompt_length: int, target_length: int) -> int:
    """Matmul FLOPs (2 per multiply-add) of one T5 forward pass over one example's real tokens.

    Encoder, per prompt token and layer: q, k, v, o projections and the gated FFN (two input matrices, one output);
    per example: attention scores and values over its own prompt length. Decoder, per target token and layer:
    self-attention projections, cross-attention query and output projections, the FFN; per example: self-attention
    scores and values (the full square, as computed), cross-attention keys and values over the prompt tokens and
    cross-attention scores and values; then the output layer over the target tokens. Norms, softmax, the position
    bias and the loss are not matmuls and not counted.
    """
    d, inner, ff, vocab = config.d_model, config.num_heads * config.d_kv, config.d_ff, config.vocab_size
    s, t = prompt_length, target_length
    projections, ffn = 4 * d * inner, 3 * d * ff
    encoder_layer = s * (projections + ffn) + 2 * s * s * inner
    decoder_layer = (t * (projections + 2 * d * inner + ffn) + 2 * t * t * inner
                     + s * 2 * d * inner + 2 * t * s * inner)
    multiply_adds = (config.num_layers * encoder_layer + config.num_decoder_layers * decoder_layer + t * d * vocab)
    return 2 * multiply_adds


def trained_flops(model_dir: Path, data_dir: Path, args) -> tuple[float, int]:
    """Training FLOPs (3 x forward) and real tokens of the steady-state steps of our run: its batches are fixed by
    (seed, epoch, position) through the trainer's own bucketing, so they are rebuilt here exactly."""
    from transformers import AutoConfig

    from minillm.data.seq2seq import Seq2SeqExamples, bucketed_batches
    from minillm.engine.config import TrainConfig

    config = AutoConfig.from_pretrained(model_dir)
    examples = Seq2SeqExamples(data_dir, "r1", "train")
    steps_per_epoch = len(examples) // args.batch_size
    flops, tokens, epochs = 0, 0, {}
    for step in range(args.warmup_steps, args.steps):
        epoch, position = divmod(step, steps_per_epoch)
        if epoch not in epochs:
            epochs[epoch] = bucketed_batches(examples.prompt_lengths, args.batch_size, SEED, epoch,
                                             TrainConfig.bucket_window)
        for i in epochs[epoch][position]:
            prompt, target = examples[int(i)]
            flops += 3 * forward_flops(config, len(prompt), len(target))
            tokens += len(prompt) + len(target)
    return flops, tokens


# ------------------------------------------------------------------------------------------- main

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=40, help="optimizer steps per training run (default 40)")
    p.add_argument("--warmup-steps", type=int, default=5, help="first steps left out of the figures (default 5)")
    p.add_argument("--batch-size", type=int, default=8, help="examples per step (default 8)")
    p.add_argument("--repeats", type=int, default=2, help="rounds of the four runs, alternating; each figure is "
                   "its configuration's best round, which filters out a machine slowed for a while by other work "
                   "(default 2)")
    p.add_argument("--threads", type=int, default=0, help="threads per run and for the peak (default: all cores "
                   "this process may use)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS),
                   help="precisions to benchmark (default: bf16 fp32)")
    p.add_argument("--preset", default="flan-t5-small", help="model shape from minillm.models.tiny.PRESETS "
                   "(default flan-t5-small; flan-t5-base for a GPU)")
    p.add_argument("--anli", type=Path, default=REPO.parent / "shared" / "data" / "anli")
    p.add_argument("--tokenizer", type=Path, default=REPO.parent / "shared" / "tokenizers" / "flan-t5")
    # internal: one Seq2SeqTrainer run in a child process
    p.add_argument("--hf-worker", choices=PRECISIONS, help=argparse.SUPPRESS)
    for name in ("--work", "--model-dir", "--data-dir"):
        p.add_argument(name, type=Path, help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2 or not 1 <= args.warmup_steps < args.steps:
        p.error("need --steps >= 2 and 1 <= --warmup-steps < --steps")
    if args.batch_size < 1 or args.threads < 0 or args.repeats < 1:
        p.error("--batch-size and --repeats must be >= 1 and --threads >= 0")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.hf_worker:
        print(json.dumps(hf_worker(args.model_dir, args.data_dir, args.work, args.hf_worker, args.device, args.steps,
                                   args.warmup_steps, args.batch_size)))
        return

    if importlib.util.find_spec("accelerate") is None:
        fail("accelerate is missing (Seq2SeqTrainer needs it); install the benchmark pins: "
             "INSTALL_BENCH=1 bash install.sh")
    dev = args.anli / "plain_text" / "dev_r1-00000-of-00001.parquet"
    if not dev.is_file():
        fail(f"{dev} not found: --anli must be the shared ANLI folder in the Hugging Face layout")
    if not (args.tokenizer / "spiece.model").is_file():
        fail(f"{args.tokenizer}/spiece.model not found: --tokenizer must be the shared Flan-T5 tokenizer folder")
    from minillm.models.tiny import PRESETS

    if args.preset not in PRESETS:
        fail(f"--preset {args.preset}: unknown; known presets: {', '.join(PRESETS)}")

    import torch
    from step_timing import matmul_peak

    device = "cuda" if torch.cuda.is_available() else "cpu"
    threads = args.threads or len(os.sched_getaffinity(0))
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU, {threads} thread(s)"
    print(f"device: {where}; model {args.preset}, batch {args.batch_size}, {args.steps} steps "
          f"({args.warmup_steps} warm-up steps left out); attention: ours "
          f"{'eager with the CPU dropout' if device == 'cpu' else 'sdpa'} (--attn-implementation auto, "
          "--fused-kernels), Seq2SeqTrainer transformers' default (sdpa)", flush=True)
    precisions = [p for p in PRECISIONS if p in args.precisions]
    peaks = {}
    for precision in precisions:
        peaks[precision] = matmul_peak(device, threads, precision)
        print(f"{precision} matmul peak: {peaks[precision]:,.0f} GFLOP/s", flush=True)

    with tempfile.TemporaryDirectory(prefix="bench_sft_") as tmp:
        work = Path(tmp)
        data_dir = prepare_data(args.anli, args.tokenizer, work)
        model_dir = prepare_model(args.preset, args.tokenizer, work)
        results = {}
        for repeat in range(args.repeats):
            for precision in precisions:
                for name, run in (("ours", run_ours), ("HF Seq2SeqTrainer", run_hf)):
                    run_dir = work / f"run{repeat}"
                    run_dir.mkdir(exist_ok=True)
                    r = run(model_dir, data_dir, run_dir, precision, device, args, env)
                    print(f"round {repeat + 1}: {name} {precision}: {r['examples'] / r['seconds']:.2f} examples/s, "
                          f"{r['tokens'] / r['seconds']:,.0f} tokens/s", flush=True)
                    best = results.get((name, precision))
                    if best is None or r["seconds"] < best["seconds"]:  # same steps, same batches: less time wins
                        results[name, precision] = r
        flops, tokens = trained_flops(model_dir, data_dir, args)

    for precision in precisions:
        if tokens != round(results["ours", precision]["tokens"]):
            fail(f"the rebuilt batches hold {tokens} real tokens but the trainer logged "
                 f"{results['ours', precision]['tokens']:.0f} ({precision})")
    print()
    print(f"{'trainer':<20} {'precision':<10} {'examples/s':>11} {'tokens/s':>10}")
    for (name, precision), r in results.items():
        print(f"{name:<20} {precision:<10} {r['examples'] / r['seconds']:>11.2f} {r['tokens'] / r['seconds']:>10,.0f}")
    for precision in precisions:
        ours, hf = results["ours", precision], results["HF Seq2SeqTrainer", precision]
        print(f"ours / HF, {precision}: {(ours['examples'] / ours['seconds']) / (hf['examples'] / hf['seconds']):.2f}x "
              f"examples/s, {(ours['tokens'] / ours['seconds']) / (hf['tokens'] / hf['seconds']):.2f}x tokens/s")
    for precision in precisions:
        ours = results["ours", precision]
        achieved = flops / ours["seconds"] / 1e9
        print(f"our {precision} training: {flops / ours['steps'] / 1e9:.1f} GFLOP/step, {achieved:,.0f} GFLOP/s = "
              f"{achieved / peaks[precision]:.1%} of the {precision} matmul peak ({peaks[precision]:,.0f} GFLOP/s)")


if __name__ == "__main__":
    main()

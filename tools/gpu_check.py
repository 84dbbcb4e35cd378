"""GPU measurements in one call (issue 26): collectives, SFT throughput against Seq2SeqTrainer with model FLOPs
utilisation, a MiniLLM step breakdown and peak memory, each part time-boxed, all in one JSON and one table.

    bash tools/gpu_check.sh [OUT.json]                 # the wrapper: venv, offline flags, an outer time limit
    python tools/gpu_check.py [--out OUT.json] [--smoke] [--parts device nccl data sft_large minillm sft_base]
                              [--anli DIR] [--tokenizer DIR] [--synthetic-data] [--keep-work]

Offline: every model is built from its shape (minillm.models.tiny presets plus the flan-t5-large and flan-t5-xl
shapes added below) with random weights; nothing is downloaded. Data: the real ANLI R1 dev split and the Flan-T5
tokenizer when shared/ is found (``--anli``/``--tokenizer``, else ``shared/`` inside or beside the checkout),
otherwise the project's synthetic NLI set (999 examples) and a 512-piece tokenizer trained on it (``"data"`` in the
JSON says which; synthetic prompts are shorter than ANLI's ~136 tokens, so the figures are then not the goal's
measurement).

Parts, in this order (the goal-bearing ones first, so that a slow machine loses the least), each a child process in
its own process group, killed at its budget; a failed or timed-out part is recorded with its error and the next
part runs. Budgets on a GPU (seconds, 460 in all, under the 8 minutes the wrapper allows):

=========  ======  =============================================================================================
device       25    name, capability, count, bf16 support (``torch.cuda.is_bf16_supported(including_emulation=
                   False)``: bf16 when true, else fp32 everywhere below), the card's peak from PEAK_TFLOPS by name,
                   a measured matmul peak (4096 and 8192 squares)
nccl         35    ``all_reduce`` through ``torch.distributed`` (nccl on a GPU, gloo on a CPU, said in the JSON):
                   one process, and two processes when two or more GPUs are visible; sum checked, bus bandwidth of
                   a 256 MiB reduction
data         40    the processed ANLI R1 dev shards (R1 dev also serves as train_r1, as in bench_sft_throughput.py)
sft_large   160    flan-t5-large: our trainer (``python -m minillm.finetune``, ZeRO-2 JSON on CUDA) then
                   Seq2SeqTrainer (tools/bench_sft_throughput.py's worker), same weights and examples, batch 16,
                   30 steps of which the first 5 are left out; examples/s, real tokens/s, MFU, peak memory
minillm     100    MiniLLM step breakdown, flan-t5-large student, flan-t5-xl teacher (bench_minillm_step.py's loop,
                   on the GPU with synchronised timers): sampling, teacher scoring, student forward/backward,
                   optimizer, other; the trainer's bf16 optimizer (fp32 master weights) or its fp32 one
sft_base    100    as sft_large for flan-t5-base
=========  ======  =============================================================================================

MFU: model FLOPs of our steady-state steps, counted per layer from the shapes and each batch's real lengths
(``bench_sft_throughput.forward_flops``: every matmul of T5's encoder and decoder layers, attention scores and
values, the output layer; training = 3 x forward), divided by the time and by the card's dense peak in the precision
run (PEAK_TFLOPS; also against the measured matmul peak). Seq2SeqTrainer's batches differ (its own length grouping),
so its FLOPs are ours per real token times its real tokens. ``6 x parameters x real tokens`` is reported beside it
as a cross-check: it overcounts an encoder-decoder (each token passes through one stack, not both).

Peak memory: ``torch.cuda.max_memory_allocated`` in each training process (ours through a wrapper that runs
``minillm.finetune`` in-process and reads it at exit), against tools/plan_memory.py's ``plan()["peak"]`` (allocated
bytes, before its context and fragmentation allowance) for the same recipe when that tool can be imported
(:func:`memory_plan`, the hook).

Goals (issue 26), judged in the table and in ``goals`` of the JSON: ours >= 1.3x Seq2SeqTrainer's real tokens/s on
flan-t5-large; >= 45 % MFU in bf16 on an H100-class card (H100, H200) for flan-t5-large; MiniLLM's "other" under
10 % of a step. A goal reads "n/a" where it cannot be judged (another card, fp32, a failed part).

``--smoke``: the same parts with tiny shapes on whatever device there is (tiny-student for both SFT parts, the tiny
presets for MiniLLM, 3 steps), for tests/test_gpu_check.py.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Dense peak TFLOP/s (no sparsity) by precision, matched against torch.cuda.get_device_name() in this order. V100
# has no bf16: its 16-bit figure is fp16 (not used: bf16 is off there). fp32 is the non-tensor-core rate (torch's
# matmuls do not use TF32 unless asked). H200 has H100 SXM's compute.
PEAK_TFLOPS = (
    ("H200", {"bf16": 989.0, "fp32": 67.0}),
    ("H100 PCIe", {"bf16": 756.0, "fp32": 51.0}),
    ("H100 NVL", {"bf16": 835.0, "fp32": 60.0}),
    ("H100", {"bf16": 989.0, "fp32": 67.0}),  # SXM ("NVIDIA H100 80GB HBM3")
    ("A100", {"bf16": 312.0, "fp32": 19.5}),
    ("V100", {"fp16": 125.0, "fp32": 15.7}),
)
H100_CLASS = ("H100", "H200")

# The real Flan-T5 shapes the presets of minillm.models.tiny stop short of (as in tools/plan_memory.py's MODELS).
EXTRA_PRESETS = {
    "flan-t5-large": dict(d_model=1024, d_ff=2816, num_layers=24, num_decoder_layers=24, num_heads=16, d_kv=64,
                          dropout_rate=0.1),
    "flan-t5-xl": dict(d_model=2048, d_ff=5120, num_layers=24, num_decoder_layers=24, num_heads=32, d_kv=64,
                       dropout_rate=0.1),
}
FLAN_VOCAB = 32128

PART_ORDER = ("device", "nccl", "data", "sft_large", "minillm", "sft_base")
BUDGETS_S = {"device": 25, "nccl": 35, "data": 40, "sft_large": 160, "minillm": 100, "sft_base": 100}  # 460 s
SMOKE_BUDGETS_S = {"device": 60, "nccl": 60, "data": 90, "sft_large": 150, "minillm": 90, "sft_base": 150}

GOAL_SFT_RATIO = 1.3
GOAL_MFU = 0.45
GOAL_OTHER = 0.10


def settings(smoke: bool) -> dict:
    """The shapes and lengths of every part (recorded in the JSON)."""
    if smoke:
        return {"sft": {"sft_base": "tiny-student", "sft_large": "tiny-student"}, "sft_batch_size": 4,
                "sft_steps": 3, "sft_warmup_steps": 1,
                "minillm": dict(student="tiny-student", teacher="tiny-teacher", vocab_size=512, num_rollouts=8,
                                chunk_size=4, batch_size=4, ppo_epochs=1, prompt_length=16, max_new_tokens=4,
                                cycles=1, teacher_mixed_alpha=0.2),
                "matmul_sizes": [256], "matmul_repeats": 3, "allreduce_mib": 4}
    return {"sft": {"sft_base": "flan-t5-base", "sft_large": "flan-t5-large"}, "sft_batch_size": 16,
            "sft_steps": 30, "sft_warmup_steps": 5,
            # t5-scripts/minillm/train_large_xl.sh: 256 rollouts over 8 GPUs, 4 PPO epochs, 64 new tokens, alpha
            # 0.2; here 64 rollouts sampled 32 at a time, micro-batches of 16 (4 optimizer steps per PPO epoch)
            "minillm": dict(student="flan-t5-large", teacher="flan-t5-xl", vocab_size=FLAN_VOCAB, num_rollouts=64,
                            chunk_size=32, batch_size=16, ppo_epochs=4, prompt_length=136, max_new_tokens=64,
                            cycles=2, teacher_mixed_alpha=0.2),
            "matmul_sizes": [4096, 8192], "matmul_repeats": 10, "allreduce_mib": 256}


def register_presets() -> None:
    from minillm.models import tiny

    for name, shape in EXTRA_PRESETS.items():
        tiny.PRESETS.setdefault(name, {**tiny._FLAN_T5_STYLE, **shape})


def write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    tmp.replace(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(threads: int) -> dict:
    return dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
                TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def card_peak(name: str) -> tuple[str | None, dict | None]:
    for key, peaks in PEAK_TFLOPS:
        if key.lower() in name.lower():
            return key, peaks
    return None, None


def training_precision() -> str:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False):
        return "bf16"
    return "fp32"


def sync() -> None:
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def peak_memory() -> dict | None:
    import torch

    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return None
    return {"max_memory_allocated": torch.cuda.max_memory_allocated(),
            "max_memory_reserved": torch.cuda.max_memory_reserved()}


# ============================================================================================ memory plan hook

def memory_plan(**recipe) -> dict:
    """The hook to tools/plan_memory.py: its estimate for ``recipe`` (keyword arguments of ``plan_memory.Recipe``)
    as ``{"status": "ok", "estimate_bytes": plan()["peak"], ...}``, or ``{"status": "unavailable" | "failed",
    "error": ...}``. Shapes it does not know (the tiny presets) are registered from minillm.models.tiny first."""
    try:
        import plan_memory
    except Exception as error:  # not written yet, or broken: the measurement stands alone
        return {"status": "unavailable", "error": f"tools/plan_memory.py not importable: {error!r}"}
    try:
        from minillm.models import tiny

        vocab = recipe.pop("vocab_size", FLAN_VOCAB)
        for key in ("student", "teacher"):
            name = recipe.get(key)
            if name and name not in plan_memory.MODELS:
                shape = {k: v for k, v in tiny.PRESETS[name].items()
                         if k in ("d_model", "d_ff", "num_layers", "num_decoder_layers", "num_heads", "d_kv",
                                  "dropout_rate")}
                plan_memory.MODELS[name] = dict(plan_memory.T5_COMMON, **shape, vocab_size=vocab)
        result = plan_memory.plan(plan_memory.Recipe(**recipe))
        return {"status": "ok", "estimate_bytes": float(result["peak"]), "train_phase_bytes": float(result["train_phase"]),
                "collect_phase_bytes": float(result["collect_phase"]),
                "components_bytes": {k: float(v) for k, v in result["components"].items()},
                "recipe": {k: v for k, v in recipe.items() if k != "ds_config"},
                "note": "plan()['peak']: allocated bytes before its context and fragmentation allowance"}
    except Exception as error:
        return {"status": "failed", "error": f"{type(error).__name__}: {error}"}


def compare_memory(measured: dict | None, plan: dict) -> dict:
    out = {"measured": measured, "plan": plan}
    if measured and measured.get("max_memory_allocated") and plan.get("status") == "ok" and plan["estimate_bytes"] > 0:
        out["measured_over_estimate"] = measured["max_memory_allocated"] / plan["estimate_bytes"]
    return out


# ============================================================================================ parts (children)

def part_device(cfg: dict, result: dict, result_path: Path) -> None:
    import torch

    result.update(torch=torch.__version__, torch_cuda=torch.version.cuda, cuda_available=torch.cuda.is_available())
    if not torch.cuda.is_available():
        result.update(device="cpu", name=f"CPU ({len(os.sched_getaffinity(0))} cores available)", gpu_count=0,
                      precision="fp32", peak_tflops_table=None)
        write_json(result_path, result)
        device = "cpu"
    else:
        name = torch.cuda.get_device_name(0)
        key, peaks = card_peak(name)
        result.update(device="cuda", name=name, gpu_count=torch.cuda.device_count(),
                      capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                      memory_bytes=torch.cuda.get_device_properties(0).total_memory,
                      bf16_supported=torch.cuda.is_bf16_supported(including_emulation=False),
                      precision=training_precision(), peak_table_key=key, peak_tflops_table=peaks,
                      h100_class=any(k in name for k in H100_CLASS))
        try:
            version = torch.cuda.nccl.version()
            result["nccl_version"] = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
        except Exception as error:  # recorded, not fatal: the nccl part tests the library itself
            result["nccl_version"] = f"unknown ({error!r})"
        write_json(result_path, result)
        device = "cuda"
    dtype = torch.bfloat16 if result["precision"] == "bf16" else torch.float32
    best = 0.0
    for n in cfg["matmul_sizes"]:
        a = torch.randn(n, n, dtype=dtype, device=device)
        b = torch.randn(n, n, dtype=dtype, device=device)
        a @ b
        sync()
        for _ in range(cfg["matmul_repeats"]):
            start = time.perf_counter()
            a @ b
            sync()
            best = max(best, 2 * n**3 / (time.perf_counter() - start) / 1e12)
    result["measured_matmul_tflops"] = best
    result["measured_matmul_precision"] = result["precision"]


def _allreduce_worker(rank: int, world: int, port: int, backend: str, mib: int, out: str) -> None:
    import datetime

    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    device = torch.device("cuda", rank) if backend == "nccl" else torch.device("cpu")
    kwargs = {"device_id": device} if backend == "nccl" else {}
    if backend == "nccl":
        torch.cuda.set_device(device)
    start = time.perf_counter()
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60), **kwargs)
    init_s = time.perf_counter() - start
    x = torch.full((1024,), float(rank + 1), device=device)
    dist.all_reduce(x)
    expected = world * (world + 1) / 2
    correct = bool(torch.all(x == expected).item())
    big = torch.ones(mib * 2**20 // 4, device=device)
    dist.all_reduce(big)  # warm-up (NCCL builds its rings on first use)
    sync()
    times = []
    for _ in range(5):
        dist.barrier()
        t = time.perf_counter()
        dist.all_reduce(big)
        sync()
        times.append(time.perf_counter() - t)
    dist.barrier()
    dist.destroy_process_group()
    if rank == 0:
        seconds = min(times)
        size = big.numel() * 4
        # nccl-tests' bus bandwidth: algorithm bandwidth x 2 (n - 1) / n (0 for one process: nothing moves)
        Path(out).write_text(json.dumps({
            "world_size": world, "backend": backend, "sum_correct": correct, "init_s": init_s,
            "allreduce_bytes": size, "allreduce_best_s": seconds, "algbw_gb_s": size / seconds / 1e9,
            "busbw_gb_s": size / seconds / 1e9 * 2 * (world - 1) / world}))


def part_nccl(cfg: dict, result: dict, result_path: Path) -> None:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = "nccl" if gpus else "gloo"
    result.update(backend=backend, gpus_visible=gpus, runs=[])
    if not gpus:
        result["note"] = "no GPU: gloo on the CPU, not an NCCL check"
    worlds = [1, 2] if gpus >= 2 else [1]
    if gpus < 2:
        result["two_process"] = "skipped: fewer than 2 GPUs visible"
    for world in worlds:
        out = result_path.with_name(f"allreduce_{world}.json")
        port = free_port()
        try:
            if world == 1:
                _allreduce_worker(0, 1, port, backend, cfg["allreduce_mib"], str(out))
            else:
                import torch.multiprocessing as mp

                mp.spawn(_allreduce_worker, args=(world, port, backend, cfg["allreduce_mib"], str(out)),
                         nprocs=world, join=True)
            result["runs"].append(json.loads(out.read_text()))
        except Exception as error:
            result["runs"].append({"world_size": world, "backend": backend, "error": f"{type(error).__name__}: {error}"})
        write_json(result_path, result)
    failed = [r for r in result["runs"] if not r.get("sum_correct")]
    if failed:
        raise RuntimeError(f"all_reduce failed or summed wrong in world size(s) {[r['world_size'] for r in failed]}")


def part_data(args, result: dict, result_path: Path) -> None:
    """R1 dev through the project's pipeline (as bench_sft_throughput.prepare_data), from shared/ or synthetic."""
    import bench_sft_throughput as bench
    from minillm.data.process import build_shards
    from minillm.data.seq2seq import Seq2SeqExamples

    work = args.work / "data"
    work.mkdir(parents=True, exist_ok=True)
    anli, tokenizer = find_shared(args)
    if anli and tokenizer and not args.synthetic_data:
        dev = anli / "plain_text" / "dev_r1-00000-of-00001.parquet"
        result.update(source=f"ANLI R1 dev ({anli}), Flan-T5 tokenizer ({tokenizer})", anli=str(anli),
                      tokenizer=str(tokenizer))
    else:
        from minillm.data.synthetic import generate, write_hf_layout

        why = "--synthetic-data" if args.synthetic_data else "shared ANLI data or Flan-T5 tokenizer not found"
        write_hf_layout(generate(seed=0, train_per_round=0, dev_per_round=999, test_per_round=0), work / "synthetic")
        dev = work / "synthetic" / "plain_text" / "dev_r1-00000-of-00001.parquet"
        tokenizer = None
        result.update(source=f"synthetic NLI ({why}): 999 examples, a 512-piece tokenizer trained on them; prompts "
                      "shorter than ANLI's, so the figures are not the goal's measurement")
    out = bench.dev_as_train_text(dev, work)
    if tokenizer is None:
        from minillm.models.tiny import train_tokenizer

        records = [json.loads(line) for line in (out / "text" / "r1" / "train.jsonl").read_text().splitlines()]
        tokenizer = work / "tokenizer"
        train_tokenizer([r["prompt"] + "\n" + r["target"] for r in records], tokenizer, vocab_size=512)
        result["tokenizer"] = str(tokenizer)
    build_shards(out, str(tokenizer))
    examples = Seq2SeqExamples(out, "r1", "train")
    targets = [len(examples[i][1]) for i in range(len(examples))]
    result.update(data_dir=str(out), tokenizer_dir=str(tokenizer), examples=len(examples),
                  prompt_tokens_mean=float(examples.prompt_lengths.mean()),
                  prompt_tokens_max=int(examples.prompt_lengths.max()), target_tokens_max=max(targets))


def find_shared(args) -> tuple[Path | None, Path | None]:
    def first(candidates, marker):
        for c in candidates:
            if c and (Path(c) / marker).is_file():
                return Path(c)
        return None

    anli = first([args.anli, REPO / "shared" / "data" / "anli", REPO.parent / "shared" / "data" / "anli"],
                 "plain_text/dev_r1-00000-of-00001.parquet")
    tok = first([args.tokenizer, REPO / "shared" / "tokenizers" / "flan-t5", REPO.parent / "shared" / "tokenizers" /
                 "flan-t5"], "spiece.model")
    return anli, tok


def _run_timed(command: list[str], env: dict, deadline: float) -> subprocess.CompletedProcess:
    remaining = deadline - time.monotonic()
    if remaining <= 1:
        raise TimeoutError("no time left in this part's budget")
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=remaining)


def _tail(done: subprocess.CompletedProcess) -> str:
    lines = (done.stderr or "").strip().splitlines() + (done.stdout or "").strip().splitlines()[-3:]
    return "\n".join(lines[-12:])


def part_sft(args, cfg: dict, part: str, result: dict, result_path: Path, deadline: float) -> None:
    data_file = args.work / "data.json"
    data = json.loads(data_file.read_text()) if data_file.is_file() else {}
    if data.get("status") != "ok":
        raise RuntimeError("the data part did not complete: nothing to train on")
    data = data["result"]

    import torch
    import bench_sft_throughput as bench
    from transformers import AutoTokenizer
    from transformers.utils.logging import disable_progress_bar

    from minillm.models.tiny import build_model, count_parameters, model_vocab_size, save_checkpoint

    register_presets()
    disable_progress_bar()
    data_dir, tokenizer_dir = Path(data["data_dir"]), Path(data["tokenizer_dir"])
    preset = cfg["sft"][part]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = training_precision()
    B, steps, warmup = cfg["sft_batch_size"], cfg["sft_steps"], cfg["sft_warmup_steps"]
    result.update(preset=preset, device=device, precision=precision, batch_size=B, steps=steps, warmup_steps=warmup,
                  data=data["source"])
    write_json(result_path, result)

    # the model, built on the GPU when there is one (a random init of 780 M parameters is slow on a CPU)
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    vocab = FLAN_VOCAB if preset.startswith("flan-t5") else model_vocab_size(tokenizer)
    with torch.device(device):
        model = build_model(preset, vocab, seed=0)
    result["parameters"] = count_parameters(model)
    model_dir = save_checkpoint(model.cpu(), tokenizer, args.work / f"model_{part}")
    del model
    if device == "cuda":
        torch.cuda.empty_cache()
    env = child_env(args.threads)
    stage = "2" if device == "cuda" else "0"
    ds_config = REPO / "configs" / "deepspeed" / f"zero{stage}_{precision}.json"
    runs = result.setdefault("runs", {})

    # ours: minillm.finetune in a process that reports its peak memory at exit
    save_dir = args.work / f"ours_{part}"
    mem_file = args.work / f"ours_{part}_memory.json"
    command = [sys.executable, __file__, "--run-module", "minillm.finetune", "--memory-out", str(mem_file), "--",
               "--model-path", str(model_dir), "--data-dir", str(data_dir), "--save-dir", str(save_dir),
               "--deepspeed-config", str(ds_config), "--train-round", "r1", "--batch-size", str(B),
               "--max-steps", str(steps), "--lr", str(bench.LR), "--weight-decay", str(bench.WEIGHT_DECAY),
               "--scheduler", "constant", "--seed", str(bench.SEED), "--log-interval", "1",
               "--eval-interval", str(10**9), "--eval-rounds", "r1", "--eval-max-examples", str(B),
               "--eval-batch-size", str(B), "--no-eval-generate"]
    try:
        done = _run_timed(command, env, deadline)
        if done.returncode != 0:
            runs["ours"] = {"status": "failed", "error": _tail(done)}
        else:
            lines = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
            steady = [r for r in lines if "tokens_per_s" in r and r["step"] > warmup]
            seconds = sum(1.0 / r["steps_per_s"] for r in steady)
            runs["ours"] = {"status": "ok", "steps": len(steady), "seconds": seconds,
                            "examples": sum(r["examples_per_s"] / r["steps_per_s"] for r in steady),
                            "tokens": sum(r["tokens_per_s"] / r["steps_per_s"] for r in steady),
                            "memory": json.loads(mem_file.read_text()) if mem_file.is_file() else None,
                            "deepspeed_config": ds_config.name}
    except (subprocess.TimeoutExpired, TimeoutError) as error:
        runs["ours"] = {"status": "timeout", "error": str(error)}
    write_json(result_path, result)

    # Seq2SeqTrainer: bench_sft_throughput's worker, same weights, same examples
    command = [sys.executable, __file__, "--hf-worker", precision, "--work", str(args.work / f"hf_{part}"),
               "--model-dir", str(model_dir), "--data-dir", str(data_dir), "--device", device,
               "--steps", str(steps), "--warmup-steps", str(warmup), "--batch-size", str(B)]
    (args.work / f"hf_{part}").mkdir(exist_ok=True)
    try:
        done = _run_timed(command, env, deadline)
        if done.returncode != 0:
            runs["hf"] = {"status": "failed", "error": _tail(done)}
        else:
            runs["hf"] = {"status": "ok", **json.loads(done.stdout.strip().splitlines()[-1])}
    except (subprocess.TimeoutExpired, TimeoutError) as error:
        runs["hf"] = {"status": "timeout", "error": str(error)}
    write_json(result_path, result)

    for r in runs.values():
        if r["status"] == "ok":
            r["examples_per_s"] = r["examples"] / r["seconds"]
            r["tokens_per_s"] = r["tokens"] / r["seconds"]
    if runs["ours"]["status"] == "ok" and runs["hf"]["status"] == "ok":
        result["ratio_examples_per_s"] = runs["ours"]["examples_per_s"] / runs["hf"]["examples_per_s"]
        result["ratio_tokens_per_s"] = runs["ours"]["tokens_per_s"] / runs["hf"]["tokens_per_s"]

    # model FLOPs of our steady-state steps (per-layer count from the rebuilt batches), and MFU
    if runs["ours"]["status"] == "ok":
        flops, tokens = bench.trained_flops(model_dir, data_dir, argparse.Namespace(
            warmup_steps=warmup, steps=steps, batch_size=B))
        ours = runs["ours"]
        device_file = args.work / "device.json"
        device_info = json.loads(device_file.read_text()).get("result", {}) if device_file.is_file() else {}
        table = (device_info.get("peak_tflops_table") or {}).get(precision)
        measured = device_info.get("measured_matmul_tflops") if device_info.get("measured_matmul_precision") == \
            precision else None
        per_token = flops / tokens
        result["flops"] = {
            "formula": "per-layer matmul count of T5 (bench_sft_throughput.forward_flops) x 3 for training, over "
                       "the real prompt and target tokens of each example",
            "ours_flops": flops, "ours_tokens": tokens, "tokens_match_trainer_log": tokens == round(ours["tokens"]),
            "ours_tflops_per_s": flops / ours["seconds"] / 1e12,
            "six_n_d_flops": 6 * result["parameters"] * tokens,
            "peak_tflops_table": table, "peak_tflops_measured": measured}
        result["mfu"] = flops / ours["seconds"] / 1e12 / table if table else None
        result["mfu_of_measured_peak"] = flops / ours["seconds"] / 1e12 / measured if measured else None
        if runs["hf"]["status"] == "ok":
            hf = runs["hf"]
            result["flops"]["hf_flops_estimate"] = per_token * hf["tokens"]
            result["mfu_hf"] = per_token * hf["tokens"] / hf["seconds"] / 1e12 / table if table else None
    # peak memory against the plan
    if runs["ours"]["status"] == "ok":
        recipe = dict(student=preset, objective="sft", stage=int(stage), precision=precision, micro_batch=B,
                      prompt_length=data["prompt_tokens_max"], target_length=data["target_tokens_max"],
                      world_size=1, ds_config=json.loads(ds_config.read_text()), vocab_size=vocab)
        result["memory"] = compare_memory(runs["ours"].get("memory"), memory_plan(**recipe))
    if runs["hf"]["status"] == "ok":
        result["memory_hf"] = {"measured": runs["hf"].get("memory"),
                               "note": "Seq2SeqTrainer: fp32 weights, gradients and AdamW states, bf16 autocast"}
    bad = {name: r["status"] for name, r in runs.items() if r["status"] != "ok"}
    if bad:
        raise RuntimeError(f"run(s) not completed: {bad}")


def part_minillm(args, cfg: dict, result: dict, result_path: Path) -> None:
    """tools/bench_minillm_step.py's cycle on the device there is, with synchronised timers and the trainer's
    optimizer for the precision (bf16: fp32 master weights; fp32: the clipped fused AdamW)."""
    import numpy as np
    import torch

    from minillm.engine.clipped_adamw import ClippedAdamW
    from minillm.engine.master_weights import BF16MasterWeightAdamW
    from minillm.models.fused import fuse_elementwise
    from minillm.models.tiny import build_model, count_parameters
    from step_timing import MiniLLMCycles, minillm_settings

    register_presets()
    m = cfg["minillm"]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision = training_precision()
    result.update(config=m, device=device.type, precision=precision)
    write_json(result_path, result)
    with torch.device(device):
        student = build_model(m["student"], m["vocab_size"], seed=0)
        teacher = build_model(m["teacher"], m["vocab_size"], seed=1)
    teacher = teacher.to(torch.bfloat16 if precision == "bf16" else torch.float32).requires_grad_(False)
    for model in (student, teacher):
        if device.type == "cuda":
            model.set_attn_implementation("sdpa")  # what Seq2SeqAdapter.load's "auto" picks on a GPU
        fuse_elementwise(model, cpu=device.type == "cpu")
    student.eval()  # MiniLLM samples and trains without dropout
    result.update(student_parameters=count_parameters(student), teacher_parameters=count_parameters(teacher))
    groups = [{"params": [p for p in student.parameters()], "weight_decay": 0.0}]
    if precision == "bf16":
        optimizer = BF16MasterWeightAdamW(groups, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, max_grad_norm=1.0)
        result["optimizer"] = "BF16MasterWeightAdamW (the trainer's bf16 stage-0 optimizer: fp32 masters)"
    else:
        optimizer = ClippedAdamW(groups, lr=1e-6, betas=(0.9, 0.999), eps=1e-8, max_grad_norm=1.0)
        result["optimizer"] = "ClippedAdamW (the trainer's fp32 stage-0 optimizer)"
    objective_settings = minillm_settings(num_rollouts=m["num_rollouts"], chunk_size=m["chunk_size"],
                                          ppo_epochs=m["ppo_epochs"], batch_size=m["batch_size"],
                                          max_new_tokens=m["max_new_tokens"], alpha=m["teacher_mixed_alpha"])
    rng = np.random.default_rng(0)
    prompts = [rng.integers(2, m["vocab_size"], m["prompt_length"]) for _ in range(4 * m["num_rollouts"])]
    cycles = MiniLLMCycles(student, teacher, optimizer, prompts, objective_settings, device, sync=sync)
    steps = cycles.steps

    t0 = time.perf_counter()
    cycles.run(0)  # warm-up
    result["warmup_cycle_s"] = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # the build's fp32 student is gone; the steady state from here
    mean, breakdown = MiniLLMCycles.breakdown([cycles.run(i) for i in range(1, m["cycles"] + 1)])
    result.update(optimizer_steps_per_cycle=steps, cycle_s=mean["total"], step_s=mean["total"] / steps,
                  breakdown_s=breakdown, shares={k: v / mean["total"] for k, v in breakdown.items()},
                  teacher_encoder_calls=cycles.encoder.calls, teacher_decoder_calls=cycles.decoder.calls,
                  note="one cycle = one collection of num_rollouts + ppo_epochs passes of micro-batches, one "
                       "optimizer step each; a step's shares are the cycle's (random models rarely emit EOS: every "
                       "rollout runs to max_new_tokens)")
    recipe = dict(student=m["student"], teacher=m["teacher"], objective="minillm", stage=0, precision=precision,
                  micro_batch=m["batch_size"], prompt_length=m["prompt_length"], rollout_length=m["max_new_tokens"],
                  num_rollouts=m["num_rollouts"], chunk_size=m["chunk_size"], world_size=1, dropout=0.0,
                  vocab_size=m["vocab_size"])
    result["memory"] = compare_memory(peak_memory(), memory_plan(**recipe))


def run_part_child(args) -> int:
    """One part, in this (child) process: its result file is written as it goes, so a part killed at its budget
    still leaves what it measured."""
    cfg = settings(args.smoke)
    path = args.work / f"{args.part}.result.json"
    result: dict = {}
    deadline = time.monotonic() + args.budget - 2
    try:
        if args.part == "device":
            part_device(cfg, result, path)
        elif args.part == "nccl":
            part_nccl(cfg, result, path)
        elif args.part == "data":
            part_data(args, result, path)
        elif args.part in ("sft_base", "sft_large"):
            part_sft(args, cfg, args.part, result, path, deadline)
        elif args.part == "minillm":
            part_minillm(args, cfg, result, path)
    finally:
        write_json(path, result)
    return 0


# ============================================================================================ helpers (children)

def run_module_with_memory(module: str, memory_out: Path, argv: list[str]) -> None:
    """``python -m module argv`` in this process, then its CUDA peak memory into ``memory_out``."""
    import runpy

    sys.argv = [module] + argv
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        memory = peak_memory()
        write_json(memory_out, memory if memory else {"max_memory_allocated": None, "note": "no CUDA"})


def hf_worker_with_memory(args) -> None:
    import bench_sft_throughput as bench

    out = bench.hf_worker(args.model_dir, args.data_dir, args.work, args.hf_worker, args.device, args.steps,
                          args.warmup_steps, args.batch_size)
    out["memory"] = peak_memory()
    print(json.dumps(out))


# ============================================================================================ parent

class OuterLimit(Exception):
    """SIGTERM from gpu_check.sh's outer ``timeout``: stop the running part's process group and write what there is."""


def _on_sigterm(signum, frame):
    raise OuterLimit()


def run_part(args, part: str, budget: float, out_json: Path) -> dict:
    result_path = args.work / f"{part}.result.json"
    command = [sys.executable, __file__, "--part", part, "--work", str(args.work), "--budget", str(budget),
               "--threads", str(args.threads)] + (["--smoke"] if args.smoke else []) + \
        (["--synthetic-data"] if args.synthetic_data else []) + \
        (["--anli", str(args.anli)] if args.anli else []) + (["--tokenizer", str(args.tokenizer)] if args.tokenizer else [])
    log = args.work / f"{part}.log"
    start = time.monotonic()
    with open(log, "w") as handle:
        proc = subprocess.Popen(command, env=child_env(args.threads), cwd=REPO, stdout=handle, stderr=subprocess.STDOUT,
                                start_new_session=True)
        outer = False
        try:
            rc = proc.wait(timeout=budget)
            status = "ok" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            rc, status = None, "timeout"
        except OuterLimit:
            rc, status, outer = None, "killed", True
    try:  # the part on timeout, or whatever its process group left behind
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    seconds = time.monotonic() - start
    result = json.loads(result_path.read_text()) if result_path.is_file() else {}
    entry = {"status": status, "seconds": round(seconds, 1), "budget_s": budget, "returncode": rc, "result": result}
    if status != "ok":
        text = log.read_text(errors="replace").strip().splitlines()
        entry["error"] = "\n".join(text[-15:]) if text else f"{status} with no output"
        if status == "timeout":
            entry["error"] = f"killed at its budget of {budget} s; last output:\n" + entry["error"]
        if outer:
            entry["error"] = "stopped by the outer time limit (gpu_check.sh); last output:\n" + entry["error"]
    write_json(args.work / f"{part}.json", entry)
    if outer:
        raise OuterLimit(entry)
    return entry


def judge_goals(parts: dict) -> list[dict]:
    def get(part, *keys):
        value = parts.get(part, {}).get("result", {})
        for k in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(k)
        return value

    device = parts.get("device", {}).get("result", {})
    goals = []
    ratio = get("sft_large", "ratio_tokens_per_s")
    goals.append({"goal": f"SFT flan-t5-large: ours >= {GOAL_SFT_RATIO}x Seq2SeqTrainer (real tokens/s)",
                  "value": ratio, "threshold": GOAL_SFT_RATIO,
                  "status": "n/a (not measured)" if ratio is None else ("pass" if ratio >= GOAL_SFT_RATIO else "fail")})
    mfu = get("sft_large", "mfu")
    precision = get("sft_large", "precision")
    if mfu is None:
        status = "n/a (not measured, or the card is not in the peak table)"
    elif not device.get("h100_class") or precision != "bf16":
        status = f"n/a (needs bf16 on an H100-class card; ran {precision} on {device.get('name')})"
    else:
        status = "pass" if mfu >= GOAL_MFU else "fail"
    goals.append({"goal": f"SFT flan-t5-large: >= {GOAL_MFU:.0%} MFU in bf16 on an H100-class card",
                  "value": mfu, "threshold": GOAL_MFU, "status": status})
    other = get("minillm", "shares", "other")
    goals.append({"goal": f"MiniLLM: 'other' < {GOAL_OTHER:.0%} of a step", "value": other, "threshold": GOAL_OTHER,
                  "status": "n/a (not measured)" if other is None else ("pass" if other < GOAL_OTHER else "fail")})
    if get("sft_large", "preset") and not str(get("sft_large", "preset")).startswith("flan-t5"):
        for g in goals[:2]:
            g["status"] = f"n/a (smoke shapes, not flan-t5-large; would read: {g['status']})"
    return goals


def fmt(value, kind: str = "") -> str:
    if value is None:
        return "-"
    if kind == "pct":
        return f"{100 * value:.1f} %"
    if kind == "x":
        return f"{value:.2f}x"
    if kind == "gib":
        return f"{value / 2**30:.2f} GiB"
    return f"{value:,.2f}" if isinstance(value, float) else str(value)


def print_table(report: dict) -> None:
    parts = report["parts"]
    dev = parts.get("device", {}).get("result", {})
    print(f"\ngpu_check: {dev.get('name', '?')} ({dev.get('device', '?')}, {dev.get('gpu_count', '?')} GPU(s), "
          f"precision {dev.get('precision', '?')}, peak table {dev.get('peak_tflops_table')}, measured matmul "
          f"{fmt(dev.get('measured_matmul_tflops'))} TFLOP/s); data: {parts.get('data', {}).get('result', {}).get('source', '-')}")
    print(f"\n{'part':<11} {'status':<8} {'s':>6} {'budget':>6}  summary")
    for name in report["part_order"]:
        e = parts.get(name)
        if e is None:
            print(f"{name:<11} {'skipped':<8}")
            continue
        r = e.get("result", {})
        summary = ""
        if name == "nccl":
            summary = "; ".join(f"{x.get('backend')} x{x.get('world_size')}: "
                                + ("sum ok" if x.get("sum_correct") else f"FAILED {x.get('error', '')[:60]}")
                                + (f", busbw {x['busbw_gb_s']:.1f} GB/s" if x.get("world_size", 1) > 1 and
                                   "busbw_gb_s" in x else "") for x in r.get("runs", []))
        elif name.startswith("sft") and r:
            runs = r.get("runs", {})
            o, h = runs.get("ours", {}), runs.get("hf", {})
            mem = (r.get("memory") or {})
            measured = (mem.get("measured") or {}).get("max_memory_allocated")
            plan = (mem.get("plan") or {})
            summary = (f"{r.get('preset')} {r.get('precision')} b{r.get('batch_size')}: ours "
                       f"{fmt(o.get('tokens_per_s'))} tok/s [{o.get('status')}], HF {fmt(h.get('tokens_per_s'))} "
                       f"tok/s [{h.get('status')}], {fmt(r.get('ratio_tokens_per_s'), 'x')}; MFU "
                       f"{fmt(r.get('mfu'), 'pct')} (HF {fmt(r.get('mfu_hf'), 'pct')}); peak mem ours "
                       f"{fmt(measured, 'gib')} vs plan {fmt(plan.get('estimate_bytes'), 'gib')} "
                       f"[{plan.get('status', '-')}], HF {fmt(((r.get('memory_hf') or {}).get('measured') or {}).get('max_memory_allocated'), 'gib')}")
        elif name == "minillm" and r.get("shares"):
            s = r["shares"]
            mem = r.get("memory") or {}
            summary = (f"{r['config']['student']} <- {r['config']['teacher']}: step {r['step_s']:.3f} s; sampling "
                       f"{fmt(s['sampling'], 'pct')}, teacher {fmt(s['teacher_scoring'], 'pct')}, fwd/bwd "
                       f"{fmt(s['student_forward_backward'], 'pct')}, optimizer {fmt(s['optimizer'], 'pct')}, other "
                       f"{fmt(s['other'], 'pct')}; peak mem {fmt((mem.get('measured') or {}).get('max_memory_allocated'), 'gib')}"
                       f" vs plan {fmt((mem.get('plan') or {}).get('estimate_bytes'), 'gib')}")
        elif name == "device":
            summary = f"torch {r.get('torch')}, CUDA {r.get('torch_cuda')}, NCCL {r.get('nccl_version', '-')}"
        elif name == "data" and r:
            summary = f"{r.get('examples')} examples, prompt mean {fmt(r.get('prompt_tokens_mean'))} tokens"
        if e["status"] != "ok":
            summary = (summary + " | " if summary else "") + (e.get("error") or "").splitlines()[-1][:160] \
                if e.get("error") else summary
        print(f"{name:<11} {e['status']:<8} {e['seconds']:>6.1f} {e['budget_s']:>6}  {summary}")
    print(f"\n{'goal (issue 26)':<62} {'value':>9}  status")
    for g in report["goals"]:
        kind = "x" if "x Seq2Seq" in g["goal"] else "pct"
        print(f"{g['goal']:<62} {fmt(g['value'], kind):>9}  {g['status']}")
    print(f"\ntotal {report['total_s']:.1f} s; JSON: {report['out']}")


def main_parent(args) -> int:
    start = time.monotonic()
    out = args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json"
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    budgets = dict(SMOKE_BUDGETS_S if args.smoke else BUDGETS_S)
    for item in args.budgets:
        name, _, seconds = item.partition("=")
        if name not in budgets or not seconds:
            sys.exit(f"gpu_check: --budgets {item}: expected PART=SECONDS with PART one of {', '.join(budgets)}")
        budgets[name] = float(seconds)
    own_work = args.work is None
    args.work = Path(tempfile.mkdtemp(prefix="gpu_check_")) if own_work else args.work
    args.work.mkdir(parents=True, exist_ok=True)
    order = [p for p in PART_ORDER if p in args.parts]
    report = {"schema": 1, "tool": "tools/gpu_check.py", "smoke": args.smoke, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "budgets_s": {p: budgets[p] for p in order}, "settings": settings(args.smoke), "part_order": order,
              "goals_definition": {"sft_tokens_ratio_min": GOAL_SFT_RATIO, "mfu_bf16_h100_min": GOAL_MFU,
                                   "minillm_other_share_max": GOAL_OTHER},
              "peak_tflops_table": {k: v for k, v in PEAK_TFLOPS}, "parts": {}, "out": str(out)}
    signal.signal(signal.SIGTERM, _on_sigterm)
    rc = 0
    try:
        for part in order:
            print(f"gpu_check: {part} (budget {budgets[part]} s) ...", flush=True)
            try:
                entry = run_part(args, part, budgets[part], out)
            except OuterLimit as stop:
                report["parts"][part] = stop.args[0] if stop.args else {"status": "killed", "seconds": 0,
                                                                        "budget_s": budgets[part], "result": {}}
                rc = 124
                break
            report["parts"][part] = entry
            print(f"gpu_check: {part}: {entry['status']} in {entry['seconds']} s", flush=True)
            report["goals"] = judge_goals(report["parts"])
            report["total_s"] = time.monotonic() - start
            write_json(out, report)  # after every part: a killed run still leaves what it measured
        report["goals"] = judge_goals(report["parts"])
        report["total_s"] = time.monotonic() - start
        write_json(out, report)
        print_table(report)
    finally:
        if own_work and not args.keep_work:
            import shutil

            shutil.rmtree(args.work, ignore_errors=True)
    return rc


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, help="the JSON (default $OUT/gpu_check.json, or ./gpu_check.json)")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, for the CPU test")
    p.add_argument("--parts", nargs="+", choices=PART_ORDER, default=list(PART_ORDER))
    p.add_argument("--anli", type=Path, help="ANLI folder in the Hugging Face layout (default: shared/ if found)")
    p.add_argument("--tokenizer", type=Path, help="the Flan-T5 tokenizer folder (default: shared/ if found)")
    p.add_argument("--synthetic-data", action="store_true", help="the synthetic NLI set even when shared/ is there")
    p.add_argument("--budgets", nargs="+", default=[], metavar="PART=S",
                   help="override parts' time budgets in seconds (a slower card; the wrapper's 470 s limit stays)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads per process (default: all available)")
    p.add_argument("--keep-work", action="store_true", help="keep the temporary work folder (models, logs)")
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    # internal: one part, or a helper process
    p.add_argument("--part", choices=PART_ORDER, help=argparse.SUPPRESS)
    p.add_argument("--budget", type=float, default=60.0, help=argparse.SUPPRESS)
    p.add_argument("--run-module", help=argparse.SUPPRESS)
    p.add_argument("--memory-out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--hf-worker", choices=("bf16", "fp32"), help=argparse.SUPPRESS)
    p.add_argument("--model-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--device", help=argparse.SUPPRESS)
    p.add_argument("--steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--warmup-steps", type=int, help=argparse.SUPPRESS)
    p.add_argument("--batch-size", type=int, help=argparse.SUPPRESS)
    args, rest = p.parse_known_args(argv)
    if rest and not args.run_module:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    args.rest = [r for r in rest if r != "--"]
    if args.threads <= 0:
        args.threads = len(os.sched_getaffinity(0))
    return args


def main(argv=None) -> int:
    if argv is None and "--run-module" in sys.argv:  # everything after "--" belongs to the module
        i = sys.argv.index("--")
        args = parse_args(sys.argv[1:i])
        run_module_with_memory(args.run_module, args.memory_out, sys.argv[i + 1:])
        return 0
    args = parse_args(argv)
    if args.hf_worker:
        hf_worker_with_memory(args)
        return 0
    if args.part:
        return run_part_child(args)
    return main_parent(args)


if __name__ == "__main__":
    sys.exit(main())

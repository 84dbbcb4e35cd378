"""The throughput benchmark's model-FLOP count (tools/bench_sft_throughput.py), checked against torch's own count of
the matrix multiplies a T5 forward pass runs; the package list and refusals of its offline GPU kit
(tools/offline_gpu_bench.sh)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import T5Config, T5ForConditionalGeneration

from minillm_helpers import load_tool

forward_flops = load_tool("bench_sft_throughput").forward_flops
step_timing = load_tool("step_timing")
MATMULS, matmul_flops = step_timing.MATMULS, step_timing.matmul_flops

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("prompt_length,target_length", [(7, 3), (12, 1)])
def test_forward_flops_equal_the_matmuls_torch_counts(prompt_length, target_length):
    # Unequal sizes everywhere (inner = heads x d_kv differs from d_model, more decoder than encoder layers) so
    # that a formula mixing two of them cannot agree by accident.
    config = T5Config(vocab_size=50, d_model=16, d_kv=6, num_heads=3, d_ff=20, num_layers=2, num_decoder_layers=3,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False, dropout_rate=0.0)
    model = T5ForConditionalGeneration(config).eval()
    model.set_attn_implementation("eager")  # attention as explicit matmuls: torch's counter skips SDPA's CPU kernel
    input_ids = torch.randint(2, 50, (1, prompt_length))
    decoder_input_ids = torch.randint(2, 50, (1, target_length))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=input_ids, decoder_input_ids=decoder_input_ids, use_cache=False)
    assert forward_flops(config, prompt_length, target_length) == counter.get_total_flops()


# ------------------------------------------------------------------------------------------- offline GPU kit

def test_pinned_closure_pins_installed_versions_and_leaves_out_the_nodes_packages():
    """tools/pinned_closure.py, as offline_gpu_bench.sh calls it: every requirement of the roots, transitively, at
    its installed version; extras' requirements not followed; torch's whole closure and numpy left out."""
    from importlib.metadata import requires, version

    from packaging.utils import canonicalize_name

    closure, pinned_closure = load_tool("pinned_closure").closure, load_tool("pinned_closure").pinned_closure

    pins = dict(pin.split("==") for pin in pinned_closure(["transformers", "deepspeed"], ["torch"], ["numpy"]))
    # direct and second-level requirements, each at the version installed here
    for name in ("transformers", "huggingface-hub", "tokenizers", "deepspeed", "hjson", "pydantic", "pydantic-core"):
        assert pins[name] == version(name), name
    assert all(canonicalize_name(name) == name for name in pins)
    torch_closure = closure(["torch"])
    assert {"torch", "filelock", "typing-extensions"} <= set(torch_closure)  # what the node's torch brings
    assert not set(pins) & (set(torch_closure) | {"numpy"})
    # transformers lists torch only under extras: followed, it would have pulled torch in without the exclusion
    assert any("torch" in line and "extra ==" in line for line in requires("transformers"))
    assert "torch" not in closure(["transformers"]) and "torch" in closure(["deepspeed"])
    # a package named as a root is kept even where an exclusion covers it (EXTRA_PACKAGES=numpy adds numpy)
    assert f"numpy=={version('numpy')}" in pinned_closure(["transformers", "numpy"], ["torch"], ["numpy"])


def test_offline_gpu_bench_refuses_with_one_line(tmp_path):
    script = str(REPO / "tools" / "offline_gpu_bench.sh")

    def refusal(*args, **env):
        done = subprocess.run(["bash", script, *args], capture_output=True, text=True,
                              env=dict(os.environ, **env), timeout=60)
        assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
        return done.stderr.strip()

    assert refusal().startswith("usage: ")
    assert refusal("run", str(tmp_path)) == f"offline_gpu_bench: {tmp_path} is not a folder made by 'pack'"
    kit = tmp_path / "kit"
    for folder in ("wheels", "anli", "tokenizer"):
        (kit / folder).mkdir(parents=True)
    # a node whose Python lacks torch (-S: no site-packages)
    python = tmp_path / "python-without-packages"
    python.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    assert refusal("run", str(kit), PYTHON=str(python)) == (
        f"offline_gpu_bench: {python} cannot import torch: install it on the node (a CUDA build)")
    assert refusal("pack", str(kit)) == f"offline_gpu_bench: {kit} exists: pack writes a new folder"
    assert refusal("pack", str(tmp_path / "new"), ANLI=str(tmp_path)).endswith(
        "not found: set ANLI to the ANLI folder in the Hugging Face layout")
    assert not (tmp_path / "new").exists() and not (tmp_path / "new.tmp").exists()


def test_matmul_flops_of_profiled_products_equal_torchs_count():
    """bench_fused_kernels.py --profile rates the matrix products from the shapes torch's profiler records."""
    a, b, bias = torch.randn(5, 2, 3), torch.randn(5, 3, 4), torch.randn(4)

    def products():
        torch.mm(a[0], b[0]), torch.bmm(a, b), torch.addmm(bias, a[0], b[0]), torch.mm(a[1], b[1])

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as profile:
        products()
    with FlopCounterMode(display=False) as counter:
        products()
    events = [e for e in profile.key_averages(group_by_input_shape=True) if e.key in MATMULS]
    assert sorted(e.key for e in events) == ["aten::addmm", "aten::bmm", "aten::mm"]
    assert sum(matmul_flops(e.key, e.input_shapes) * e.count for e in events) == counter.get_total_flops() == (
        2 * 2 * 3 * 4 * (1 + 5 + 1 + 1))


@pytest.mark.parametrize("tool, args, message", [
    ("bench_minillm_step.py", ["--cycles", "0"], "--cycles must be >= 1, got 0"),
    ("bench_minillm_step.py", ["--threads", "-1"],
     "--vocab-size must be >= 3 (pad, EOS and one more) and --threads >= 0"),
    ("bench_fused_kernels.py", ["--vocab-size", "2"], "--vocab-size must be >= 3, got 2"),
    ("bench_fused_kernels.py", ["--profile", "-1"], "--profile must be >= 0, got -1"),
    ("bench_fused_kernels.py", ["--peak"], "--peak needs --profile N"),
    ("bench_optimizer_step.py", ["--iterations", "0"], "--iterations must be >= 1, --threads >= 0"),
])
def test_step_benchmarks_check_their_flags(tool, args, message):
    done = subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines()[-1] == f"{tool}: error: {message}"


def test_optimizer_benchmark_times_every_variant():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench_optimizer_step.py"), "--preset", "tiny-student",
                           "--vocab-size", "64", "--iterations", "1", "--threads", "1"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(" median")[0].rstrip() for line in lines[1:]] == [
        "fp32, DeepSpeed's clipping + fused AdamW", "fp32, ClippedAdamW", "bf16, masters, separate clip multiply",
        "bf16, BF16MasterWeightAdamW"]
    assert all(float(line.split("median")[1].split()[0]) > 0 for line in lines[1:])


def test_fused_kernel_benchmark_profiles_the_cpu_set():
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench_fused_kernels.py"), "--preset", "tiny-student",
                           "--vocab-size", "64", "--prompt-length", "12", "--iterations", "1", "--threads", "1",
                           "--dtype", "fp32", "--profile", "4"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert [line.split(" median")[0].rstrip() for line in lines[1:4]] == [
        "transformers' modules", "fused GELU + RMS norm", "CPU norm + dropout"]
    assert lines[4].startswith("profile of the CPU set, 3 steps:") and "matrix multiplies" in lines[4]
    assert float(lines[4].split(" at ")[1].split(" GFLOP/s")[0].replace(",", "")) > 0
    assert len(lines) == 5 + 4 and all("ms/step" in line and "aten::" in line for line in lines[5:])


# ------------------------------------------------------------------------------------------- against TRL

def test_trl_benchmark_smoke(shared_anli, flan_t5_tokenizer_dir):
    """tools/bench_vs_trl.py --smoke: one round of one warm-up and one timed step per trainer (ours, TRL's
    DistillationTrainer and GKDTrainer), each checked by the script to generate on-policy at every step; a rate and
    two ratios come out. With ``--floor``, each trainer's matrix-product work per step: ours and DistillationTrainer
    do the same products (within 5 %), GKD more (all-position logits), and the ceiling on ours is its rate at the
    peak divided by the others' medians. Batch 2, 2 new tokens and one thread keep it well under a minute on two
    shared cores."""
    pytest.importorskip("trl", reason="trl is a benchmark-only pin: pip install -r requirements-bench.txt")
    done = subprocess.run([sys.executable, str(REPO / "tools" / "bench_vs_trl.py"), "--smoke", "--batch-size", "2",
                           "--max-new-tokens", "2", "--threads", "1", "--floor", "--anli", str(shared_anli),
                           "--tokenizer", str(flan_t5_tokenizer_dir)], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("machine: ") and "torch " in lines[0] and "trl 1.16.0" in lines[0]
    rounds = [line for line in lines if line.startswith("round 1 ")]
    assert [line.split("  ")[0] for line in rounds] == [
        "round 1 ours (MiniLLM)", "round 1 TRL DistillationTrainer", "round 1 TRL GKDTrainer"]
    assert all(float(line.split("samples/s")[0].split()[-1]) > 0 for line in rounds)
    assert all("2.00 new tokens per sample" in line for line in rounds)  # seeded random models: no early EOS
    ratios = [line for line in lines if line.startswith("ratio ours / ")]
    assert len(ratios) == 2 and all(float(line.split(": ")[1].split("x")[0]) > 0 for line in ratios)
    start = next(i for i, line in enumerate(lines) if line.startswith("matrix products per step"))
    peak = float(lines[start].split("peak of ")[1].split(" GFLOP/s")[0].replace(",", ""))
    gflop = {}
    for line in lines[start + 1:start + 4]:  # "  <trainer>  <GFLOP> GFLOP  <seconds> s/step at the peak"
        name, figures = line.strip().split("  ", 1)
        value, seconds = float(figures.split()[0]), float(figures.split()[2])
        gflop[name] = value
        assert seconds == pytest.approx(value / peak, rel=0.02)  # the peak is printed rounded
    assert list(gflop) == ["ours (MiniLLM)", "TRL DistillationTrainer", "TRL GKDTrainer"]
    assert gflop["TRL DistillationTrainer"] == pytest.approx(gflop["ours (MiniLLM)"], rel=0.05)
    assert gflop["TRL GKDTrainer"] > 1.5 * gflop["ours (MiniLLM)"]
    ceiling_line = lines[start + 4]
    ceiling = float(ceiling_line.split(": ")[1].split(" samples/s")[0])
    assert ceiling == pytest.approx(2 / (gflop["ours (MiniLLM)"] / peak), rel=0.02)
    medians = {name: float(rest.split()[0]) for name, rest in
               (line.strip().split("  ", 1) for line in lines if line.startswith("  ") and "(rounds:" in line)}
    for part in ceiling_line.split(" = ")[1].split(", "):
        ratio, name = part.split("x ", 1)
        assert float(ratio) == pytest.approx(ceiling / medians[name], rel=0.01)

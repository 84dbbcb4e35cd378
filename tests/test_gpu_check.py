"""tools/gpu_check.sh (issue 26) on the CPU: the whole script with tiny shapes (GPU_CHECK_SMOKE=1) writes one JSON with
every part, the goals and the printed table; a part that fails or runs past its budget is recorded and the others
still run; the peak-FLOPs table and the goal rules."""

import json
import os
import subprocess
from pathlib import Path

import pytest

from minillm_helpers import load_tool

REPO = Path(__file__).resolve().parents[1]
gpu_check = load_tool("gpu_check")

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")


def run_script(out: Path, *flags: str, smoke: bool = True, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(ENV, GPU_CHECK_SMOKE="1" if smoke else "0")
    return subprocess.run(["bash", str(REPO / "tools" / "gpu_check.sh"), str(out), "--threads", "1", *flags],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run on the synthetic data (what a GPU machine without shared/ uses)."""
    out = tmp_path_factory.mktemp("gpu_check") / "nested" / "gpu_check.json"
    done = run_script(out, "--synthetic-data")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text()), done.stdout


def test_smoke_json_has_every_part_completed(smoke):
    report, _ = smoke
    assert report["smoke"] is True
    assert list(report["parts"]) == list(gpu_check.PART_ORDER)
    for name, entry in report["parts"].items():
        assert entry["status"] == "ok", (name, entry.get("error"))
        assert entry["seconds"] <= entry["budget_s"]
    assert sum(gpu_check.BUDGETS_S.values()) <= 470  # the GPU budgets fit the wrapper's limit, under 8 minutes

    device = report["parts"]["device"]["result"]
    assert device["measured_matmul_tflops"] > 0 and device["precision"] in ("bf16", "fp32")
    nccl = report["parts"]["nccl"]["result"]
    if device["device"] == "cpu":
        assert nccl["backend"] == "gloo" and "gloo" in nccl["note"]
    assert all(run["sum_correct"] for run in nccl["runs"])
    data = report["parts"]["data"]["result"]
    assert data["source"].startswith("synthetic NLI") and data["examples"] == 999


@pytest.mark.parametrize("part", ["sft_large", "sft_base"])
def test_smoke_sft_parts_compare_both_trainers(smoke, part):
    result = smoke[0]["parts"][part]["result"]
    assert result["preset"] == "tiny-student" and result["steps"] == 3 and result["warmup_steps"] == 1
    for name in ("ours", "hf"):
        run = result["runs"][name]
        assert run["status"] == "ok" and run["steps"] == 2 and run["tokens_per_s"] > 0
    assert result["ratio_tokens_per_s"] == pytest.approx(
        result["runs"]["ours"]["tokens_per_s"] / result["runs"]["hf"]["tokens_per_s"])
    flops = result["flops"]
    assert flops["tokens_match_trainer_log"] and flops["ours_flops"] > 0
    assert flops["six_n_d_flops"] == 6 * result["parameters"] * flops["ours_tokens"]
    assert result["mfu_of_measured_peak"] > 0
    assert result["memory"]["plan"]["status"] in ("ok", "unavailable")


def test_smoke_minillm_breakdown_adds_up(smoke):
    result = smoke[0]["parts"]["minillm"]["result"]
    assert set(result["shares"]) == {"sampling", "teacher_scoring", "student_forward_backward", "optimizer", "other"}
    assert sum(result["shares"].values()) == pytest.approx(1.0)
    assert sum(result["breakdown_s"].values()) == pytest.approx(result["cycle_s"])
    assert result["teacher_decoder_calls"] > 0


def test_smoke_goals_and_table(smoke):
    report, stdout = smoke
    goals = report["goals"]
    assert len(goals) == 3
    assert all(g["status"].startswith("n/a (smoke shapes") for g in goals[:2])  # tiny models judge nothing
    assert goals[2]["status"] in ("pass", "fail") and goals[2]["value"] == report["parts"]["minillm"]["result"][
        "shares"]["other"]
    for part in gpu_check.PART_ORDER:
        assert f"\n{part:<11} ok" in stdout
    assert "SFT flan-t5-large: ours >= 1.3x Seq2SeqTrainer" in stdout and "'other' < 10% of a step" in stdout


def test_a_failing_and_a_timed_out_part_are_recorded_and_the_rest_runs(tmp_path):
    out = tmp_path / "gpu_check.json"
    # no data part: sft_base fails at once; nccl is killed at its 0.2 s budget (torch does not even import); device
    # runs between them
    done = run_script(out, "--parts", "nccl", "device", "sft_base", "--budgets", "nccl=0.2", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    parts = json.loads(out.read_text())["parts"]
    assert parts["nccl"]["status"] == "timeout" and "budget of 0.2 s" in parts["nccl"]["error"]
    assert parts["device"]["status"] == "ok"
    assert parts["sft_base"]["status"] == "failed" and "data part did not complete" in parts["sft_base"]["error"]
    assert "nccl        timeout" in done.stdout and "sft_base    failed" in done.stdout


def test_bad_budget_flag_is_refused(tmp_path):
    done = run_script(tmp_path / "x.json", "--budgets", "nope=3", timeout=60)
    assert done.returncode != 0 and "PART=SECONDS" in done.stderr


@pytest.mark.parametrize("name, key, bf16, fp32", [
    ("NVIDIA H100 80GB HBM3", "H100", 989.0, 67.0),
    ("NVIDIA H100 PCIe", "H100 PCIe", 756.0, 51.0),
    ("NVIDIA H200", "H200", 989.0, 67.0),
    ("NVIDIA A100-SXM4-80GB", "A100", 312.0, 19.5),
    ("Tesla V100-SXM2-32GB", "V100", None, 15.7),
])
def test_peak_table_by_device_name(name, key, bf16, fp32):
    found, peaks = gpu_check.card_peak(name)
    assert found == key and peaks.get("bf16") == bf16 and peaks["fp32"] == fp32
    assert gpu_check.card_peak("NVIDIA L4") == (None, None)


def _parts(card: str, h100: bool, precision: str, mfu: float, ratio: float, other: float) -> dict:
    return {"device": {"result": {"name": card, "h100_class": h100}},
            "sft_large": {"result": {"preset": "flan-t5-large", "precision": precision, "mfu": mfu,
                                     "ratio_tokens_per_s": ratio}},
            "minillm": {"result": {"shares": {"other": other}}}}


def test_goal_rules():
    goals = gpu_check.judge_goals(_parts("NVIDIA H100 80GB HBM3", True, "bf16", 0.46, 1.31, 0.09))
    assert [g["status"] for g in goals] == ["pass", "pass", "pass"]
    goals = gpu_check.judge_goals(_parts("NVIDIA H200", True, "bf16", 0.44, 1.29, 0.10))
    assert [g["status"] for g in goals] == ["fail", "fail", "fail"]
    goals = gpu_check.judge_goals(_parts("NVIDIA A100-SXM4-80GB", False, "bf16", 0.60, 1.5, 0.05))
    assert goals[1]["status"].startswith("n/a (needs bf16 on an H100-class card")
    goals = gpu_check.judge_goals({"device": {"result": {}}})  # every part failed
    assert all(g["status"].startswith("n/a") for g in goals)

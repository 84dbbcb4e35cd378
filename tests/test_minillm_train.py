"""--type minillm on the shared engine, through t5-scripts/minillm/*.sh (tiny untrained models: plumbing, logging,
sharding and refusals; learning is checked by test_distillation_learns.py)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from minillm_helpers import assert_ok, read_jsonl, run_t5_script, script_env

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "deepspeed"


def run_minillm(script: str, setup, save_dir, **overrides) -> subprocess.CompletedProcess:
    data = setup["data_dir"]
    env = script_env(dict(CKPT=setup["models"] / "tiny-student", TEACHER_CKPT=setup["models"] / "tiny-teacher",
                          DATA_DIR=data, PROMPT_DATA_DIR=data, LM_DATA_DIR=data, SAVE_DIR=save_dir,
                          NUM_GPUS=1, BATCH_SIZE=4, GRAD_ACC=1, NUM_ROLLOUTS=16, CHUNK_SIZE=8, PPO_EPOCHS=2,
                          MAX_STEPS=8, EVAL_INTERVAL=4, LR="1e-4", WARMUP_STEPS=1, MAX_NEW_TOKENS=6,
                          DS_CONFIG=CONFIGS / "zero0_fp32.json",
                          EXTRA_ARGS="--eval-max-examples 10 --no-eval-generate --log-interval 1"), **overrides)
    return run_t5_script(f"minillm/{script}", env, timeout=400)


def test_two_processes_zero3_collect_train_and_log(tiny_setup, tmp_path):
    done = run_minillm("train_small_xl.sh", tiny_setup, tmp_path, NUM_GPUS=2, DS_CONFIG=CONFIGS / "zero3_fp32.json")
    assert_ok(done)
    assert "gathered once per collection (ZeRO-3)" in done.stdout + done.stderr
    log = read_jsonl(tmp_path / "metrics.jsonl")
    collections = [r for r in log if "collection" in r]
    # 16 rollouts per collection, 8 per process in 2 micro-batches of 4, 2 PPO epochs: 4 steps per collection
    assert [(r["step"], r["collection"], r["rollouts"]) for r in collections] == [(0, 0, 16), (4, 1, 16)]
    assert all(1 <= r["mixed_length"] <= 6 for r in collections)
    train = [r for r in log if "padding" in r]
    assert len(train) == 8 and all({"pg", "single", "lm", "clip_frac"} <= set(r) for r in train)
    assert all(r["loss"] == pytest.approx(r["pg"] + r["single"] + r["lm"], rel=1e-4, abs=1e-6) for r in train)
    evals = [r for r in log if r.get("split") == "dev"]
    assert [r["step"] for r in evals] == [0, 4, 8]
    assert all(r["sequences"] == 30 and r["rev_kl"] > 0 and 1 <= r["student_length"] <= 6 for r in evals)
    args = json.loads((tmp_path / "last" / "args.json").read_text())
    assert (args["type"], args["num_rollouts"], args["ppo_epochs"], args["teacher_mixed_alpha"]) == (
        "minillm", 16, 2, 0.2)
    assert (tmp_path / "best" / "model.safetensors").is_file()


def test_zero3_without_gathering_decodes_in_lockstep(tiny_setup, tmp_path):
    """The fallback when the parameters do not fit: every call gathers collectively, so processes whose sequences
    end at different steps keep stepping together (a hang otherwise)."""
    done = run_minillm("train_small_xl.sh", tiny_setup, tmp_path, NUM_GPUS=2, DS_CONFIG=CONFIGS / "zero3_fp32.json",
                       MAX_STEPS=4, EXTRA_ARGS="--eval-max-examples 5 --no-eval-generate --no-gather-for-sampling")
    assert_ok(done)
    assert "WARNING: ZeRO-3 without gathering" in done.stdout + done.stderr
    evals = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if r.get("split") == "dev"]
    assert [r["step"] for r in evals] == [0, 4] and all(r["sequences"] == 14 for r in evals)  # 15 cut to 2 x 7


def test_no_lm_script_drops_the_lm_term(tiny_setup, tmp_path):
    assert_ok(run_minillm("train_small_xl_no_lm.sh", tiny_setup, tmp_path, MAX_STEPS=4))
    train = [r for r in read_jsonl(tmp_path / "metrics.jsonl") if "padding" in r]
    assert len(train) == 4 and all("lm" not in r for r in train)
    assert json.loads((tmp_path / "last" / "args.json").read_text())["lm_data_dir"] is None


def test_minillm_script_needs_prompt_data(tiny_setup, tmp_path):
    done = run_minillm("train_small_xl.sh", tiny_setup, tmp_path, PROMPT_DATA_DIR="")
    assert done.returncode != 0 and "set PROMPT_DATA_DIR" in done.stderr


def test_bad_minillm_settings_are_refused_in_one_message(tiny_setup, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "minillm.finetune", "--type", "minillm", "--model-path",
         str(tiny_setup["models"] / "tiny-student"), "--data-dir", str(tiny_setup["data_dir"]), "--save-dir",
         str(tmp_path), "--deepspeed-config", str(CONFIGS / "zero0_fp32.json"), "--teacher-mixed-alpha", "1",
         "--ppo-epochs", "0", "--lm-data-dir", str(tmp_path / "nowhere")],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2
    for message in ("--type minillm needs --teacher-model-path", "--type minillm needs --max-steps",
                    "--ppo-epochs must be >= 1", "--teacher-mixed-alpha must be in [0, 1)",
                    f"--lm-data-dir {tmp_path / 'nowhere'}: no meta.json"):
        assert message in done.stderr


def test_rollouts_that_do_not_fill_a_step_are_refused(tiny_setup, tmp_path):
    done = run_minillm("train_small_xl.sh", tiny_setup, tmp_path, NUM_ROLLOUTS=3, BATCH_SIZE=4)
    assert done.returncode != 0
    assert "--num-rollouts 3: 3 per process, fewer than one step's --batch-size x --grad-acc (4)" in (
        done.stdout + done.stderr)

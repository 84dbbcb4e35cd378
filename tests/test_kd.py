"""Word-level KD (--type kd, minillm/objectives/kd.py) and its scripts t5-scripts/kd/kd_*.sh."""

import copy
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from minillm.data.seq2seq import Seq2SeqExamples
from minillm.data.seq2seq import collate
from minillm.models import Seq2SeqAdapter
from minillm.models.tiny import build_model
from minillm.objectives import build_objective
from minillm_helpers import assert_ok, run_t5_script, script_env

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "deepspeed"


def kd_config(**overrides) -> SimpleNamespace:
    values = dict(teacher_model_path="teacher", kd_ratio=0.5, kd_loss="fkl", jsd_beta=0.5, skew_alpha=0.1,
                  kd_temperature=1.0)
    values.update(overrides)
    return SimpleNamespace(**values)


def batch_of(setup, n=8) -> dict:
    data = Seq2SeqExamples(setup["data_dir"], "all", "train")
    return collate([data[i] for i in range(n)], 0)


@pytest.mark.parametrize("kd_loss", ["fkl", "rkl", "jsd", "sfkl", "srkl", "tvd", "akl"])
def test_student_equal_to_teacher_gives_zero_kd_term_and_gradient(tiny_setup, kd_loss):
    student = AutoModelForSeq2SeqLM.from_pretrained(tiny_setup["models"] / "tiny-student").eval()
    teacher = copy.deepcopy(student)
    adapter = Seq2SeqAdapter.for_model(student)
    objective = build_objective("kd", kd_config(kd_ratio=1.0, kd_loss=kd_loss), adapter, lambda path: teacher)
    output = objective(student, batch_of(tiny_setup))
    assert abs(float(output.metrics["kd"])) < 1e-5 and float(output.metrics["ce"]) > 1.0
    if kd_loss == "tvd":
        return  # |t - s| has a kink at s = t: its (sub)gradient there does not vanish, rounding picks a side
    output.loss_sum.backward()
    assert max(float(p.grad.abs().max()) for p in student.parameters()) < 1e-5


def test_loss_mixes_cross_entropy_and_divergence(tiny_setup):
    setup = tiny_setup
    student = AutoModelForSeq2SeqLM.from_pretrained(setup["models"] / "tiny-student").eval()
    teacher = AutoModelForSeq2SeqLM.from_pretrained(setup["models"] / "tiny-teacher").eval()
    adapter = Seq2SeqAdapter.for_model(student)
    batch = batch_of(setup)
    with torch.no_grad():
        outputs = {r: build_objective("kd", kd_config(kd_ratio=r), adapter, lambda path: teacher)(student, batch)
                   for r in (0.0, 0.3, 1.0)}
    ce, kd = float(outputs[0.0].loss_sum), float(outputs[1.0].loss_sum)
    assert kd > 0 and ce > 0
    assert float(outputs[0.3].loss_sum) == pytest.approx(0.7 * ce + 0.3 * kd, rel=1e-6)
    assert float(outputs[0.3].metrics["ce"]) == pytest.approx(ce) and float(outputs[0.3].metrics["kd"]) == (
        pytest.approx(kd))


def run_script(script: str, setup, save_dir, **overrides) -> subprocess.CompletedProcess:
    env = script_env(dict(CKPT=setup["models"] / "tiny-student", DATA_DIR=setup["data_dir"], SAVE_DIR=save_dir,
                          NUM_GPUS=1, BATCH_SIZE=8, GRAD_ACC=1, LR="1e-3", EPOCHS=1, MAX_STEPS=6, EVAL_INTERVAL=6,
                          WARMUP_STEPS=2, DS_CONFIG=CONFIGS / "zero0_fp32.json",
                          TEACHER_CKPT=setup["models"] / "tiny-teacher",
                          EXTRA_ARGS="--eval-max-examples 20 --no-eval-generate --log-interval 1 --dropout 0"),
                     **overrides)
    return run_t5_script(script, env)


def test_kd_ratio_zero_equals_sft_step_for_step(tiny_setup, tmp_path):
    """Same student, data order and learning-rate schedule: with r = 0 the KD loss is exactly the CE, so the
    weights after 6 steps are bitwise those of SFT (the teacher's forward pass draws no random numbers)."""
    assert_ok(run_script("sft/sft_small.sh", tiny_setup, tmp_path / "sft", SELECT_BY="accuracy"))
    assert_ok(run_script("kd/kd_small.sh", tiny_setup, tmp_path / "kd", KD_RATIO=0))
    sft = load_file(str(tmp_path / "sft" / "last" / "model.safetensors"))
    kd = load_file(str(tmp_path / "kd" / "last" / "model.safetensors"))
    initial = load_file(str(tiny_setup["models"] / "tiny-student" / "model.safetensors"))
    assert any(not torch.equal(sft[k], initial[k]) for k in sft)  # it trained
    assert all(torch.equal(sft[k], kd[k]) for k in sft)
    lines = [json.loads(line) for line in (tmp_path / "kd" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in lines if "padding" in r]
    assert all(r["loss"] == pytest.approx(r["ce"], rel=1e-6) and r["kd"] > 0 for r in train)


def test_kd_script_trains_with_each_divergence_flag(tiny_setup, tmp_path):
    done = run_script("kd/kd_small.sh", tiny_setup, tmp_path / "jsd", KD_LOSS="jsd", JSD_BETA=0.9, MAX_STEPS=3,
                      EVAL_INTERVAL=3)
    assert_ok(done)
    args = json.loads((tmp_path / "jsd" / "last" / "args.json").read_text())
    assert (args["type"], args["kd_loss"], args["jsd_beta"], args["kd_ratio"]) == ("kd", "jsd", 0.9, 0.5)
    train = [json.loads(line) for line in (tmp_path / "jsd" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if "padding" in r]
    assert all(r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kd"], rel=1e-5) for r in train)


def test_teacher_with_another_vocabulary_is_refused_before_training(tiny_setup, tmp_path):
    student_vocab = AutoModelForSeq2SeqLM.from_pretrained(tiny_setup["models"] / "tiny-student").config.vocab_size
    build_model("tiny-student", student_vocab + 128).save_pretrained(tmp_path / "wide_teacher")
    done = run_script("kd/kd_small.sh", tiny_setup, tmp_path / "out", TEACHER_CKPT=tmp_path / "wide_teacher")
    assert done.returncode != 0
    assert f"vocabulary of {student_vocab + 128} tokens but the student" in done.stdout + done.stderr
    assert not (tmp_path / "out" / "last").exists()


def test_kd_without_teacher_is_refused(tiny_setup, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "minillm.finetune", "--type", "kd", "--model-path",
         str(tiny_setup["models"] / "tiny-student"), "--data-dir", str(tiny_setup["data_dir"]), "--save-dir",
         str(tmp_path), "--deepspeed-config", str(CONFIGS / "zero0_fp32.json"), "--kd-ratio", "1.5"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode != 0
    assert "--type kd needs --teacher-model-path" in done.stderr and "--kd-ratio must be in [0, 1]" in done.stderr


def test_zero3_two_processes_shard_the_teacher_and_train(tiny_setup, tmp_path):
    """ZeRO-3 over two processes: the student trains sharded and the teacher runs in a ZeRO-3 inference engine
    (parameters sharded, gathered layer by layer in its forward pass)."""
    done = run_script("kd/kd_small.sh", tiny_setup, tmp_path / "z3", NUM_GPUS=2, BATCH_SIZE=4, MAX_STEPS=4,
                      EVAL_INTERVAL=4, DS_CONFIG=CONFIGS / "zero3_fp32.json")
    assert_ok(done)
    train = [json.loads(line) for line in (tmp_path / "z3" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in train if "padding" in r]
    assert len(train) == 4 and all(r["kd"] > 0 for r in train)
    assert all(r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kd"], rel=1e-5) for r in train)
    assert AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "z3" / "last") is not None

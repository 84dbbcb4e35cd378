"""The training engine (minillm/engine, minillm/finetune.py) driven through the real t5-scripts/sft scripts.

Every run here is a process group on CPU (gloo) started by the scripts' launch logic (t5-scripts/common.sh), on
the tiny embedded-default setup.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from minillm.data.seq2seq import Seq2SeqExamples, bucketed_batches
from minillm.engine.padding import padding_fraction
from minillm.engine.config import parse_config
from minillm.engine.deepspeed_config import check_precision, load_deepspeed_config
from minillm.engine.distributed import free_port
from minillm.engine.run_log import RunLog
from minillm.engine.trainer import improves, lr_factor, selections
from minillm.evaluation import evaluate
from minillm_helpers import assert_ok, run_t5_script, script_env

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "deepspeed"
# See test_data_parallel_and_accumulation_match_one_big_batch: updates proportional to the gradients.
ADAM_AS_SGD = dict(LR=1.0, EXTRA_ARGS="--eval-max-examples 20 --no-eval-generate --log-interval 1 --adam-eps 1.0")


def sft_env(setup, save_dir, **overrides) -> dict:
    """Environment for t5-scripts/sft/*.sh: the tiny student on the tiny data, a few steps, cheap evaluation."""
    return script_env(dict(CKPT=setup["models"] / "tiny-student", DATA_DIR=setup["data_dir"], SAVE_DIR=save_dir,
                           NUM_GPUS=1, BATCH_SIZE=8, GRAD_ACC=1, LR="1e-3", EPOCHS=1, MAX_STEPS=6, EVAL_INTERVAL=6,
                           WARMUP_STEPS=2, DS_CONFIG=CONFIGS / "zero0_fp32.json",
                           EXTRA_ARGS="--eval-max-examples 20 --no-eval-generate --log-interval 1"), **overrides)


def run_sft(setup, save_dir, script="sft_small.sh", timeout=300, **overrides) -> subprocess.CompletedProcess:
    return run_t5_script(f"sft/{script}", sft_env(setup, save_dir, **overrides), timeout=timeout)


def weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ------------------------------------------------------------------------------------------- pure pieces

def test_lr_factor_warmup_cosine_constant():
    assert [lr_factor(s, 10, 4, "cosine", 0.0) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 10, 4, "cosine", 0.0) == pytest.approx(1.0)
    assert lr_factor(7, 10, 4, "cosine", 0.0) == pytest.approx(0.5)  # halfway through the 6 decay steps
    assert lr_factor(10, 10, 4, "cosine", 0.1) == pytest.approx(0.1)
    assert lr_factor(9, 10, 0, "constant", 0.0) == 1.0


def test_selection_ties_go_to_the_later_step_and_loss_counts_lower():
    assert improves(40.0, None, "accuracy") and improves(40.0, 40.0, "accuracy") and not improves(39.9, 40.0,
                                                                                                  "accuracy")
    assert improves(0.5, 0.5, "loss") and improves(0.4, 0.5, "loss") and not improves(0.6, 0.5, "loss")
    assert improves(12.0, 12.0, "rougeL") and not improves(11.0, 12.0, "rougeL")


def test_auto_selection_follows_the_target_kind(tmp_path):
    def config(target, *flags):
        data = tmp_path / target
        data.mkdir(exist_ok=True)
        (data / "meta.json").write_text(json.dumps({"target": target}))
        return parse_config(["--data-dir", str(data), *flags])

    assert selections(config("label")) == {"best": "accuracy"}
    assert selections(config("label_reason")) == {"best": "rougeL"}
    assert selections(config("label_reason", "--select-by", "loss", "--also-select-by", "loss")) == {
        "best": "loss", "best_loss": "loss"}
    assert selections(config("label", "--also-select-by", "loss")) == {"best": "accuracy", "best_loss": "loss"}
    problems = config("label_reason", "--no-eval-generate")
    with pytest.raises(ValueError, match=r"--select-by rougeL \(auto: the data has free-text targets\) needs "
                                         "generation"):
        problems.validate()


def test_bucketed_batches_cover_once_and_cut_padding():
    lengths = np.random.default_rng(0).integers(5, 200, size=1000)
    batches = bucketed_batches(lengths, 10, seed=3, epoch=0, window_batches=20)
    flat = np.concatenate(batches)
    assert len(batches) == 100 and len(np.unique(flat)) == 1000
    assert all(np.array_equal(a, b) for a, b in zip(batches, bucketed_batches(lengths, 10, 3, 0, 20)))
    assert not np.array_equal(flat, np.concatenate(bucketed_batches(lengths, 10, 3, 1, 20)))

    def padding(bs):
        return sum(int(lengths[b].max()) * len(b) - int(lengths[b].sum()) for b in bs) / (lengths.sum())

    random_batches = np.random.default_rng(1).permutation(1000).reshape(100, 10)
    assert padding(batches) < 0.2 * padding(random_batches)


def test_bucketing_drops_random_examples_not_the_longest():
    """1,000 examples in batches of 32 leave 8 out each epoch: a random 8, not the 8 longest prompts."""
    lengths = np.random.default_rng(0).permutation(1000)  # all different: example i has length lengths[i]
    dropped = [set(range(1000)) - set(np.concatenate(bucketed_batches(lengths, 32, 0, epoch)).tolist())
               for epoch in range(20)]
    assert all(len(d) == 8 for d in dropped)
    assert len(set().union(*dropped)) > 100  # a different few every epoch
    assert 300 < np.mean([lengths[i] for d in dropped for i in d]) < 700  # the longest would give 995.5


def test_deepspeed_config_is_completed_and_checked(tmp_path):
    config = load_deepspeed_config(CONFIGS / "zero2_bf16.json", micro_batch=4, grad_acc=3, world_size=2)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"]) == (4, 3, 24)
    assert config["zero_allow_untested_optimizer"] is True
    for name in sorted(os.listdir(CONFIGS)):
        assert "gradient_clipping" in json.loads((CONFIGS / name).read_text()), name

    no_clip = tmp_path / "no_clip.json"
    no_clip.write_text('{"zero_optimization": {"stage": 1}}')
    with pytest.raises(ValueError, match="gradient_clipping"):
        load_deepspeed_config(no_clip, 4, 1, 1)
    conflict = tmp_path / "conflict.json"
    conflict.write_text('{"gradient_clipping": 1.0, "train_micro_batch_size_per_gpu": 16}')
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=16 disagrees"):
        load_deepspeed_config(conflict, 4, 1, 1)
    with pytest.raises(ValueError, match="fp16 is not supported for t5"):
        check_precision({"fp16": {"enabled": True}}, "t5", "x.json")
    check_precision({"fp16": {"enabled": True}}, "gpt2", "x.json")  # decoder-only families may use fp16


# ------------------------------------------------------------------------------------------- runs

def test_data_parallel_and_accumulation_match_one_big_batch(tiny_setup, tmp_path):
    """2 processes x batch 4, and 1 process x batch 4 x 2 accumulation steps, reach the parameters of 1 process x
    batch 8: the loss is normalised by the token count of the whole global batch.

    Adam's first steps are ``lr x sign(g)`` for every coordinate, which turns float rounding in near-zero gradients
    into full-size differences; a large epsilon makes the update ``~ lr x m`` (SGD with momentum), so the comparison
    sees the gradients themselves."""
    runs = {"one_b8": dict(NUM_GPUS=1, BATCH_SIZE=8, GRAD_ACC=1),
            "two_b4": dict(NUM_GPUS=2, BATCH_SIZE=4, GRAD_ACC=1),
            "one_b4_acc2": dict(NUM_GPUS=1, BATCH_SIZE=4, GRAD_ACC=2)}
    for name, overrides in runs.items():
        assert_ok(run_sft(tiny_setup, tmp_path / name, **ADAM_AS_SGD, **overrides))
    reference = weights(tmp_path / "one_b8" / "last")
    initial = load_file(str(tiny_setup["models"] / "tiny-student" / "model.safetensors"))
    moved = max_difference(reference, initial)
    assert moved > 1e-3  # it trained
    for name in ("two_b4", "one_b4_acc2"):
        assert max_difference(weights(tmp_path / name / "last"), reference) < 1e-5 * moved, name
    log = [json.loads(line) for line in (tmp_path / "two_b4" / "metrics.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if "padding" in r]
    assert [r["step"] for r in train_lines] == [1, 2, 3, 4, 5, 6]
    assert train_lines[0]["lr"] == pytest.approx(0.5)  # warmup step 1 of 2
    assert all(0.0 <= r["padding"] < 0.5 for r in train_lines)
    # the trainer's clipping norm is the global one, taken after the all-reduce: the same as one process's
    reference_lines = [json.loads(line) for line in (tmp_path / "one_b8" / "metrics.jsonl").read_text().splitlines()
                       if "padding" in json.loads(line)]
    assert [r["grad_norm"] for r in train_lines] == pytest.approx([r["grad_norm"] for r in reference_lines], rel=1e-4)
    # the logged padding is the count over both processes' micro-batches, as tools/padding_fraction.py computes it
    args = json.loads((tmp_path / "two_b4" / "last" / "args.json").read_text())
    examples = Seq2SeqExamples(tiny_setup["data_dir"], args["train_round"], "train", args["max_prompt_length"],
                               args["max_target_length"])
    for r in train_lines:
        expected = padding_fraction(examples, [r["step"] - 1], 4, 1, 2, args["seed"], args["bucket_window"], 0)
        assert r["padding"] == pytest.approx(expected, abs=1e-12), r["step"]


def test_padding_fraction_tool(tiny_setup):
    tool = [sys.executable, str(REPO / "tools" / "padding_fraction.py"), "--data-dir", str(tiny_setup["data_dir"])]
    done = subprocess.run(tool + ["--round", "all", "--batch-size", "8", "--bucket-window", "10", "--seed", "3"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    examples = Seq2SeqExamples(tiny_setup["data_dir"], "all", "train")  # three rounds: prompt lengths vary
    steps = range(len(examples) // 8)
    bucketed, random_batches = (padding_fraction(examples, steps, 8, 1, 1, 3, window, 0) for window in (10, 1))
    assert bucketed < 0.5 * random_batches
    assert (f"padding fraction: {bucketed:.4f} with --bucket-window 10, {random_batches:.4f} with --bucket-window 1"
            in done.stdout)
    for bad, message in ((["--batch-size", "0"], "--batch-size must be >= 1"),
                         (["--batch-size", "1000"], "fewer than one global batch (1000)")):
        done = subprocess.run(tool + bad, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and message in done.stderr and len(done.stderr.splitlines()) == 1, done.stderr
    done = subprocess.run(tool[:-1] + [str(tiny_setup["work"] / "missing")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and "meta.json: missing" in done.stderr, done.stderr


def test_zero3_two_processes_trains_and_saves_loadable_checkpoint(tiny_setup, tmp_path):
    assert_ok(run_sft(tiny_setup, tmp_path / "z0", NUM_GPUS=2, BATCH_SIZE=4, **ADAM_AS_SGD))
    done = run_sft(tiny_setup, tmp_path / "z3", NUM_GPUS=2, BATCH_SIZE=4, DS_CONFIG=CONFIGS / "zero3_fp32.json",
                   **ADAM_AS_SGD)
    assert_ok(done)
    assert "ZeRO 3" in done.stdout + done.stderr
    z0, z3 = weights(tmp_path / "z0" / "last"), weights(tmp_path / "z3" / "last")
    moved = max_difference(z0, load_file(str(tiny_setup["models"] / "tiny-student" / "model.safetensors")))
    assert max_difference(z3, z0) < 1e-5 * moved

    from transformers import AutoModelForSeq2SeqLM

    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "z3" / "last")
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()


def test_checkpoint_reloads_with_the_same_logits(tiny_setup, tmp_path):
    """best/ loaded with from_pretrained scores the dev set exactly as the in-training model did (its metrics.json
    holds the loss and per-round accuracy computed by the DeepSpeed-wrapped model at that step). Its output, piped
    as in a batch job, is what a log file gets (test_progress_and_logging.py has the pieces)."""
    done = run_sft(tiny_setup, tmp_path / "run", MAX_STEPS=8, EVAL_INTERVAL=2)
    assert_ok(done)
    assert_log_file_output(done, tmp_path / "run", steps=8)
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    # the student recipe: best/ by dev accuracy, best_loss/ by dev loss, ties to the later step
    evals = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r.get("split") == "dev"]
    assert [r["step"] for r in evals] == [2, 4, 6, 8]
    top = max(r["accuracy_rank"] for r in evals)
    lowest = min(r["loss"] for r in evals)
    for folder, select_by, step in (
            ("best", "accuracy", max(r["step"] for r in evals if r["accuracy_rank"] == top)),
            ("best_loss", "loss", max(r["step"] for r in evals if r["loss"] == lowest))):
        state = json.loads((tmp_path / "run" / folder / "trainer_state.json").read_text())
        assert state["step"] == step and state["selections"][folder]["select_by"] == select_by
        assert f"train: {tmp_path / 'run' / folder} is step {step} of 8, selected by dev {select_by}" in (
            done.stdout + done.stderr)

    best = tmp_path / "run" / "best"
    for name in ("config.json", "model.safetensors", "args.json", "metrics.json", "trainer_state.json",
                 "tokenizer_config.json"):
        assert (best / name).is_file(), name
    assert not (best / "training_state").exists() and (tmp_path / "run" / "last" / "training_state").is_dir()
    recorded = json.loads((best / "metrics.json").read_text())
    model = AutoModelForSeq2SeqLM.from_pretrained(best)
    result = evaluate(model, AutoTokenizer.from_pretrained(best), tiny_setup["data_dir"], "dev", generate=False,
                      max_examples=20)
    assert result["overall"]["loss"] == pytest.approx(recorded["overall"]["loss"], rel=1e-5)
    for round_name, summary in recorded["rounds"].items():
        assert result["rounds"][round_name]["accuracy_rank"] == summary["accuracy_rank"]
    args = json.loads((best / "args.json").read_text())
    assert args["type"] == "sft" and args["batch_size"] == 8
    assert not list(tmp_path.glob("run/*.tmp")) and not list(tmp_path.glob("run/*.old"))
    assert list((tmp_path / "run" / "tensorboard").iterdir())


def test_resuming_a_finished_run_trains_nothing_and_other_settings_are_refused(tiny_setup, tmp_path):
    """--resume of a run that is done, or with settings it cannot honour. (A run run_dir and resumed ends bitwise as
    the uninterrupted one: tests/faults/test_kill_resume.py.)"""
    settings = dict(MAX_STEPS=8, EVAL_INTERVAL=8, SAVE_INTERVAL=8,
                    EXTRA_ARGS="--eval-max-examples 10 --no-eval-generate --log-interval 1 --resume")
    run_dir = tmp_path / "run"
    assert_ok(run_sft(tiny_setup, run_dir, **{**settings, "EXTRA_ARGS": settings["EXTRA_ARGS"][:-len(" --resume")]}))
    finished = weights(run_dir / "last")

    # Resumed again once finished: nothing to train, last/ untouched; with fewer steps than done: refused.
    again = run_sft(tiny_setup, run_dir, **settings)
    assert_ok(again)
    assert "is already at step 8 of 8; nothing to train" in again.stdout + again.stderr
    assert all(torch.equal(finished[k], v) for k, v in weights(run_dir / "last").items())
    shorter = run_sft(tiny_setup, run_dir, **{**settings, "MAX_STEPS": 4})
    assert shorter.returncode != 0
    assert "is at step 8, past this run's 4 steps; raise --max-steps" in shorter.stdout + shorter.stderr
    other = run_sft(tiny_setup, run_dir, **{**settings, "EXTRA_ARGS": settings["EXTRA_ARGS"] + " --select-by loss"})
    assert other.returncode != 0
    assert "best/ was selected by accuracy, now --select-by loss" in other.stdout + other.stderr
    no_extra = run_sft(tiny_setup, run_dir, **{**settings, "ALSO_SELECT_BY": "accuracy"})
    assert no_extra.returncode != 0
    assert "saved with the extra selections best_loss, now best_accuracy" in no_extra.stdout + no_extra.stderr
    state = json.loads((run_dir / "last" / "trainer_state.json").read_text())
    logged = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert state["select_by"] == "accuracy" and state["log_lines"] == len(logged)

    # A checkpoint from before best_<metric>/ existed (no "selections"): resumed by a recipe that selects best/ alone,
    # refused in one line by one that also keeps best_loss/.
    legacy = {k: v for k, v in state.items() if k != "selections"}
    (run_dir / "last" / "trainer_state.json").write_text(json.dumps(legacy))
    from minillm.folders import write_manifest

    write_manifest(run_dir / "last")  # edited by hand: recorded again, or --resume would skip it as corrupted
    old_style = run_sft(tiny_setup, run_dir, script="sft_xl.sh", **settings)
    assert_ok(old_style)
    assert "is already at step 8 of 8; nothing to train" in old_style.stdout + old_style.stderr
    refused = run_sft(tiny_setup, run_dir, **settings)
    assert refused.returncode != 0
    assert "saved with the extra selections none, now best_loss" in refused.stdout + refused.stderr


def assert_log_file_output(done: subprocess.CompletedProcess, save_dir: Path, steps: int) -> None:
    """A run whose output is not a terminal (minillm/console.py): a progress line per metric line (--log-interval
    1), no carriage return, none of the libraries' noise; metrics.jsonl rows say their kind; TensorBoard holds the
    run's resolved settings as text and in the HParams tab with its final dev figures."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    output = done.stdout + done.stderr
    assert "\r" not in output
    for noise in ("Setting accelerator to CPU", "The tied weights mapping", "Loading weights", "Writing model shards"):
        assert noise not in output, noise
    progress = [line.split(" steps")[0] for line in done.stderr.splitlines() if line.startswith("train: ")]
    assert progress == [f"train: {step}/{steps}" for step in range(1, steps + 1)]
    rows = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    assert {row["kind"] for row in rows} == {"train", "eval"}
    assert all(("lr" in row) == (row["kind"] == "train") and ("split" in row) == (row["kind"] == "eval")
               for row in rows)
    evals = [row for row in rows if row["kind"] == "eval"]
    events = EventAccumulator(str(save_dir / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("eval/r1/accuracy_rank")] == [
        (row["step"], pytest.approx(row["rounds"]["r1"]["accuracy_rank"])) for row in evals]
    config_text = json.loads(events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode())
    assert config_text["max_steps"] == steps and config_text["select_by"] == "accuracy"  # auto, resolved
    start = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["total_steps"].number_value == steps and start["select_by"].string_value == "accuracy"
    assert start["adam_betas"].string_value == "[0.9, 0.999]"  # lists as JSON text
    best = max(evals, key=lambda row: (row["accuracy_rank"], row["step"]))  # ties go to the later step
    assert [(e.step, e.value) for e in events.Scalars("hparams/best_accuracy")] == [
        (steps, pytest.approx(best["accuracy_rank"]))]
    assert [e.value for e in events.Scalars("hparams/best_loss_loss")] == [
        pytest.approx(min(row["loss"] for row in evals))]
    assert [e.value for e in events.Scalars("hparams/last_loss")] == [pytest.approx(evals[-1]["loss"])]


def test_resumed_log_drops_what_followed_the_checkpoint(tmp_path):
    """metrics.jsonl keeps the lines the checkpoint counted (a rollout collection logged after it at its own step
    goes too); TensorBoard purges the steps after it. Both then read as one run."""
    log = RunLog(tmp_path, enabled=True)
    for step in range(1, 6):
        log.write({"step": step, "loss": 100.0 + step}, "train")
    lines_at_checkpoint = log.lines  # a checkpoint at step 5
    log.write({"step": 5, "rollouts": 64}, "rollout")  # collected for step 6, then the run died
    log.write({"step": 6, "loss": 106.0}, "train")
    log.close()
    log = RunLog(tmp_path, enabled=True, resumed_step=5, resumed_lines=lines_at_checkpoint)
    log.write({"step": 5, "rollouts": 64}, "rollout")  # collected again
    log.write({"step": 6, "loss": 6.0}, "train")
    log.close()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], "rollouts" in r) for r in records] == [(1, False), (2, False), (3, False), (4, False),
                                                                 (5, False), (5, True), (6, False)]
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [
        (1, 101.0), (2, 102.0), (3, 103.0), (4, 104.0), (5, 105.0), (6, 6.0)]

    # A checkpoint without a line count (saved before it was recorded): the lines up to its step are kept.
    RunLog(tmp_path, enabled=True, resumed_step=4).close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]


@pytest.mark.parametrize("overrides, message", [
    (dict(DS_CONFIG=CONFIGS.parent / "missing.json"), "DS_CONFIG="),
    (dict(EXTRA_ARGS="--resume"), "--resume: no complete checkpoint"),
    (dict(BATCH_SIZE=2000), "fewer than one global batch"),
    (dict(CKPT="/nonexistent/sft/best"), "--model-path /nonexistent/sft/best: no such folder"),
    (dict(CKPT="no-such-org/no-such-model"), "--model-path no-such-org/no-such-model: cannot load it"),
    (dict(NUM_GPUS=0), "NUM_GPUS=0 and NUM_NODES=1 must be whole numbers >= 1"),
    (dict(HOSTFILE="/nonexistent/hostfile"), "HOSTFILE=/nonexistent/hostfile not found"),
])
def test_bad_input_fails_with_one_clear_line(tiny_setup, tmp_path, overrides, message):
    done = run_sft(tiny_setup, tmp_path / "bad", **overrides)
    assert done.returncode != 0
    assert message in done.stdout + done.stderr and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "bad" / "last").exists()


def test_flags_are_checked_together(tiny_setup, tmp_path):
    config = parse_config(["--model-path", "m", "--data-dir", str(tmp_path), "--save-dir", "s", "--deepspeed-config",
                           str(CONFIGS / "zero0_fp32.json"), "--lr", "0", "--select-by", "rougeL",
                           "--no-eval-generate", "--batch-size", "0", "--bucket-window", "0"])
    with pytest.raises(ValueError) as error:
        config.validate()
    for message in ("--lr must be > 0", "--batch-size must be >= 1", "--select-by rougeL needs generation",
                    f"--data-dir {tmp_path}: no meta.json", "--bucket-window must be >= 1"):
        assert message in str(error.value)
    valid = ["--model-path", "m", "--data-dir", str(tiny_setup["data_dir"]), "--save-dir", "s",
             "--deepspeed-config", str(CONFIGS / "zero0_fp32.json")]
    parse_config(valid).validate()
    # A teacher path must exist only where the objective loads a teacher (the seqkd scripts pass one either way).
    parse_config(valid + ["--teacher-model-path", str(tmp_path / "absent")]).validate()
    with pytest.raises(ValueError, match=f"--teacher-model-path {tmp_path / 'absent'}: no such folder"):
        parse_config(valid + ["--type", "kd", "--teacher-model-path", str(tmp_path / "absent")]).validate()


def test_fp16_with_t5_is_refused(tiny_setup, tmp_path):
    fp16 = tmp_path / "zero0_fp16.json"
    fp16.write_text('{"gradient_clipping": 1.0, "fp16": {"enabled": true}}')
    done = run_sft(tiny_setup, tmp_path / "fp16", DS_CONFIG=fp16)
    assert done.returncode != 0
    assert "fp16 is not supported for t5" in done.stderr


class _EngineStub:
    """What save_checkpoint uses of a DeepSpeed engine (no ZeRO-3): the module and a state writer that, like
    DeepSpeed's, creates the folder on rank 0 and ends in a barrier."""

    def __init__(self, module):
        self.module = module

    def zero_optimization_partition_weights(self) -> bool:
        return False

    def save_checkpoint(self, save_dir: str, tag: str, save_latest: bool) -> None:
        if torch.distributed.get_rank() == 0:
            Path(save_dir, tag).mkdir(parents=True)
        torch.distributed.barrier()


class _TokenizerStub:
    def save_pretrained(self, folder) -> None:
        Path(folder, "tokenizer.json").write_text("{}")


def _save_with_a_slow_rank(rank, rendezvous, folder):
    from transformers import T5Config, T5ForConditionalGeneration

    from minillm.engine import checkpoint

    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    if rank == 1:  # rank 1 reaches its RNG file long after rank 0 has written everything it writes
        rng_state = checkpoint._rng_state
        checkpoint._rng_state = lambda: time.sleep(2.0) or rng_state()
    model = T5ForConditionalGeneration(T5Config(vocab_size=32, d_model=8, d_kv=4, num_heads=2, d_ff=16,
                                                num_layers=1, num_decoder_layers=1))
    checkpoint.save_checkpoint(_EngineStub(model), _TokenizerStub(), Path(folder), args={}, trainer_state={},
                               metrics=None, with_training_state=True)
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in test_evaluation: skip finalisation, where gloo's threads can abort the process


def test_checkpoint_waits_for_every_rank_before_the_rename(tmp_path):
    folder = tmp_path / "last"
    torch.multiprocessing.spawn(_save_with_a_slow_rank, nprocs=2, args=(tmp_path / "rendezvous", folder))
    assert sorted(p.name for p in (folder / "training_state").iterdir()) == ["rng_rank0.pt", "rng_rank1.pt", "state"]
    assert (folder / "model.safetensors").is_file() and not folder.with_name("last.tmp").exists()


def test_process_group_start_leaves_nothing_in_dev_shm(tmp_path):
    """Under the DeepSpeed launcher (which sets LOCAL_SIZE, the processes on this node: here all of them), DeepSpeed's
    CPU shared-memory all-reduce would leave a 69 MB /dev/shm segment per process behind, named after the
    rendezvous port; init_distributed keeps it from being set up."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this machine: nothing to leak into")
    port = free_port()
    done = subprocess.run([sys.executable, "-c", "from minillm.engine.distributed import init_distributed; "
                           "print(init_distributed())"], env=dict(os.environ, MASTER_PORT=str(port), LOCAL_SIZE="1"),
                          capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0 and done.stdout.strip().splitlines()[-1] == "(0, 1, 0)", done.stderr[-2000:]
    assert [p.name for p in shm.iterdir() if f"_{port}_" in p.name] == []


def test_two_simulated_nodes_match_one_node_with_two_processes(tiny_setup, tmp_path):
    """Multi-node through a hostfile, on one machine: one launcher per "node" (--no_ssh, node ranks 0 and 1, one
    process each, the same master address and port) forms one group of two and trains like one node of two."""
    assert_ok(run_sft(tiny_setup, tmp_path / "one_node", NUM_GPUS=2, BATCH_SIZE=4, **ADAM_AS_SGD))

    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-a slots=1\nnode-b slots=1\n")
    port = free_port()
    nodes = [subprocess.Popen(
        ["bash", str(REPO / "t5-scripts" / "sft" / "sft_small.sh"), str(REPO)],
        env=sft_env(tiny_setup, tmp_path / "two_nodes", NUM_GPUS=1, NUM_NODES=2, HOSTFILE=hostfile, BATCH_SIZE=4,
                    MASTER_PORT=port, LAUNCHER_ARGS=f"--no_ssh --node_rank {rank} --master_addr 127.0.0.1",
                    **ADAM_AS_SGD),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outputs = [node.communicate(timeout=300)[0] for node in nodes]
    for node, output in zip(nodes, outputs):
        assert node.returncode == 0, output[-3000:]
    assert "2 process(es)" in outputs[0]
    one_node, two_nodes = weights(tmp_path / "one_node" / "last"), weights(tmp_path / "two_nodes" / "last")
    moved = max_difference(one_node, load_file(str(tiny_setup["models"] / "tiny-student" / "model.safetensors")))
    assert max_difference(two_nodes, one_node) < 1e-6 * moved

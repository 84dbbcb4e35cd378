"""The README's first command: the embedded default job, end to end, through the real script."""

import json
import os
import subprocess

import numpy as np
import torch

from minillm.data.indexed_dataset import ShardedIndexedDataset, split_prompt_target


def test_default_job_end_to_end(tmp_path, repo_root):
    # Five epochs of round 1's 300 examples for the teacher, two for each student (after fewer, not all greedy
    # outputs parse as an answer yet); MiniLLM for five rollout collections.
    env = dict(os.environ, WORK=str(tmp_path), TRAIN_PER_ROUND="300", EVAL_PER_ROUND="60", VOCAB_SIZE="256",
               TEACHER_STEPS="90", STUDENT_STEPS="40", MINILLM_STEPS="80")
    done = subprocess.run(["bash", str(repo_root / "t5-scripts" / "run_default.sh"), str(repo_root)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "== done" in done.stdout

    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    data = tmp_path / "processed_data" / "synthetic_nli"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models" / "tokenizer")
    assert len(tokenizer) == 256
    meta = json.loads((data / "meta.json").read_text())
    assert meta["dtype"] == "uint16" and meta["prompts_cut"] == 0
    for round_name, n_train in (("r1", 300), ("r3", 300), ("all", 900)):
        assert len(ShardedIndexedDataset(data / "full" / round_name, "train")) == n_train
        assert len(ShardedIndexedDataset(data / "prompt" / round_name, "dev")) == n_train // 5
    item = ShardedIndexedDataset(data / "full" / "r2", "dev")[0]
    prompt, target = split_prompt_target(item, 65535)
    record = json.loads((data / "full" / "r2" / "dev.jsonl").open().readline())
    assert tokenizer.unk_token_id not in item  # the trained vocabulary covers every character of the data
    assert " ".join(tokenizer.decode(prompt, skip_special_tokens=True).split()) == " ".join(record["prompt"].split())
    assert tokenizer.decode(target, skip_special_tokens=True) == record["target"]

    for name in ("tiny-teacher", "tiny-student"):
        model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "models" / name)
        with torch.no_grad():
            out = model(input_ids=torch.tensor(prompt[None].astype(np.int64)),
                        labels=torch.tensor(target[None].astype(np.int64)))
        assert out.logits.shape == (1, len(target), 256) and torch.isfinite(out.loss)

    # Steps 5-12: teacher and student SFT'd on round 1, the student distilled by KD, SeqKD and MiniLLM through the
    # recipes, the five best/ and last/ checkpoints scored on test, every round, and the comparison table. (At this
    # test's size nothing learns beyond chance: learning is tested in test_distillation_learns.py and measured by
    # the full-size job, README.)
    assert "summary: accuracy (rank classification) on test" in done.stdout
    table = done.stdout[done.stdout.index("accuracy_rank on test of each method's best/ checkpoint, 1 run"):]
    assert "best/ selected by dev accuracy (ties to the later step)" in table and "warning" not in table
    assert "note: one run is one draw" in table
    results = tmp_path / "results"
    runs = [results / "sft" / "teacher", results / "sft" / "student", results / "kd" / "student",
            results / "seqkd" / "student", results / "minillm" / "student"]
    for run in runs:
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("padding" in r for r in log) and any(r.get("split") == "dev" for r in log)
        assert json.loads((run / "last" / "args.json").read_text())["train_round"] == "r1"
        for folder in ("best", "last"):
            test = json.loads((run / folder / "eval" / "test" / "results.json").read_text())
            assert sorted(test["rounds"]) == ["r1", "r2", "r3"] and test["overall"]["n"] == 180
            assert test["overall"]["unparsed"] == 0
        assert json.loads((run / "best" / "trainer_state.json").read_text())["select_by"] == "accuracy"
    # MiniLLM starts from the SFT student's best_loss/ (MiniLLM's rule for its initialisation)
    sft_args = json.loads((results / "minillm" / "student" / "last" / "args.json").read_text())
    assert sft_args["model_path"] == str(results / "sft" / "student" / "best_loss")
    assert json.loads((results / "sft" / "student" / "best_loss" / "trainer_state.json").read_text())[
        "selections"]["best_loss"]["select_by"] == "loss"
    kd_log = [json.loads(line) for line in (results / "kd" / "student" / "metrics.jsonl").open()]
    assert all(r["kd"] > 0 and "ce" in r for r in kd_log if "padding" in r)

    # SeqKD trained on exactly the teacher's greedy outputs for the training round
    assert sorted(p.name for p in (results / "seqkd_gen").iterdir() if p.is_dir()) == ["r1"]
    generated = [json.loads(line) for line in (results / "seqkd_gen" / "r1" / "train.jsonl").open()]
    shards = ShardedIndexedDataset(tmp_path / "processed_data" / "seqkd" / "full" / "r1", "train")
    assert len(generated) == len(shards) == 300
    assert all(split_prompt_target(shards[i], 65535)[1].tolist() == g["target_ids"] for i, g in enumerate(generated))
    assert json.loads((results / "seqkd" / "student" / "last" / "args.json").read_text())["data_dir"] == str(
        tmp_path / "processed_data" / "seqkd")

    # MiniLLM from the SFT student: rollouts collected, the student-only reverse-KL estimate on dev goes down
    minillm_log = [json.loads(line) for line in (results / "minillm" / "student" / "metrics.jsonl").open()]
    evals = [r for r in minillm_log if r.get("split") == "dev"]
    assert [r["step"] for r in evals] == [0, 40, 80] and evals[-1]["rev_kl"] < evals[0]["rev_kl"]
    assert [r["collection"] for r in minillm_log if "collection" in r] == list(range(5))  # 16 steps per collection
    assert all({"pg", "single", "lm", "clip_frac"} <= set(r) for r in minillm_log if "padding" in r)


def test_unknown_training_round_is_refused_before_any_work(tmp_path, repo_root):
    done = subprocess.run(["bash", str(repo_root / "t5-scripts" / "run_default.sh"), str(repo_root)],
                          env=dict(os.environ, WORK=str(tmp_path / "work"), TRAIN_ROUND="r4"), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["run_default.sh: TRAIN_ROUND=r4; use r1, r2, r3 or all"]
    assert not (tmp_path / "work").exists()

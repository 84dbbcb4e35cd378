"""The README's first command: the embedded default job, end to end, through the real script."""

import json
import os
import subprocess

import numpy as np
import torch

from minillm.data.indexed_dataset import ShardedIndexedDataset, split_prompt_target


def test_default_job_end_to_end(tmp_path, repo_root):
    env = dict(os.environ, WORK=str(tmp_path), TRAIN_PER_ROUND="300", EVAL_PER_ROUND="60", VOCAB_SIZE="256")
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

    # Steps 5-8: teacher and student SFT'd and the student distilled (KD) through the recipes, the three best/
    # checkpoints scored on test per round.
    assert "summary: accuracy (rank classification) on test" in done.stdout
    for run in (tmp_path / "results" / "sft" / "teacher", tmp_path / "results" / "sft" / "student",
                tmp_path / "results" / "kd" / "student"):
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert any("padding" in r for r in log) and any(r.get("split") == "dev" for r in log)
        results = json.loads((run / "best" / "eval" / "test" / "results.json").read_text())
        assert sorted(results["rounds"]) == ["r1", "r2", "r3"] and results["overall"]["n"] == 180
        assert results["overall"]["unparsed"] == 0
    kd_log = [json.loads(line) for line in (tmp_path / "results" / "kd" / "student" / "metrics.jsonl").open()]
    assert all(r["kd"] > 0 and "ce" in r for r in kd_log if "padding" in r)

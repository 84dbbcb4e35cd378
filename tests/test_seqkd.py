"""SeqKD: teacher generation (minillm/generate_seqkd.py), pseudo-data shards (tools/process_pseudo_data_seqkd.py)
and --type seqkd, through the scripts under t5-scripts/."""

import json
import subprocess
import sys
from argparse import Namespace
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from tqdm import tqdm
from transformers import AutoModelForSeq2SeqLM

from minillm.data.indexed_dataset import ShardedIndexedDataset, split_prompt_target
from minillm.generate_seqkd import generate_share, load_prompts
from minillm.models import Seq2SeqAdapter
from minillm_helpers import assert_ok, read_jsonl, run_t5_script, script_env

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs" / "deepspeed"


def run_tool(script: str, **env_overrides) -> subprocess.CompletedProcess:
    return run_t5_script(script, script_env(**env_overrides))


@pytest.fixture(scope="module")
def generated(tiny_setup, tmp_path_factory) -> Path:
    """Greedy outputs of the (untrained) tiny teacher for every train prompt of r1-r3, from two processes."""
    out = tmp_path_factory.mktemp("seqkd") / "gen"
    assert_ok(run_tool("tools/generate_data_seqkd.sh", NUM_GPUS=2, TEACHER_CKPT=tiny_setup["models"] / "tiny-teacher",
                       DATA_DIR=tiny_setup["data_dir"], GEN_DIR=out, BATCH_SIZE=64, MAX_NEW_TOKENS=6))
    return out


def test_generation_over_two_processes_covers_every_prompt_exactly_once(tiny_setup, generated):
    meta = json.loads((generated / "meta.json").read_text())
    assert meta["processes"] == 2 and meta["prompts_per_process"] == [450, 450] and meta["outputs"] == 900
    assert not any(p.name.endswith(".tmp") for p in generated.parent.iterdir())
    for round_name in ("r1", "r2", "r3"):
        gold = read_jsonl(tiny_setup["data_dir"] / "text" / round_name / "train.jsonl")
        out = read_jsonl(generated / round_name / "train.jsonl")
        assert Counter(r["uid"] for r in out) == Counter(r["uid"] for r in gold)  # every prompt, once each
        for g, o in zip(gold, out):  # in the gold order, gold fields kept, the target replaced
            assert {k: o[k] for k in g if k != "target"} == {k: g[k] for k in g if k != "target"}
            assert o["gold_target"] == g["target"] and o["sample"] == 0
            assert 1 <= len(o["target_ids"]) <= 6 and o["finished"] == (o["target_ids"][-1] == 1)


def test_greedy_outputs_do_not_depend_on_the_process_count(tiny_setup, generated, tmp_path):
    assert_ok(run_tool("tools/generate_data_seqkd.sh", NUM_GPUS=1, TEACHER_CKPT=tiny_setup["models"] / "tiny-teacher",
                       DATA_DIR=tiny_setup["data_dir"], GEN_DIR=tmp_path / "one", ROUNDS="r2", BATCH_SIZE=7,
                       MAX_NEW_TOKENS=6))
    one = read_jsonl(tmp_path / "one" / "r2" / "train.jsonl")
    two = read_jsonl(generated / "r2" / "train.jsonl")
    same = sum(a["target_ids"] == b["target_ids"] for a, b in zip(one, two))
    assert len(one) == 300 and same >= 297  # other batch paddings may flip a near-tie argmax, rarely


def test_sampling_writes_n_outputs_per_prompt(tiny_setup, tmp_path):
    assert_ok(run_tool("tools/generate_data_seqkd.sh", NUM_GPUS=1, TEACHER_CKPT=tiny_setup["models"] / "tiny-teacher",
                       DATA_DIR=tiny_setup["data_dir"], GEN_DIR=tmp_path / "gen", ROUNDS="r1", DECODING="sample",
                       NUM_SAMPLES=2, TOP_K=20, TEMPERATURE=1.5, MAX_NEW_TOKENS=6))
    out = read_jsonl(tmp_path / "gen" / "r1" / "train.jsonl")
    assert len(out) == 600 and Counter(r["sample"] for r in out) == {0: 300, 1: 300}
    assert Counter(r["uid"] for r in out) == Counter({r["uid"]: 2 for r in out})
    assert sum(a["target_ids"] != b["target_ids"] for a, b in zip(out[::2], out[1::2])) > 100  # really sampled


def test_generation_never_emits_pad_even_when_its_logit_dominates(tiny_setup):
    """A hook sets pad's logit to 1e4 at every step: unbanned, greedy decoding emits only pad; the SeqKD generation
    (greedy and sampled) emits none, and its greedy outputs are those of the model without the hook."""
    teacher = AutoModelForSeq2SeqLM.from_pretrained(tiny_setup["models"] / "tiny-teacher").eval()
    adapter = Seq2SeqAdapter.for_model(teacher)
    prompts = [ids for _, ids in load_prompts(tiny_setup["data_dir"], ["r1"], "train")[:12]]
    greedy = Namespace(decoding="greedy", batch_size=5, max_new_tokens=6, num_samples=1)
    sample = Namespace(decoding="sample", batch_size=5, max_new_tokens=6, num_samples=2, temperature=1.5, top_k=0,
                       top_p=1.0)

    def generate(args) -> list[list[list[int]]]:  # per prompt, per sample: the ids
        with tqdm(disable=True) as progress:
            outputs = generate_share(teacher, adapter, prompts, list(range(len(prompts))), args, "cpu", progress)
        return [outputs[i] for i in range(len(prompts))]

    plain = generate(greedy)
    pad = torch.tensor([adapter.pad_token_id])
    handle = teacher.lm_head.register_forward_hook(lambda module, inputs, logits: logits.index_fill(-1, pad, 1e4))
    try:
        unbanned = teacher.generate(torch.tensor(prompts[0])[None], max_new_tokens=3)
        assert (unbanned[0, 1:] == adapter.pad_token_id).all()
        torch.manual_seed(0)
        dominated = {"greedy": generate(greedy), "sample": generate(sample)}
    finally:
        handle.remove()
    assert dominated["greedy"] == plain
    for outputs in dominated.values():
        ids = [t for samples in outputs for sample_ids in samples for t in sample_ids]
        assert ids and adapter.pad_token_id not in ids


def test_generation_refuses_greedy_with_several_samples(tiny_setup, tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "minillm.generate_seqkd", "--model-path", str(tiny_setup["models"] / "tiny-teacher"),
         "--data-dir", str(tiny_setup["data_dir"]), "--out-dir", str(tmp_path / "gen"), "--num-samples", "3"],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "--num-samples 3 needs --decoding sample" in done.stderr
    assert not (tmp_path / "gen").exists()

    (tmp_path / "a_file").write_text("")  # an --out-dir that cannot be written is refused before generating
    done = subprocess.run(
        [sys.executable, "-m", "minillm.generate_seqkd", "--model-path", str(tiny_setup["models"] / "tiny-teacher"),
         "--data-dir", str(tiny_setup["data_dir"]), "--out-dir", str(tmp_path / "a_file")],
        capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2 and "a_file: exists and is not a folder" in done.stderr
    assert "Traceback" not in done.stderr and "generate (process 0)" not in done.stderr


@pytest.fixture(scope="module")
def pseudo(tiny_setup, generated) -> Path:
    out = generated.parent / "pseudo"
    assert_ok(run_tool("tools/process_pseudo_data_seqkd.sh", GEN_DIR=generated, DATA_DIR=tiny_setup["data_dir"],
                       OUT_DIR=out))
    return out


def test_seqkd_shards_hold_exactly_the_teachers_outputs(tiny_setup, generated, pseudo):
    gold_dir = tiny_setup["data_dir"]
    meta = json.loads((pseudo / "meta.json").read_text())
    assert meta["train_targets"] == "teacher" and meta["teacher"]["decoding"] == "greedy"
    for round_name, rounds in (("r1", ["r1"]), ("r3", ["r3"]), ("all", ["r1", "r2", "r3"])):
        teacher_ids = [r["target_ids"] for name in rounds for r in read_jsonl(generated / name / "train.jsonl")]
        shards = ShardedIndexedDataset(pseudo / "full" / round_name, "train")
        gold = ShardedIndexedDataset(gold_dir / "full" / round_name, "train")
        assert len(shards) == len(teacher_ids)
        gold_targets_seen = 0
        for i, ids in enumerate(teacher_ids):
            prompt, target = split_prompt_target(shards[i], 65535)
            gold_prompt, gold_target = split_prompt_target(gold[i], 65535)
            assert target.tolist() == ids and np.array_equal(prompt, gold_prompt)
            gold_targets_seen += np.array_equal(target, gold_target)
        assert gold_targets_seen < len(teacher_ids) // 10  # an untrained teacher: its outputs are not the gold ones
        for kind in ("full", "prompt"):  # dev and test stay gold, byte for byte
            for split in ("dev", "test"):
                for suffix in (".bin", ".idx"):
                    name = f"{split}_0{suffix}"
                    assert (pseudo / kind / round_name / name).read_bytes() == (
                        gold_dir / kind / round_name / name).read_bytes()


def test_bad_generated_data_is_refused_in_one_line_and_leaves_output_intact(tiny_setup, generated, pseudo, tmp_path):
    """Every generated record is checked (not only the first), an empty split and a generation from another
    tokenizer are refused, and a refused run leaves the previous output as it was."""
    import shutil

    from minillm.cli.process_pseudo_data_seqkd import main

    out = tmp_path / "out"
    shutil.copytree(pseudo, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    train = generated / "r1" / "train.jsonl"
    records = read_jsonl(train)

    def refused(name: str, edit) -> str:
        bad = tmp_path / name
        shutil.copytree(generated, bad)
        edit(bad)
        with pytest.raises(SystemExit) as exit_info:
            main(["--generated-dir", str(bad), "--gold-dir", str(tiny_setup["data_dir"]), "--out-dir", str(out)])
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        assert not list(out.glob(".*tmp*"))
        return str(exit_info.value.code)

    def gold_target_on_line_2(bad):
        second = {k: v for k, v in records[1].items() if k != "target_ids"}
        lines = [records[0], second, *records[2:]]
        (bad / "r1" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    def other_tokenizer(bad):
        meta = json.loads((bad / "meta.json").read_text())
        (bad / "meta.json").write_text(json.dumps({**meta, "tokenizer": "/elsewhere/tokenizer"}))

    message = refused("missing_ids", gold_target_on_line_2)
    assert "r1/train.jsonl:2: field(s) target_ids missing" in message and "\n" not in message
    assert "r1/train.jsonl: no records" in refused("empty", lambda bad: (bad / "r1" / "train.jsonl").write_text(""))
    message = refused("truncated", lambda bad: (bad / "r1" / "train.jsonl").write_text(train.read_text()[:-20]))
    assert f"r1/train.jsonl:{len(records)}: not valid JSON" in message

    def pad_in_target_on_line_5(bad):
        fifth = {**records[4], "target_ids": [records[4]["target_ids"][0], 0, 1]}
        lines = [*records[:4], fifth, *records[5:]]
        (bad / "r1" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))

    message = refused("pad_in_target", pad_in_target_on_line_5)
    assert f"r1/train.jsonl:5: uid {records[4]['uid']}: target_ids hold the pad id 0" in message
    assert "\n" not in message
    assert "tokenizer '/elsewhere/tokenizer' but DATA_DIR" in refused("other_tokenizer", other_tokenizer)


def finetune(tiny_setup, data_dir, save_dir, *flags) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "minillm.finetune", "--model-path", str(tiny_setup["models"] / "tiny-student"),
         "--data-dir", str(data_dir), "--save-dir", str(save_dir), "--deepspeed-config",
         str(CONFIGS / "zero0_fp32.json"), "--max-steps", "3", "--batch-size", "8", "--eval-max-examples", "10",
         "--no-eval-generate", "--log-interval", "1", *flags],
        capture_output=True, text=True, timeout=300, cwd=REPO)


def test_seqkd_refuses_gold_training_targets(tiny_setup, tmp_path):
    done = finetune(tiny_setup, tiny_setup["data_dir"], tmp_path, "--type", "seqkd")
    assert done.returncode != 0
    assert "--type seqkd" in done.stderr and "holds gold training targets" in done.stderr
    done = finetune(tiny_setup, tiny_setup["data_dir"], tmp_path, "--type", "seqkd", "--kd-ratio", "0.5")
    assert "--type seqkd with --kd-ratio 0.5 needs --teacher-model-path" in done.stderr


def test_seqkd_script_trains_on_teacher_targets_with_optional_word_level_kd(tiny_setup, pseudo, tmp_path):
    env = dict(CKPT=tiny_setup["models"] / "tiny-student", DATA_DIR=pseudo, NUM_GPUS=1, BATCH_SIZE=8, GRAD_ACC=1,
               LR="1e-3", EPOCHS=1, MAX_STEPS=3, EVAL_INTERVAL=3, WARMUP_STEPS=1, DS_CONFIG=CONFIGS / "zero0_fp32.json",
               TEACHER_CKPT=tiny_setup["models"] / "tiny-teacher",
               EXTRA_ARGS="--eval-max-examples 10 --no-eval-generate --log-interval 1")
    assert_ok(run_tool("seqkd/seqkd_small.sh", SAVE_DIR=tmp_path / "plain", **env))
    args = json.loads((tmp_path / "plain" / "last" / "args.json").read_text())
    assert (args["type"], args["kd_ratio"], args["data_dir"]) == ("seqkd", 0.0, str(pseudo))
    train = [r for r in read_jsonl(tmp_path / "plain" / "metrics.jsonl") if "padding" in r]
    assert len(train) == 3 and all("kd" not in r for r in train)
    evals = [r for r in read_jsonl(tmp_path / "plain" / "metrics.jsonl") if r.get("split") == "dev"]
    assert evals[-1]["option_rev_kl"] is None  # no teacher loaded without word-level KD
    assert_ok(run_tool("seqkd/seqkd_small.sh", SAVE_DIR=tmp_path / "mixed", KD_RATIO=0.5, **env))
    train = [r for r in read_jsonl(tmp_path / "mixed" / "metrics.jsonl") if "padding" in r]
    assert all(r["kd"] > 0 and r["loss"] == pytest.approx(0.5 * r["ce"] + 0.5 * r["kd"], rel=1e-5) for r in train)
    evals = [r for r in read_jsonl(tmp_path / "mixed" / "metrics.jsonl") if r.get("split") == "dev"]
    assert evals[-1]["option_rev_kl"] > 0 and evals[-1]["option_fwd_kl"] > 0  # scored against the loaded teacher

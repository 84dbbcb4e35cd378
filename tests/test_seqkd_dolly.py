"""SeqKD on Dolly: a decoder-only teacher (tiny GPT-2, through scripts/gpt2/tools/) and an encoder-decoder one (tiny
T5) answer every training prompt of a small Dolly folder built on the spot (tools/make_dolly_sample.py, then
tools/process_data_dolly.py), and tools/process_pseudo_data_seqkd.py shards the answers: train targets are the
teacher's ids, prompts, dev and test the gold folder's."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minillm.cli import process_data_dolly, process_pseudo_data_seqkd
from minillm.data.indexed_dataset import ShardedIndexedDataset, split_prompt_target
from minillm.data.seq2seq import Seq2SeqExamples
from minillm.generate_seqkd import resolve_rounds
from minillm.models import adapter_for
from minillm.models.tiny import (build_causal_model, build_model, model_vocab_size, save_checkpoint,
                                 train_causal_tokenizer, train_tokenizer)
from minillm_helpers import read_jsonl, run_ok, write_dolly_sample

REPO = Path(__file__).resolve().parents[1]
ROWS, DEV_NUM, TEST_NUM = 60, 10, 10
MAX_NEW_TOKENS = 8
SEP = 65535


def end_sampled_answers_early(model, eos_token_id: int, eos_logit: float = 4.7) -> None:
    """Give EOS a logit of about ``eos_logit`` (std 1) at every position of a GPT-2, so that about one sampled step
    in six ends the answer: the final layer norm adds ``eos_logit * u`` to every hidden state and EOS's output row
    (tied to its embedding) is the unit vector ``u``. The other logits stay near 0."""
    width = model.config.n_embd
    u = torch.nn.functional.normalize(torch.randn(width, generator=torch.Generator().manual_seed(0)), dim=0)
    with torch.no_grad():
        model.transformer.ln_f.bias.copy_(eos_logit * u)
        model.lm_head.weight[eos_token_id] = u


@pytest.fixture(scope="module")
def dolly_sample(tmp_path_factory) -> tuple[Path, list[str]]:
    """The offline sample file and a tokenizer corpus (the template's text and every field of every row)."""
    return write_dolly_sample(tmp_path_factory.mktemp("dolly_raw"), ROWS)


def process_dolly(raw_file: Path, out_dir: Path, tokenizer_dir: Path, model_type: str) -> Path:
    process_data_dolly.main(["--raw-file", str(raw_file), "--out-dir", str(out_dir), "--tokenizer",
                             str(tokenizer_dir), "--model-type", model_type, "--dev-num", str(DEV_NUM),
                             "--test-num", str(TEST_NUM)])
    return out_dir


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory, dolly_sample) -> dict:
    """A tiny GPT-2 teacher that ends about one sampled step in six, its Dolly folder, its answers (MiniLLM's
    recipe through scripts/gpt2/tools/generate_data_seqkd.sh, cut at MAX_NEW_TOKENS) and their SeqKD shards
    (scripts/gpt2/tools/process_pseudo_data_seqkd.sh)."""
    raw_file, corpus = dolly_sample
    work = tmp_path_factory.mktemp("seqkd_dolly_gpt2")
    tokenizer = train_causal_tokenizer("gpt2", corpus, work / "tokenizer", vocab_size=600)
    teacher = build_causal_model("gpt2", "tiny-teacher", model_vocab_size(tokenizer))
    end_sampled_answers_early(teacher, tokenizer.eos_token_id)
    save_checkpoint(teacher, tokenizer, work / "teacher")
    data_dir = process_dolly(raw_file, work / "data", work / "tokenizer", "causal")
    paths = dict(TEACHER_CKPT=work / "teacher", DATA_DIR=data_dir, GEN_DIR=work / "gen", OUT_DIR=work / "seqkd")
    run_ok(["bash", "scripts/gpt2/tools/generate_data_seqkd.sh", str(work), "1"], BATCH_SIZE=16,
        EXTRA_ARGS=f"--max-new-tokens {MAX_NEW_TOKENS}", **paths)
    run_ok(["bash", "scripts/gpt2/tools/process_pseudo_data_seqkd.sh", str(work)], **paths)
    return {"tokenizer": tokenizer, "teacher": teacher, "data": data_dir, "gen": paths["GEN_DIR"],
            "seqkd": paths["OUT_DIR"]}


@pytest.fixture(scope="module")
def t5(tmp_path_factory, dolly_sample) -> dict:
    """A tiny T5 teacher, its Dolly folder (prompts ending in EOS), its greedy answers and their SeqKD shards."""
    raw_file, corpus = dolly_sample
    work = tmp_path_factory.mktemp("seqkd_dolly_t5")
    tokenizer = train_tokenizer(corpus, work / "tokenizer", vocab_size=400)
    save_checkpoint(build_model("tiny-teacher", model_vocab_size(tokenizer)), tokenizer, work / "teacher")
    data_dir = process_dolly(raw_file, work / "data", work / "tokenizer", "auto")
    run_ok([sys.executable, "-m", "minillm.generate_seqkd", "--model-path", str(work / "teacher"), "--data-dir",
         str(data_dir), "--out-dir", str(work / "gen"), "--max-new-tokens", str(MAX_NEW_TOKENS)])
    process_pseudo_data_seqkd.main(["--generated-dir", str(work / "gen"), "--gold-dir", str(data_dir),
                                    "--out-dir", str(work / "seqkd")])
    return {"tokenizer": tokenizer, "data": data_dir, "gen": work / "gen", "seqkd": work / "seqkd"}


def check_one_answer_per_train_prompt(setup: dict) -> list[dict]:
    """The checks every family shares; returns the generated records."""
    eos = setup["tokenizer"].eos_token_id
    gold = read_jsonl(setup["data"] / "prompt" / "dolly" / "train.jsonl")
    out = read_jsonl(setup["gen"] / "dolly" / "train.jsonl")
    meta = json.loads((setup["gen"] / "meta.json").read_text())
    assert (meta["task"], meta["rounds"], meta["outputs"]) == ("dolly", ["dolly"], len(gold))
    assert meta["unparsed"] is None and meta["agree_with_gold"] is None  # no options: no answer to parse or score
    assert [r["uid"] for r in out] == [r["uid"] for r in gold]  # one answer per prompt, in the gold order
    for g, o in zip(gold, out):
        assert {k: o[k] for k in g if k != "target"} == {k: g[k] for k in g if k != "target"}
        assert o["gold_target"] == g["target"] and o["sample"] == 0 and "teacher_answer" not in o
        ids = o["target_ids"]
        assert o["target"] == setup["tokenizer"].decode(ids, skip_special_tokens=True)
        if o["finished"]:  # ends at its first EOS ...
            assert 1 <= len(ids) <= MAX_NEW_TOKENS and ids.index(eos) == len(ids) - 1
        else:  # ... or is cut at --max-new-tokens, without EOS
            assert len(ids) == MAX_NEW_TOKENS and eos not in ids
    assert meta["unfinished"] == sum(not o["finished"] for o in out)
    return out


def check_shards(setup: dict, prompts_end_in_eos: bool) -> None:
    """Train items: the gold prompt ids, then the teacher's ids exactly; records: gold with the teacher's text;
    dev and test: the gold folder's files, byte for byte."""
    gold_dir, seqkd, tokenizer = setup["data"], setup["seqkd"], setup["tokenizer"]
    generated = read_jsonl(setup["gen"] / "dolly" / "train.jsonl")
    meta = json.loads((seqkd / "meta.json").read_text())
    gold_meta = json.loads((gold_dir / "meta.json").read_text())
    assert meta["train_targets"] == "teacher" and meta["task"] == "dolly" and meta["rounds"] == ["dolly"]
    assert {k: meta[k] for k in ("tokenizer", "model_type", "dtype")} == {
        k: gold_meta[k] for k in ("tokenizer", "model_type", "dtype")}
    assert meta["splits"]["dolly/train"]["examples"] == len(generated)
    full = ShardedIndexedDataset(seqkd / "full" / "dolly", "train")
    gold_prompts = ShardedIndexedDataset(gold_dir / "prompt" / "dolly", "train")
    examples = Seq2SeqExamples(seqkd, "dolly", "train", max_prompt_length=256, max_target_length=256)
    assert len(full) == len(examples) == len(generated)
    for i, record in enumerate(generated):
        prompt, target = split_prompt_target(full[i], SEP)
        assert np.array_equal(prompt, gold_prompts[i]) and (prompt[-1] == tokenizer.eos_token_id) == prompts_end_in_eos
        assert target.tolist() == record["target_ids"]
        assert tokenizer.decode(target, skip_special_tokens=True) == record["target"]
        assert [a.tolist() for a in examples[i]] == [prompt.tolist(), target.tolist()]  # what training reads
    records = read_jsonl(seqkd / "full" / "dolly" / "train.jsonl")
    gold_records = read_jsonl(gold_dir / "full" / "dolly" / "train.jsonl")
    assert records == [{**g, "target": o["target"]} for g, o in zip(gold_records, generated)]
    assert (seqkd / "prompt" / "dolly" / "train_0.bin").read_bytes() == (
        gold_dir / "prompt" / "dolly" / "train_0.bin").read_bytes()
    for kind in ("full", "prompt"):
        for split in ("dev", "test"):
            for name in (f"{split}_0.bin", f"{split}_0.idx", f"{split}.jsonl"):
                assert (seqkd / kind / "dolly" / name).read_bytes() == (gold_dir / kind / "dolly" / name).read_bytes()
    assert read_jsonl(seqkd / "text" / "dolly" / "train.jsonl") == generated
    assert not list(seqkd.glob(".*tmp*"))


def test_gpt2_teacher_samples_one_answer_per_train_prompt(gpt2):
    out = check_one_answer_per_train_prompt(gpt2)
    meta = json.loads((gpt2["gen"] / "meta.json").read_text())
    assert (meta["decoding"], meta["temperature"], meta["top_k"], meta["top_p"]) == ("sample", 1.0, 0, 1.0)
    assert adapter_for(gpt2["teacher"], gpt2["tokenizer"]).banned_ids == () and meta["banned_ids"] == []
    finished = sum(o["finished"] for o in out)
    assert 0 < finished < len(out)  # GPT-2's pad is its EOS: never banned, so answers can end


def test_gpt2_seqkd_shards_train_on_the_teachers_answers(gpt2):
    check_shards(gpt2, prompts_end_in_eos=False)
    meta = json.loads((gpt2["seqkd"] / "meta.json").read_text())
    assert meta["teacher"]["decoding"] == "sample" and meta["teacher"]["max_new_tokens"] == MAX_NEW_TOKENS


def test_t5_teacher_on_dolly(t5):
    check_one_answer_per_train_prompt(t5)
    meta = json.loads((t5["gen"] / "meta.json").read_text())
    assert meta["banned_ids"] == [t5["tokenizer"].pad_token_id]
    generated = read_jsonl(t5["gen"] / "dolly" / "train.jsonl")
    assert all(t5["tokenizer"].pad_token_id not in r["target_ids"] for r in generated)
    check_shards(t5, prompts_end_in_eos=True)


def test_rounds_are_the_data_folders(gpt2):
    gold_meta = json.loads((gpt2["data"] / "meta.json").read_text())
    assert resolve_rounds(None, gold_meta, gpt2["data"]) == ["dolly"]
    assert resolve_rounds(None, {"rounds": ["r1", "r2", "r3", "all"]}, gpt2["data"]) == ["r1", "r2", "r3"]
    with pytest.raises(ValueError, match=r"^--rounds r1: not a round of --data-dir .* \(its rounds: dolly\)$"):
        resolve_rounds(["r1"], gold_meta, gpt2["data"])


def test_a_generation_that_does_not_match_the_gold_folder_is_refused(gpt2, tmp_path):
    """A uid the gold split lacks, and a banned id in a target, end the tool with one line naming the line; the
    output folder is left as it was."""
    import shutil

    out = tmp_path / "seqkd"
    shutil.copytree(gpt2["seqkd"], out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    records = read_jsonl(gpt2["gen"] / "dolly" / "train.jsonl")

    def refused(name: str, lines: list[dict], meta_update: dict) -> str:
        bad = tmp_path / name
        shutil.copytree(gpt2["gen"], bad)
        (bad / "dolly" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
        meta = json.loads((bad / "meta.json").read_text())
        (bad / "meta.json").write_text(json.dumps({**meta, **meta_update}))
        with pytest.raises(SystemExit) as exit_info:
            process_pseudo_data_seqkd.main(["--generated-dir", str(bad), "--gold-dir", str(gpt2["data"]),
                                            "--out-dir", str(out)])
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
        assert not list(out.glob(".*tmp*"))
        message = str(exit_info.value.code)
        assert "\n" not in message
        return message

    stranger = [records[0], {**records[1], "uid": "dolly-99999"}, *records[2:]]
    assert "dolly/train.jsonl:2: uid dolly-99999 is not in" in refused("stranger", stranger, {})
    # as if the teacher's adapter had banned id 5 (an OPT-like pad), which a target then holds
    holding = [*records[:2], {**records[2], "target_ids": [7, 5, 0]}, *records[3:]]
    message = refused("banned", holding, {"banned_ids": [5]})
    assert f"dolly/train.jsonl:3: uid {records[2]['uid']}: target_ids hold the pad id 5" in message

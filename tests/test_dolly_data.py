"""Dolly processing (MiniLLM's format, template, splits and length rule) for causal and seq2seq tokenizers, the
offline sample, bad input, the shell wrappers, and ANLI for decoder-only tokenizers."""

import json
import os
import re
import subprocess
import unicodedata

import numpy as np
import pyarrow.parquet as pq
import pytest

from minillm.data.anli import DataError
from minillm.data.dolly import build_dolly_shards, build_dolly_text, sample_rows, write_jsonl_atomically
from minillm.data.indexed_dataset import ShardedIndexedDataset, split_prompt_target
from minillm.data.process import build_shards, build_text
from minillm.data.seq2seq import Seq2SeqExamples
from minillm.data.templates import ANSWER_CUE, get_instruction_template, get_template
from minillm.models.tiny import train_causal_tokenizer
from minillm_helpers import read_jsonl

SEP = 65535
SPLITS = ("train", "dev", "test")
DEV_NUM, TEST_NUM, ROWS = 20, 15, 120
MINILLM_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n### Instruction:\nName the river.\n\n"
    "### Input:\nThe Dalri flows here.\n\n### Response:\n")
MINILLM_WITHOUT_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\nName the river.\n\n### Response:\n")


@pytest.fixture(scope="module")
def sample_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("dolly_raw") / "sample.jsonl"
    write_jsonl_atomically(path, sample_rows(ROWS))
    return path


@pytest.fixture(scope="module")
def causal_tokenizers(tmp_path_factory, sample_file):
    """Tiny GPT-2, OPT and LLaMA tokenizers trained on the sample's text and the template: folder per family."""
    template = get_instruction_template("alpaca")
    texts = [template.prompt("x", "y"), template.prompt("x", "")]
    texts += [" ".join(r.values()) for r in (json.loads(line) for line in open(sample_file, encoding="utf-8"))]
    folders = {}
    for family in ("gpt2", "opt", "llama"):
        folders[family] = tmp_path_factory.mktemp(f"tok_{family}")
        train_causal_tokenizer(family, texts, folders[family], vocab_size=600)
    return folders


def load(folder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


def process(raw_file, out_dir, tokenizer_dir, max_prompt_length=256, model_type="auto", **text_kwargs):
    build_dolly_text(raw_file, out_dir, dev_num=text_kwargs.pop("dev_num", DEV_NUM),
                     test_num=text_kwargs.pop("test_num", TEST_NUM), **text_kwargs)
    return build_dolly_shards(out_dir, str(tokenizer_dir), max_prompt_length=max_prompt_length, model_type=model_type)


def test_template_is_minillms_with_and_without_input():
    template = get_instruction_template("alpaca")
    assert template.prompt("Name the river.", "The Dalri flows here.") == MINILLM_WITH_INPUT
    assert template.prompt("Name the river.", "") == MINILLM_WITHOUT_INPUT


def test_sample_is_deterministic_varied_and_valid(tmp_path):
    rows = sample_rows(300)
    assert rows == sample_rows(300) and rows != sample_rows(300, seed=1)
    assert len({r["category"] for r in rows}) == 8
    with_context = sum(bool(r["context"]) for r in rows)
    assert 0.25 * len(rows) < with_context < 0.75 * len(rows)
    assert any("\n" in r["response"] for r in rows) and any(not r["response"].isascii() or not r["context"].isascii()
                                                            for r in rows)
    assert len({r["instruction"] for r in rows}) > 250
    subprocess.run(["python", "tools/make_dolly_sample.py", "--out", str(tmp_path / "s.jsonl"), "--rows", "300"],
                   check=True, capture_output=True)
    assert read_jsonl(tmp_path / "s.jsonl") == rows


@pytest.mark.parametrize("family", ["gpt2", "opt", "llama"])
def test_causal_items_decode_to_the_templated_text(tmp_path, sample_file, causal_tokenizers, family):
    meta = process(sample_file, tmp_path, causal_tokenizers[family])
    tokenizer = load(causal_tokenizers[family])
    eos = tokenizer.eos_token_id
    assert meta["model_type"] == "causal" and meta["task"] == "dolly" and meta["target"] == "response"
    assert meta["rounds"] == ["dolly"] and meta["template"] == "alpaca"
    template = get_instruction_template("alpaca")
    raw = read_jsonl(sample_file)
    for split in SPLITS:
        full = ShardedIndexedDataset(tmp_path / "full" / "dolly", split)
        prompts = ShardedIndexedDataset(tmp_path / "prompt" / "dolly", split)
        records = read_jsonl(tmp_path / "full" / "dolly" / f"{split}.jsonl")
        assert len(full) == len(prompts) == len(records) == meta["splits"][f"dolly/{split}"]["examples"]
        assert read_jsonl(tmp_path / "prompt" / "dolly" / f"{split}.jsonl") == records
        for i, record in enumerate(records):
            row = raw[int(record["uid"].split("-")[1])]
            assert record["prompt"] == template.prompt(row["instruction"], row["context"])
            assert record["target"] == row["response"]
            assert record["label"] is None and record["options"] == []
            prompt, target = split_prompt_target(full[i], SEP)
            assert np.array_equal(prompt, prompts[i])
            assert prompt[-1] != eos and target[-1] == eos and eos not in target[:-1]
            assert tokenizer.decode(prompt.tolist()) == record["prompt"]
            assert tokenizer.decode(prompt.tolist() + target[:-1].tolist()) == record["prompt"] + record["target"]


def test_splits_and_dropped_prompts_follow_minillm(tmp_path, sample_file, causal_tokenizers):
    """The first DEV_NUM rows are dev and the next TEST_NUM test, in file order; a prompt over the limit drops its
    example, counted per split; responses are never cut."""
    tokenizer = load(causal_tokenizers["llama"])
    limit = 200
    meta = process(sample_file, tmp_path, causal_tokenizers["llama"], max_prompt_length=limit)
    text = {split: read_jsonl(tmp_path / "text" / "dolly" / f"{split}.jsonl") for split in SPLITS}
    assert [len(text[s]) for s in SPLITS] == [ROWS - DEV_NUM - TEST_NUM, DEV_NUM, TEST_NUM]
    assert [r["uid"] for s in ("dev", "test", "train") for r in text[s]] == [f"dolly-{i:05d}" for i in range(ROWS)]
    for split in SPLITS:
        lengths = {r["uid"]: len(tokenizer(r["prompt"], add_special_tokens=False).input_ids) for r in text[split]}
        kept = [r["uid"] for r in read_jsonl(tmp_path / "full" / "dolly" / f"{split}.jsonl")]
        assert kept == [uid for uid, n in lengths.items() if n <= limit]
        assert meta["prompts_dropped"][split] == len(lengths) - len(kept)
    assert sum(meta["prompts_dropped"].values()) > 0
    assert max(meta["splits"][f"dolly/{s}"]["max_target_tokens"] for s in SPLITS) > 60  # long responses kept whole


def test_causal_target_ids_across_a_merged_boundary(causal_tokenizers):
    """MiniLLM's rule (the target is what follows the prompt's ids in the joint encoding) where it holds; the
    target's own ids where a merge crosses the boundary; prompt + target ids decode to the text either way."""
    from minillm.data.process import encode_prompts, encode_targets

    tokenizer = load(causal_tokenizers["gpt2"])

    def ids(text):
        return tokenizer(text, add_special_tokens=False).input_ids

    # a word the vocabulary holds whole, cut where its first half does not encode as a prefix of the whole
    word = next(w for w in sorted(tokenizer.get_vocab()) if w.isalpha() and len(w) >= 5
                and ids(w)[: len(ids(w[:2]))] != ids(w[:2]))
    prompts, targets = ["### Response:\n", word[:2]], ["About 3.", word[2:] + " again"]
    prompt_ids = encode_prompts(tokenizer, prompts, "causal")
    target_ids, alone = encode_targets(tokenizer, prompts, prompt_ids, targets, "causal")
    assert target_ids[0] == ids(prompts[0] + targets[0])[len(prompt_ids[0]):] + [tokenizer.eos_token_id]
    assert alone == 1 and target_ids[1] == ids(targets[1]) + [tokenizer.eos_token_id]
    for p, t, prompt, target in zip(prompt_ids, target_ids, prompts, targets):
        assert t[-1] == tokenizer.eos_token_id and tokenizer.decode(p + t[:-1]) == prompt + target


def test_seq2seq_tokenizer_prompts_end_in_eos(tmp_path, sample_file, flan_t5_tokenizer_dir):
    meta = process(sample_file, tmp_path, flan_t5_tokenizer_dir)
    assert meta["model_type"] == "seq2seq" and meta["eos_token_id"] == 1
    tokenizer = load(flan_t5_tokenizer_dir)

    def normalised(text):  # SentencePiece folds whitespace, line breaks included, and applies NFKC
        return " ".join(unicodedata.normalize("NFKC", text).split())

    examples = Seq2SeqExamples(tmp_path, "dolly", "dev", max_prompt_length=256, max_target_length=256)
    for (prompt, target), record in zip((examples[i] for i in range(len(examples))), examples.records()):
        assert prompt[-1] == target[-1] == 1
        assert normalised(tokenizer.decode(prompt, skip_special_tokens=True)) == normalised(record["prompt"])
        assert normalised(tokenizer.decode(target, skip_special_tokens=True)) == normalised(record["target"])


def test_minillm_and_databricks_field_names_give_identical_shards(tmp_path, sample_file, causal_tokenizers):
    renamed = [{"instruction": r["instruction"], "input": r["context"], "output": r["response"]}
               for r in read_jsonl(sample_file)]
    write_jsonl_atomically(tmp_path / "raw.jsonl", renamed)
    process(sample_file, tmp_path / "a", causal_tokenizers["gpt2"])
    process(tmp_path / "raw.jsonl", tmp_path / "b", causal_tokenizers["gpt2"])
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*_0.*"))
    assert len(files) == 2 * 3 * 2
    for relative in files:
        assert (tmp_path / "a" / relative).read_bytes() == (tmp_path / "b" / relative).read_bytes()


@pytest.mark.parametrize("line, expected", [
    ('{"context": "c", "response": "r"}', "missing field instruction"),
    ('{"instruction": "i", "context": "c"}', "missing field response (or output)"),
    ('{"instruction": "i", "response": 3}', "field response is 3, expected a string"),
    ('{"instruction": "i", "response": "  "}', "field response is empty"),
    ('{"instruction": "i", "context": "c", "input": "c", "response": "r"}', "fields context and input both given"),
    ('{"instruction": "i", "response": "r", "category": 1}', "field category is 1"),
    ('["i", "r"]', "a JSON list, expected an object"),
    ('{"instruction": "i", ', "not valid JSON"),
])
def test_bad_rows_stop_with_one_line_naming_file_and_line(tmp_path, line, expected):
    raw = tmp_path / "raw.jsonl"
    raw.write_text('{"instruction": "a", "response": "b"}\n\n' + line + "\n")
    with pytest.raises(DataError, match=f"^{re.escape(str(raw))}:3: ") as err:
        build_dolly_text(raw, tmp_path / "out", dev_num=0, test_num=0)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_download_writes_databricks_fields_or_fails_in_one_line(tmp_path, monkeypatch):
    import sys
    import types

    from minillm.data.dolly import download_dolly

    rows = [{"instruction": "i", "context": "", "response": "r", "category": "open_qa", "extra": 1}]
    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=lambda name, split: rows))
    out = download_dolly(tmp_path / "dolly")
    assert out == tmp_path / "dolly" / "databricks-dolly-15k.jsonl"
    assert read_jsonl(out) == [{k: v for k, v in rows[0].items() if k != "extra"}]

    def offline(name, split):
        raise ConnectionError("no route to host\nsecond line")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=offline))
    with pytest.raises(DataError, match=r"^downloading databricks/databricks-dolly-15k into .* failed "
                                        r"\(ConnectionError: no route to host\); pip install datasets") as err:
        download_dolly(tmp_path / "other")
    assert "\n" not in str(err.value) and not list((tmp_path / "other").glob("*"))


def test_too_few_rows_for_the_held_out_splits(tmp_path, sample_file):
    with pytest.raises(DataError, match=f"{ROWS} examples leave none for train after DEV_NUM=100 and TEST_NUM=20"):
        build_dolly_text(sample_file, tmp_path, dev_num=100, test_num=20)


def test_failed_rerun_keeps_the_previous_output(tmp_path, sample_file, causal_tokenizers):
    process(sample_file, tmp_path, causal_tokenizers["gpt2"])
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    bad = tmp_path.parent / f"{tmp_path.name}_bad.jsonl"
    bad.write_text('{"instruction": "i"}\n')
    done = subprocess.run(["python", "tools/process_data_dolly.py", "--raw-file", str(bad), "--out-dir",
                           str(tmp_path), "--tokenizer", str(causal_tokenizers["gpt2"])],
                          capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.splitlines() == [f"process_data_dolly: error: {bad}:1: missing field response (or output)"]
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before


def test_shell_wrapper_runs_with_overrides(tmp_path, repo_root, sample_file, causal_tokenizers):
    env = {**os.environ, "RAW_FILE": str(sample_file), "TOKENIZER": str(causal_tokenizers["opt"]),
           "DEV_NUM": str(DEV_NUM), "TEST_NUM": str(TEST_NUM), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(repo_root / "scripts/opt/tools/process_data_dolly.sh"), str(tmp_path)], env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "processed_data" / "dolly" / "opt" / "meta.json").read_text())
    assert meta["model_type"] == "causal" and meta["max_prompt_length"] == 256 and meta["test_num"] == TEST_NUM
    assert meta["dev_num"] == DEV_NUM and meta["tokenizer"] == str(causal_tokenizers["opt"])


@pytest.mark.parametrize("family, tokenizer", [("gpt2", "gpt2"), ("opt", "facebook/opt-1.3b"),
                                               ("llama", "huggyllama/llama-7b")])
def test_shell_wrapper_defaults_and_help(tmp_path, repo_root, family, tokenizer):
    script = repo_root / "scripts" / family / "tools" / "process_data_dolly.sh"
    shown = subprocess.run(["bash", str(script), "-h"], capture_output=True, text=True)
    assert shown.returncode == 0 and "RAW_FILE" in shown.stdout and "TOKENIZER" in shown.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("RAW_FILE", "TOKENIZER", "OUT_DIR")}
    done = subprocess.run(["bash", str(script), str(tmp_path)], env={**env, "DRY_RUN": "1"}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    flags = done.stdout.split()
    expected = {"--download-dir": str(tmp_path / "data" / "dolly"), "--tokenizer": tokenizer, "--model-type": "causal",
                "--max-prompt-length": "256", "--dev-num": "1000", "--test-num": "500", "--template": "alpaca",
                "--out-dir": str(tmp_path / "processed_data" / "dolly" / family)}
    assert {flag: flags[flags.index(flag) + 1] for flag in expected} == expected


# ------------------------------------------------------------------------------ ANLI for decoder-only models

@pytest.fixture(scope="module")
def small_anli(tmp_path_factory, shared_anli):
    """40 dev and 40 test examples of round 1 in the Hugging Face layout."""
    folder = tmp_path_factory.mktemp("anli_small") / "plain_text"
    folder.mkdir()
    for split in ("dev", "test"):
        table = pq.read_table(shared_anli / "plain_text" / f"{split}_r1-00000-of-00001.parquet").slice(0, 40)
        pq.write_table(table, folder / f"{split}_r1-00000-of-00001.parquet")
    return folder.parent


def test_anli_causal_prompts_end_in_the_answer_cue_not_eos(tmp_path, small_anli, flan_t5_tokenizer_dir):
    template = get_template("flan")
    rows = [r for split in ("dev", "test")
            for r in pq.read_table(small_anli / "plain_text" / f"{split}_r1-00000-of-00001.parquet").to_pylist()]
    prompts = [template.prompt(r["premise"], r["hypothesis"], answer_cue=True) for r in rows]
    tokenizer_dir = tmp_path / "tok"
    tokenizer = train_causal_tokenizer("gpt2", prompts, tokenizer_dir, vocab_size=800)
    eos = tokenizer.eos_token_id
    cue_ids = tokenizer(ANSWER_CUE, add_special_tokens=False).input_ids
    build_text(small_anli, tmp_path / "out", "flan", "label")
    limit = int(np.median([len(tokenizer(p, add_special_tokens=False).input_ids) for p in prompts]))
    meta = build_shards(tmp_path / "out", str(tokenizer_dir), max_prompt_length=limit)
    assert meta["model_type"] == "causal" and meta["task"] == "anli" and meta["rounds"] == ["r1", "all"]
    assert 0 < meta["prompts_cut"] < 80
    answers = template.answers
    for split in ("dev", "test"):
        full = ShardedIndexedDataset(tmp_path / "out" / "full" / "r1", split)
        for i, record in enumerate(read_jsonl(tmp_path / "out" / "full" / "r1" / f"{split}.jsonl")):
            prompt, target = split_prompt_target(full[i], SEP)
            assert record["prompt"].endswith(ANSWER_CUE) and len(prompt) <= limit
            assert prompt[-len(cue_ids):].tolist() == cue_ids and eos not in prompt
            assert target.tolist() == tokenizer(answers[record["label"]], add_special_tokens=False).input_ids + [eos]
            assert tokenizer.decode(prompt.tolist() + target[:-1].tolist()) == record["prompt"] + record["target"]
    # the same text for a seq2seq model: no cue, prompts end in EOS (what the T5 tests check byte for byte)
    t5_meta = build_shards(tmp_path / "out", str(flan_t5_tokenizer_dir))
    t5_records = read_jsonl(tmp_path / "out" / "full" / "r1" / "dev.jsonl")
    assert t5_meta["model_type"] == "seq2seq" and not any(r["prompt"].endswith(ANSWER_CUE) for r in t5_records)

"""The ANLI pipeline on the real dev/test splits and the real Flan-T5 tokenizer, the shard format, and bad input."""

import collections
import json
import struct
import subprocess
import unicodedata
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minillm.data.indexed_dataset import (IndexedDataset, ShardedIndexedDataset, split_prompt_target,
                                          write_indexed_dataset)
from minillm.data.process import build_shards, build_text
from minillm.data.templates import TEMPLATES
from minillm_helpers import read_jsonl

ROUND_SIZES = {"r1": 1000, "r2": 1000, "r3": 1200}
SEP = 65535
UNK = 2


def process(raw_dir, out_dir, tokenizer, **shard_kwargs):
    build_text(raw_dir, out_dir, shard_kwargs.pop("template", "flan"), shard_kwargs.pop("target", "label"))
    return build_shards(out_dir, str(tokenizer), **shard_kwargs)


@pytest.fixture(scope="module")
def hf_out(tmp_path_factory, shared_anli, flan_t5_tokenizer_dir):
    out = tmp_path_factory.mktemp("hf")
    process(shared_anli, out, flan_t5_tokenizer_dir)
    return out


@pytest.fixture(scope="module")
def original_out(tmp_path_factory, shared_anli, flan_t5_tokenizer_dir):
    out = tmp_path_factory.mktemp("original")
    process(shared_anli / "original_v1.0", out, flan_t5_tokenizer_dir)
    return out


@pytest.fixture(scope="module")
def tokenizer(flan_t5_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(flan_t5_tokenizer_dir)


def read_mmidx_independently(prefix):
    """A reader written from the documented byte layout alone (docs/data.md, the .bin/.idx byte layout)."""
    raw = Path(f"{prefix}.idx").read_bytes()
    assert raw[:9] == b"MMIDIDX\x00\x00"
    version, code, count, doc_count = struct.unpack_from("<QBQQ", raw, 9)
    assert version == 1 and doc_count == 1
    dtype = {8: np.uint16, 4: np.int32}[code]
    offset = 9 + 8 + 1 + 8 + 8
    sizes = struct.unpack_from(f"<{count}i", raw, offset)
    pointers = struct.unpack_from(f"<{count}q", raw, offset + 4 * count)
    doc_idx = struct.unpack_from(f"<{doc_count}q", raw, offset + 12 * count)
    assert doc_idx == (0,) and len(raw) == offset + 12 * count + 8 * doc_count
    data = Path(f"{prefix}.bin").read_bytes()
    itemsize = np.dtype(dtype).itemsize
    assert len(data) == sum(sizes) * itemsize
    return [np.frombuffer(data, dtype=dtype, count=n, offset=p) for n, p in zip(sizes, pointers)]


def normalised(text):
    """What survives SentencePiece round trips: T5 applies NFKC, drops invisible format characters (such as the
    left-to-right mark) and folds all whitespace, newlines too."""
    text = "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")
    return " ".join(text.split())


@pytest.mark.parametrize("split", ["dev", "test"])
def test_real_anli_counts_and_labels_match_raw(hf_out, shared_anli, split):
    for k, (round_name, size) in enumerate(ROUND_SIZES.items(), 1):
        raw = pq.read_table(shared_anli / "plain_text" / f"{split}_r{k}-00000-of-00001.parquet").to_pylist()
        records = read_jsonl(hf_out / "full" / round_name / f"{split}.jsonl")
        assert len(raw) == len(records) == size
        assert len(ShardedIndexedDataset(hf_out / "full" / round_name, split)) == size
        assert len(ShardedIndexedDataset(hf_out / "prompt" / round_name, split)) == size
        assert collections.Counter(r["label"] for r in raw) == collections.Counter(r["label"] for r in records)
        assert [r["uid"] for r in raw] == [r["uid"] for r in records]
    all_records = read_jsonl(hf_out / "full" / "all" / f"{split}.jsonl")
    assert len(all_records) == sum(ROUND_SIZES.values())
    assert len(ShardedIndexedDataset(hf_out / "full" / "all", split)) == sum(ROUND_SIZES.values())


def test_items_decode_to_their_prompt_and_target(hf_out, tokenizer):
    answers = TEMPLATES["flan"].answers
    with_unknown = 0
    for round_name in ("r1", "r2", "r3", "all"):
        full = ShardedIndexedDataset(hf_out / "full" / round_name, "dev")
        prompts = ShardedIndexedDataset(hf_out / "prompt" / round_name, "dev")
        for i, record in enumerate(read_jsonl(hf_out / "full" / round_name / "dev.jsonl")):
            prompt, target = split_prompt_target(full[i], SEP)
            assert np.array_equal(prompt, prompts[i])
            assert prompt[-1] == target[-1] == tokenizer.eos_token_id
            assert record["target"] == answers[record["label"]]
            assert tokenizer.decode(target, skip_special_tokens=True) == record["target"]
            if UNK in prompt:  # characters outside T5's vocabulary ("<", "×") cannot decode back
                with_unknown += 1
                continue
            assert normalised(tokenizer.decode(prompt, skip_special_tokens=True)) == normalised(record["prompt"])
    assert with_unknown < 0.3 * 2 * sum(ROUND_SIZES.values())  # measured: 20 %


def test_both_raw_layouts_give_identical_shards(hf_out, original_out):
    files = sorted(p.relative_to(hf_out) for p in hf_out.rglob("*") if p.is_file())
    files = [f for f in files if f.parts[0] in ("full", "prompt")]
    assert len(files) == 2 * 4 * 2 * 3  # full/prompt x 4 rounds x 2 splits x (bin, idx, jsonl)
    for relative in files:
        assert (hf_out / relative).read_bytes() == (original_out / relative).read_bytes(), relative


def test_independent_reader_agrees_with_reader_class(hf_out):
    for kind in ("full", "prompt"):
        prefix = hf_out / kind / "r2" / "test_0"
        independent = read_mmidx_independently(prefix)
        ours = IndexedDataset(prefix)
        assert len(independent) == len(ours) == 1000
        assert ours.dtype == np.uint16
        for i in (0, 1, 499, 999, -1):
            assert np.array_equal(independent[i], ours[i])
        with pytest.raises(IndexError):
            ours[1000]


def test_numbered_shards_read_as_one_dataset(tmp_path, shared_anli, flan_t5_tokenizer_dir, hf_out):
    process(shared_anli, tmp_path, flan_t5_tokenizer_dir, shard_size=300)
    assert sorted(p.name for p in (tmp_path / "full" / "r3").glob("dev_*.idx")) == [f"dev_{k}.idx" for k in range(4)]
    sharded = ShardedIndexedDataset(tmp_path / "full" / "r3", "dev")
    single = ShardedIndexedDataset(hf_out / "full" / "r3", "dev")
    assert len(sharded) == len(single) == 1200
    assert np.array_equal(sharded.sizes, single.sizes)
    for i in (0, 299, 300, 301, 899, 900, 1199):
        assert np.array_equal(sharded[i], single[i])


def test_long_prompts_lose_premise_only(tmp_path, shared_anli, flan_t5_tokenizer_dir, tokenizer, capsys):
    meta = process(shared_anli, tmp_path, flan_t5_tokenizer_dir, max_prompt_length=160, target="label_reason")
    cut_records = [r for r in read_jsonl(tmp_path / "full" / "all" / "dev.jsonl") if r["truncated"]]
    raw = {r["uid"]: r for r in read_jsonl(tmp_path / "text" / "r1" / "dev.jsonl")
           + read_jsonl(tmp_path / "text" / "r2" / "dev.jsonl") + read_jsonl(tmp_path / "text" / "r3" / "dev.jsonl")}
    assert len(cut_records) > 50
    assert f"({meta['prompts_cut']} prompts cut)" in capsys.readouterr().out
    prompts = ShardedIndexedDataset(tmp_path / "prompt" / "all", "dev")
    assert int(prompts.sizes.max()) <= 160
    for record in cut_records:
        original = raw[record["uid"]]
        suffix = TEMPLATES["flan"].prompt("", original["hypothesis"])
        assert record["prompt"].endswith(suffix)  # instruction, hypothesis and options intact
        kept_premise = record["prompt"][: -len(suffix)]
        assert 0 < len(kept_premise) < len(original["premise"])
        assert original["premise"].startswith(kept_premise)
        answer = TEMPLATES["flan"].answers[original["label"]]
        assert record["target"] == (f"{answer}. {original['reason']}" if original["reason"] else answer)


# ------------------------------------------------------------------------------------------------ bad input

def write_hf(raw_dir, rows, name="dev_r1-00000-of-00001.parquet", schema=None):
    (raw_dir / "plain_text").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), raw_dir / "plain_text" / name)


def good_rows(n=6):
    return [{"uid": f"u{i}", "premise": f"Premise number {i}.", "hypothesis": f"Hypothesis {i}.",
             "label": i % 3, "reason": "" if i % 2 else f"Reason {i}."} for i in range(n)]


def run_cli(tmp_path, raw_dir, *extra, tokenizer=None):
    from minillm.cli.process_data_anli import main

    args = ["--raw-dir", str(raw_dir), "--out-dir", str(tmp_path / "out"), *extra]
    if tokenizer is not None:
        args += ["--tokenizer", str(tokenizer)]
    try:
        main(args)
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def mutated(field, value, index=3):
    rows = good_rows()
    rows[index][field] = value
    return rows


@pytest.mark.parametrize("case, rows, expected", [
    ("label outside the set", mutated("label", 3), "field label is 3"),
    ("empty premise", mutated("premise", "  "), "field premise is empty"),
    ("empty hypothesis", mutated("hypothesis", ""), "field hypothesis is empty"),
    ("duplicate uid", mutated("uid", "u1"), "duplicate uid 'u1'"),
    ("float label", [{**r, "label": float(r["label"])} for r in good_rows()], "field label is 0.0, expected the integer"),
    ("integer uid", [{**r, "uid": i} for i, r in enumerate(good_rows())], "field uid is 0; every example needs a non-empty uid string"),
])
def test_bad_rows_stop_with_one_line(tmp_path, case, rows, expected):
    write_hf(tmp_path / "raw", rows)
    message = run_cli(tmp_path, tmp_path / "raw")
    assert isinstance(message, str) and "\n" not in message and expected in message, message
    assert not (tmp_path / "out" / "text").exists()


def test_missing_column_names_file_and_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "reason"} for r in good_rows()]
    write_hf(tmp_path / "raw", rows)
    message = run_cli(tmp_path, tmp_path / "raw")
    assert "dev_r1-00000-of-00001.parquet" in message and "missing column(s) reason" in message


def test_unreadable_parquet(tmp_path):
    (tmp_path / "raw" / "plain_text").mkdir(parents=True)
    (tmp_path / "raw" / "plain_text" / "test_r2-00000-of-00001.parquet").write_bytes(b"PAR1 not really")
    message = run_cli(tmp_path, tmp_path / "raw")
    assert "test_r2-00000-of-00001.parquet: unreadable parquet file" in message


def test_missing_raw_folder_and_original_layout_errors(tmp_path):
    assert "raw data folder not found" in run_cli(tmp_path, tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    assert "no ANLI data found" in run_cli(tmp_path, tmp_path / "empty")
    (tmp_path / "orig" / "R2").mkdir(parents=True)
    lines = [{"uid": "a", "context": "c", "hypothesis": "h", "label": "x", "reason": ""}]
    (tmp_path / "orig" / "R2" / "dev.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    assert "dev.jsonl:1: field label is 'x', expected one of e, n, c" in run_cli(tmp_path, tmp_path / "orig")
    (tmp_path / "orig" / "R2" / "dev.jsonl").write_text('{"uid": "a", "context": "c"}\n')
    assert "dev.jsonl:1: missing field(s) hypothesis, label" in run_cli(tmp_path, tmp_path / "orig")


@pytest.mark.parametrize("line, expected", [
    (b'{"uid": "a", "context": "caf\xe9", "hypothesis": "h", "label": "e"}\n', "dev.jsonl:2: not UTF-8 text"),
    (b"5\n", "dev.jsonl:2: a JSON int, expected an object"),
    (b'{"uid": "a", "context": "c", "hypothesis": "h", "label": ["e"]}\n', "dev.jsonl:2: field label is ['e']"),
    (b'{"uid": "a", "context": "c", "hypothesis": "h", "label": "e"\n', "dev.jsonl:2: not valid JSON"),
])
def test_malformed_original_layout_lines_stop_with_one_line(tmp_path, line, expected):
    (tmp_path / "orig" / "R1").mkdir(parents=True)
    good = b'{"uid": "z", "context": "c", "hypothesis": "h", "label": "n"}\n'
    (tmp_path / "orig" / "R1" / "dev.jsonl").write_bytes(good + line)
    message = run_cli(tmp_path, tmp_path / "orig")
    assert isinstance(message, str) and "\n" not in message and expected in message, message


def test_download_is_all_or_nothing_and_fails_in_one_line(tmp_path, monkeypatch):
    """A stand-in for the `datasets` package (the hub is out of reach here): a download that breaks after its first
    split leaves no data folder behind, and one that completes is published whole."""
    import sys
    import types

    from minillm.data.anli import DataError, download_anli

    class Split:
        def __init__(self, fail=False):
            self.fail = fail

        def to_parquet(self, path):
            if self.fail:
                raise ConnectionError("connection reset by peer")
            pq.write_table(pa.Table.from_pylist(good_rows()), path)

    def fake_datasets(splits):
        return types.SimpleNamespace(load_dataset=lambda name: splits)

    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"dev_r1": Split(), "dev_r2": Split(fail=True)}))
    with pytest.raises(DataError, match="downloading facebook/anli into .* failed \\(ConnectionError: connection"):
        download_anli(tmp_path / "dl")
    assert not (tmp_path / "dl" / "plain_text").exists()
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets({"dev_r1": Split(), "dev_r2": Split()}))
    download_anli(tmp_path / "dl")
    assert sorted(p.name for p in (tmp_path / "dl").iterdir()) == ["plain_text"]
    assert sorted(p.name for p in (tmp_path / "dl" / "plain_text").iterdir()) == [
        "dev_r1-00000-of-00001.parquet", "dev_r2-00000-of-00001.parquet"]
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: import fails
    with pytest.raises(DataError, match="pip install datasets"):
        download_anli(tmp_path / "dl2")


def big_vocab_tokenizer(path):
    """A fast tokenizer with 70,000 tokens: too many for uint16 with the 65535 separator."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{f"w{i}": i + 3 for i in range(70_000 - 3)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(path)
    return path


def test_vocabulary_that_does_not_fit_the_dtype(tmp_path):
    write_hf(tmp_path / "raw", good_rows())
    tokenizer = big_vocab_tokenizer(tmp_path / "tok")
    message = run_cli(tmp_path, tmp_path / "raw", "--dtype", "uint16", tokenizer=tokenizer)
    assert "DTYPE=uint16" in message and "70000 tokens" in message
    assert not (tmp_path / "out" / "full").exists() and not (tmp_path / "out" / "meta.json").exists()
    assert run_cli(tmp_path, tmp_path / "raw", tokenizer=tokenizer) == 0  # auto picks int32
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["dtype"] == "int32" and meta["separator"] == 2**31 - 1
    item = ShardedIndexedDataset(tmp_path / "out" / "full" / "r1", "dev")[0]
    assert item.dtype == np.int32 and (item == 2**31 - 1).sum() == 1


def test_failed_rerun_leaves_previous_output_intact(tmp_path, flan_t5_tokenizer_dir):
    write_hf(tmp_path / "raw", good_rows())
    assert run_cli(tmp_path, tmp_path / "raw", tokenizer=flan_t5_tokenizer_dir) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    write_hf(tmp_path / "raw", mutated("label", 7))
    assert "field label is 7" in run_cli(tmp_path, tmp_path / "raw", tokenizer=flan_t5_tokenizer_dir)
    after = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    assert before == after
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_failed_shard_stage_leaves_previous_text_and_shards_intact(tmp_path, flan_t5_tokenizer_dir):
    write_hf(tmp_path / "raw", good_rows())
    assert run_cli(tmp_path, tmp_path / "raw", tokenizer=flan_t5_tokenizer_dir) == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    write_hf(tmp_path / "raw", good_rows(9))  # new raw data, then a failure in the shard stage
    for extra, expected in ((["--dtype", "int16"], "DTYPE='int16'"),
                            (["--template", "nli_labels", "--max-prompt-length", "9"], "still over MAX_PROMPT_LENGTH=9")):
        message = run_cli(tmp_path, tmp_path / "raw", *extra, tokenizer=flan_t5_tokenizer_dir)
        assert isinstance(message, str) and expected in message, message
        assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before
        assert not list((tmp_path / "out").glob(".*tmp*"))


def test_premise_is_cut_to_nothing_when_only_that_fits(tmp_path, flan_t5_tokenizer_dir, tokenizer):
    rows = good_rows(3)
    rows[1]["premise"] = "A very long premise that will not fit. " * 20
    write_hf(tmp_path / "raw", rows)
    bare = TEMPLATES["flan"].prompt("", rows[1]["hypothesis"])
    limit = len(tokenizer(bare).input_ids)  # exactly the prompt without its premise
    assert run_cli(tmp_path, tmp_path / "raw", "--max-prompt-length", str(limit), tokenizer=flan_t5_tokenizer_dir) == 0
    record = read_jsonl(tmp_path / "out" / "full" / "r1" / "dev.jsonl")[1]
    assert record["truncated"] and record["prompt"] == bare
    assert "still over MAX_PROMPT_LENGTH" in run_cli(tmp_path, tmp_path / "raw", "--max-prompt-length",
                                                     str(limit - 1), tokenizer=flan_t5_tokenizer_dir)


def test_shell_script_with_environment_overrides(tmp_path, repo_root, flan_t5_tokenizer_dir):
    write_hf(tmp_path / "raw", good_rows(9), name="train_r3-00000-of-00001.parquet")
    env = {"RAW_DIR": str(tmp_path / "raw"), "OUT_DIR": str(tmp_path / "out"), "TOKENIZER": str(flan_t5_tokenizer_dir),
           "TEMPLATE": "nli_labels", "TARGET": "label_reason", "MAX_PROMPT_LENGTH": "64", "PATH": "/usr/bin:/bin",
           "HF_HUB_OFFLINE": "1", "USE_ACTIVE_ENV": "0"}
    script = repo_root / "t5-scripts" / "tools" / "process_data_anli.sh"
    done = subprocess.run(["bash", str(script), str(repo_root)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "r3/train: 9 examples" in done.stdout
    records = read_jsonl(tmp_path / "out" / "full" / "r3" / "train.jsonl")
    assert [r["target"] for r in records[:2]] == ["entailment. Reason 0.", "neutral"]
    assert records[0]["options"] == ["entailment", "neutral", "contradiction"]
    env["TEMPLATE"] = "no-such-template"
    done = subprocess.run(["bash", str(script), str(repo_root)], env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "invalid choice: 'no-such-template'" in done.stderr


def test_writer_rejects_inconsistent_sizes(tmp_path):
    with pytest.raises(ValueError, match="sizes sum to 3 but there are 4 tokens"):
        write_indexed_dataset(tmp_path / "x", np.arange(4, dtype=np.uint16), np.array([1, 2]))

"""Plain-text corpus processing: MiniLLM's chunking for causal tokenizers, T5 span corruption for Flan-T5, the input
formats, bad input and the shell wrappers."""

import json
import os
import re
import subprocess

import numpy as np
import pytest

from minillm.data.anli import DataError
from minillm.data.dolly import sample_rows
from minillm.data.indexed_dataset import ShardedIndexedDataset, split_prompt_target
from minillm.data.pretrain import build_pretrain, iter_corpus_documents, span_counts
from minillm.data.seq2seq import Seq2SeqExamples
from minillm.models.tiny import train_causal_tokenizer

SEP = 65535
LENGTH = 64


def documents_of_sample(count):
    """ASCII documents of varied length (one to several paragraphs) made from the offline Dolly sample."""
    rows = sample_rows(count, seed=3)
    docs = []
    for k, row in enumerate(rows):
        text = "\n".join(v for v in (row["instruction"], row["context"], row["response"]) if v)
        docs.append(text.encode("ascii", "replace").decode() * (1 + k % 3))
    return docs


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Documents in a .txt file (MiniLLM's line-break marker inside documents, a blank line) and a .jsonl file in a
    subfolder; returns (folder, the documents in reading order)."""
    folder = tmp_path_factory.mktemp("corpus")
    docs = documents_of_sample(90)
    txt, jsonl = docs[:50], docs[50:]
    (folder / "a.txt").write_text("\n".join(d.replace("\n", "<@x(x!>") for d in txt[:10]) + "\n\n"
                                  + "\n".join(d.replace("\n", "<@x(x!>") for d in txt[10:]) + "\n")
    (folder / "sub").mkdir()
    (folder / "sub" / "b.jsonl").write_text("".join(json.dumps({"text": d, "id": i}) + "\n"
                                                    for i, d in enumerate(jsonl)))
    (folder / "notes.md").write_text("not part of the corpus")
    return folder, docs


@pytest.fixture(scope="module")
def gpt2_tokenizer(tmp_path_factory, corpus):
    folder = tmp_path_factory.mktemp("tok_gpt2")
    return train_causal_tokenizer("gpt2", corpus[1], folder, vocab_size=500), folder


def token_stream(tokenizer, docs):
    return [i for d in docs for i in tokenizer(d, add_special_tokens=False).input_ids + [tokenizer.eos_token_id]]


def items(out_dir, split):
    full = ShardedIndexedDataset(out_dir / "full" / "pretrain", split)
    return [split_prompt_target(full[i], SEP) for i in range(len(full))]


def test_corpus_documents_in_order_with_line_breaks_restored(corpus):
    folder, docs = corpus
    read = list(iter_corpus_documents(folder))
    assert [text for _, text in read] == docs
    assert read[10][0] == f"{folder / 'a.txt'}:12" and read[50][0] == f"{folder / 'sub' / 'b.jsonl'}:1"
    assert sum("\n" in text for _, text in read[:50]) > 20


def test_causal_chunks_are_the_eos_joined_documents(tmp_path, corpus, gpt2_tokenizer):
    folder, docs = corpus
    tokenizer, tokenizer_dir = gpt2_tokenizer
    meta = build_pretrain(tmp_path, str(tokenizer_dir), iter_corpus_documents(folder), str(folder),
                          max_length=LENGTH, dev_num=5, shard_size=7)
    stream = token_stream(tokenizer, docs)
    chunks = len(stream) // LENGTH
    assert meta["model_type"] == "causal" and meta["target"] == "lm" and meta["task"] == "pretrain"
    assert meta["rounds"] == ["pretrain"] and meta["documents"] == len(docs) and meta["tokens_read"] == len(stream)
    assert meta["splits"]["pretrain/dev"]["examples"] == 5
    assert meta["splits"]["pretrain/train"]["examples"] == chunks - 5
    assert meta["splits"]["pretrain/train"]["shards"] == -(-(chunks - 5) // 7)
    ids = []
    for split in ("dev", "train"):
        for prompt, target in items(tmp_path, split):
            assert len(prompt) == 1 and len(prompt) + len(target) == LENGTH
            ids += prompt.tolist() + target.tolist()
    assert ids == stream[: chunks * LENGTH]
    joined = "".join(d + tokenizer.eos_token for d in docs)
    assert tokenizer.decode(ids) == joined[: len(tokenizer.decode(ids))]
    assert len(joined) - len(tokenizer.decode(ids)) < 2 * LENGTH * 4  # only the incomplete last chunk is dropped
    # provenance: each chunk starts `offset` tokens into the document its record names
    starts = np.cumsum([0] + [len(tokenizer(d, add_special_tokens=False).input_ids) + 1 for d in docs])
    wheres = [where for where, _ in iter_corpus_documents(folder)]
    records = [json.loads(line) for s in ("dev", "train")
               for line in open(tmp_path / "full" / "pretrain" / f"{s}.jsonl", encoding="utf-8")]
    for k, record in enumerate(records):
        doc = int(np.searchsorted(starts, k * LENGTH, side="right")) - 1
        assert (record["source"], record["offset"]) == (wheres[doc], k * LENGTH - starts[doc])
    # the engine reads the chunks as (prompt, target) pairs
    examples = Seq2SeqExamples(tmp_path, "pretrain", "train", max_prompt_length=LENGTH, max_target_length=LENGTH)
    assert len(examples) == chunks - 5 and examples[0][0].tolist() == stream[5 * LENGTH: 5 * LENGTH + 1]


def test_train_num_stops_reading(tmp_path, corpus, gpt2_tokenizer):
    folder, docs = corpus
    meta = build_pretrain(tmp_path, str(gpt2_tokenizer[1]), iter_corpus_documents(folder), str(folder),
                          max_length=LENGTH, dev_num=2, train_num=3, shard_size=100, batch_documents=4)
    assert meta["splits"]["pretrain/train"]["examples"] == 3 and meta["documents"] < len(docs)


def reconstruct(prompt, target, sentinels, eos):
    """The chunk a span-corrupted (prompt, target) came from: each sentinel in the prompt replaced by the tokens
    after it in the target."""
    assert prompt[-1] == eos and target[-1] == eos
    spans, current = {}, None
    for token in target[:-1].tolist():
        if token in sentinels:
            current = spans.setdefault(token, [])
        else:
            current.append(token)
    out = []
    for token in prompt[:-1].tolist():
        out += spans[token] if token in sentinels else [token]
    return out


def test_span_corruption_reconstructs_every_chunk(tmp_path, corpus, flan_t5_tokenizer_dir):
    from transformers import AutoTokenizer

    folder, docs = corpus
    tokenizer = AutoTokenizer.from_pretrained(flan_t5_tokenizer_dir)
    length = 100
    meta = build_pretrain(tmp_path, str(flan_t5_tokenizer_dir), iter_corpus_documents(folder), str(folder),
                          max_length=length, dev_num=3)
    assert meta["model_type"] == "seq2seq" and meta["target"] == "span_corruption"
    assert (meta["noise_density"], meta["mean_noise_span_length"], meta["seed"]) == (0.15, 3.0, 42)
    noise, spans = span_counts(length, 0.15, 3.0)
    assert (noise, spans) == (15, 5)
    sentinels = [tokenizer.convert_tokens_to_ids(f"<extra_id_{i}>") for i in range(spans)]
    assert sentinels == list(range(32099, 32099 - spans, -1))
    stream = token_stream(tokenizer, docs)
    ids, noise_total, first_spans = [], 0, set()
    for split in ("dev", "train"):
        for prompt, target in items(tmp_path, split):
            chunk = reconstruct(prompt, target, set(sentinels), tokenizer.eos_token_id)
            assert len(chunk) == length
            ids += chunk
            in_prompt = [t for t in prompt.tolist() if t in sentinels]
            assert in_prompt == sentinels == [t for t in target.tolist() if t in sentinels]
            assert prompt[0] not in sentinels and prompt[-2] == sentinels[-1]  # kept tokens first, noise last
            noise_total += len(target) - 1 - spans
            first_spans.add(target.tolist().index(sentinels[1]) - 1)
    chunks = len(ids) // length
    assert ids == stream[: chunks * length]
    assert abs(noise_total / len(ids) - 0.15) <= 0.5 / length
    assert len(first_spans) > 3  # span lengths vary
    # the engine reads them; decoding the reconstruction gives the text back (as far as SentencePiece keeps it)
    examples = Seq2SeqExamples(tmp_path, "pretrain", "dev", max_prompt_length=length, max_target_length=length)
    assert examples[0][1][0] == sentinels[0]
    assert tokenizer.decode(ids[:length], skip_special_tokens=True).split() == \
        tokenizer.decode(stream[:length], skip_special_tokens=True).split()


def test_span_corruption_is_seeded(tmp_path, corpus, flan_t5_tokenizer_dir):
    folder, _ = corpus
    runs = {}
    for name, seed in (("a", 7), ("b", 7), ("c", 8)):
        build_pretrain(tmp_path / name, str(flan_t5_tokenizer_dir), iter_corpus_documents(folder), str(folder),
                       max_length=LENGTH, dev_num=2, train_num=10, seed=seed)
        runs[name] = (tmp_path / name / "full" / "pretrain" / "train_0.bin").read_bytes()
    assert runs["a"] == runs["b"] != runs["c"]


def test_tokenizer_without_sentinels_and_text_holding_one(tmp_path, corpus, gpt2_tokenizer, flan_t5_tokenizer_dir):
    folder, _ = corpus
    with pytest.raises(DataError, match="the tokenizer has no <extra_id_0>: span corruption needs 3 sentinel"):
        build_pretrain(tmp_path / "a", str(gpt2_tokenizer[1]), iter_corpus_documents(folder), str(folder),
                       max_length=LENGTH, model_type="seq2seq")
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt").write_text("plain text " * 40 + "\nsome <extra_id_3> inside " * 20 + "\n")
    expected = f"{tmp_path / 'c' / 'x.txt'}:2: the document holds <extra_id_3>, a token span corruption uses"
    with pytest.raises(DataError, match=re.escape(expected)):
        build_pretrain(tmp_path / "b", str(flan_t5_tokenizer_dir), iter_corpus_documents(tmp_path / "c"), "c",
                       max_length=LENGTH, dev_num=0)


@pytest.mark.parametrize("name, content, expected", [
    ("x.jsonl", '{"text": "ok"}\n{"body": "no text"}\n', "x.jsonl:2: field text is missing"),
    ("x.jsonl", '{"text": "ok"}\n{"text": 5}\n', "x.jsonl:2: field text is 5"),
    ("x.jsonl", '{"text": "ok"}\n{"text": \n', "x.jsonl:2: not valid JSON"),
    ("x.txt", b"ok\n\xff\xfe\n", "x.txt:2: not UTF-8 text"),
])
def test_bad_corpus_lines_name_file_and_line(tmp_path, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError, match=f"^{re.escape(str(tmp_path / expected))}"):
        list(iter_corpus_documents(tmp_path))


def test_bad_input_ends_the_tool_with_one_line_and_no_output(tmp_path, gpt2_tokenizer):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    done = subprocess.run(["python", "tools/process_data_pretrain.py", "--corpus-dir", str(tmp_path / "c"),
                           "--out-dir", str(tmp_path / "out"), "--tokenizer", str(gpt2_tokenizer[1])],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [f"process_data_pretrain: error: {tmp_path / 'c' / 'x.jsonl'}:2: field "
                                                "text is missing; every line needs a text string"]
    assert not (tmp_path / "out" / "meta.json").exists() and not (tmp_path / "out" / ".shards.tmp").exists()


def test_hub_documents_stream_text_or_fail_in_one_line(monkeypatch):
    import sys
    import types

    from minillm.data.pretrain import iter_hf_documents

    def load_dataset(name, split, streaming):
        assert (name, split, streaming) == ("openwebtext", "train", True)
        yield from ({"text": t} for t in ("first", "  ", "second"))

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    assert list(iter_hf_documents("openwebtext")) == [("openwebtext:0", "first"), ("openwebtext:2", "second")]
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed: the import fails
    with pytest.raises(DataError, match=r"^reading the Hugging Face dataset openwebtext failed \(ModuleNotFoundError"):
        list(iter_hf_documents("openwebtext"))


def test_too_little_text_and_missing_folder(tmp_path, corpus, gpt2_tokenizer):
    folder, _ = corpus
    with pytest.raises(DataError, match="chunks of 64 tokens, none left for train after DEV_NUM=100000"):
        build_pretrain(tmp_path, str(gpt2_tokenizer[1]), iter_corpus_documents(folder), str(folder),
                       max_length=LENGTH, dev_num=100000)
    assert not (tmp_path / "meta.json").exists()
    with pytest.raises(DataError, match="corpus folder not found"):
        list(iter_corpus_documents(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt or .jsonl files"):
        list(iter_corpus_documents(tmp_path / "empty"))


@pytest.mark.parametrize("script, family", [("scripts/gpt2/tools/process_data_pretrain.sh", "gpt2"),
                                            ("t5-scripts/tools/process_data_pretrain.sh", "flan-t5")])
def test_shell_wrappers_run(tmp_path, repo_root, corpus, gpt2_tokenizer, flan_t5_tokenizer_dir, script, family):
    tokenizer = flan_t5_tokenizer_dir if family == "flan-t5" else gpt2_tokenizer[1]
    env = {**os.environ, "CORPUS_DIR": str(corpus[0]), "TOKENIZER": str(tokenizer), "MAX_LENGTH": str(LENGTH),
           "DEV_NUM": "2", "TRAIN_NUM": "4", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", str(repo_root / script), str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "processed_data" / "pretrain" / family / "meta.json").read_text())
    assert meta["target"] == ("span_corruption" if family == "flan-t5" else "lm")
    assert meta["splits"]["pretrain/train"]["examples"] == 4 and meta["max_length"] == LENGTH


@pytest.mark.parametrize("family, corpus_flags, train_num", [
    ("gpt2", ["--hf-dataset", "openwebtext"], "10000000"),
    ("opt", ["--corpus-dir", "{base}/data/roberta"], "20000000"),
    ("llama", ["--corpus-dir", "{base}/data/roberta"], "20000000"),
    ("t5", ["--hf-dataset", "openwebtext"], "10000000"),
])
def test_shell_wrapper_defaults_and_help(tmp_path, repo_root, family, corpus_flags, train_num):
    folder = repo_root / ("t5-scripts" if family == "t5" else f"scripts/{family}") / "tools"
    script = folder / "process_data_pretrain.sh"
    shown = subprocess.run(["bash", str(script), "-h"], capture_output=True, text=True)
    assert shown.returncode == 0 and "CORPUS_DIR" in shown.stdout and "TRAIN_NUM" in shown.stdout
    env = {k: v for k, v in os.environ.items() if k not in ("CORPUS_DIR", "HF_DATASET", "TOKENIZER")}
    done = subprocess.run(["bash", str(script), str(tmp_path)], env={**env, "DRY_RUN": "1"}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    flags = done.stdout.split()
    assert " ".join(corpus_flags).format(base=tmp_path) in done.stdout
    assert flags[flags.index("--train-num") + 1] == train_num and flags[flags.index("--max-length") + 1] == "512"
    assert flags[flags.index("--model-type") + 1] == ("seq2seq" if family == "t5" else "causal")
    expected_out = tmp_path / "processed_data" / "pretrain" / ("flan-t5" if family == "t5" else family)
    assert flags[flags.index("--out-dir") + 1] == str(expected_out)

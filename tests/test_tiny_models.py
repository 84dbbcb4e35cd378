"""Randomly initialised Flan-T5, GPT-2, OPT and LLaMA checkpoints and trained tokenizers (minillm/models/tiny.py and
its CLI)."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from minillm.models.tiny import (
    CAUSAL_FAMILIES,
    CAUSAL_PRESETS,
    PRESETS,
    build_causal_model,
    build_model,
    count_parameters,
    model_vocab_size,
    read_corpus,
    save_checkpoint,
    train_causal_tokenizer,
    train_tokenizer,
)

REPO = Path(__file__).resolve().parents[1]
CLI = REPO / "tools" / "make_tiny_models.py"
TRAINED_VOCAB = 1000


def synthetic_corpus(sentences: int = 1500, words: int = 2000, seed: int = 0) -> list[str]:
    """English-looking sentences over a made-up lexicon large enough for a 1000-piece unigram vocabulary."""
    rng = random.Random(seed)
    syllables = ["ka", "lo", "mi", "ren", "tas", "vo", "bri", "don", "el", "fu", "gar", "hin", "jo", "ku", "lem",
                 "nor", "pa", "qui", "ros", "sel", "tu", "wen", "xi", "yal", "zo"]
    lexicon = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 4))) for _ in range(words)]
    texts = ["Hello world", "The quick brown fox jumps over the lazy dog."]
    for _ in range(sentences):
        sentence = " ".join(rng.choice(lexicon) for _ in range(rng.randint(4, 12)))
        texts.append(sentence.capitalize() + rng.choice([".", "?", "!", ", 42."]))
    return texts


def expected_t5_parameters(preset: str, vocab_size: int) -> int:
    """Parameter count of an untied gated-GELU T5 from its shapes, as in the Flan-T5 checkpoints."""
    shape = PRESETS[preset]
    d_model, d_ff = shape["d_model"], shape["d_ff"]
    inner = shape["num_heads"] * shape["d_kv"]
    attention = 4 * d_model * inner  # q, k, v, o
    feed_forward = 3 * d_model * d_ff  # wi_0, wi_1, wo
    relative_bias = shape["relative_attention_num_buckets"] * shape["num_heads"]  # first layer of each stack
    encoder_layer = attention + feed_forward + 2 * d_model  # two layer norms
    decoder_layer = 2 * attention + feed_forward + 3 * d_model  # self and cross attention, three layer norms
    encoder = shape["num_layers"] * encoder_layer + relative_bias + d_model  # + final layer norm
    decoder = shape["num_decoder_layers"] * decoder_layer + relative_bias + d_model
    return 2 * vocab_size * d_model + encoder + decoder  # shared embedding and separate lm_head


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # No PYTHONPATH, another folder: the script imports the installed package (install.sh: pip install -e .).
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, str(CLI), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return synthetic_corpus()


@pytest.fixture(scope="module")
def trained_tokenizer_dir(tmp_path_factory, corpus) -> Path:
    out_dir = tmp_path_factory.mktemp("trained") / "tokenizer"
    train_tokenizer(corpus, out_dir, vocab_size=TRAINED_VOCAB)
    return out_dir


@pytest.fixture(scope="module")
def trained_tokenizer(trained_tokenizer_dir):
    return AutoTokenizer.from_pretrained(trained_tokenizer_dir)


def fixed_batch(vocab_size: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(3, vocab_size, (2, 9), generator=generator)
    input_ids[:, -1] = 1  # </s>
    decoder_input_ids = torch.randint(3, vocab_size, (2, 5), generator=generator)
    decoder_input_ids[:, 0] = 0  # decoder_start_token_id
    return {"input_ids": input_ids, "decoder_input_ids": decoder_input_ids}


# --- models -----------------------------------------------------------------------------------------------------


def test_build_is_deterministic_for_a_seed_and_differs_across_seeds():
    first = build_model("tiny-student", 1024, seed=0).state_dict()
    again = build_model("tiny-student", 1024, seed=0).state_dict()
    other = build_model("tiny-student", 1024, seed=1).state_dict()
    assert first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[name], again[name]) for name in first)
    # Layer norms start at constant ones whatever the seed; every weight matrix is random.
    matrices = [name for name, tensor in first.items() if tensor.dim() == 2]
    assert "lm_head.weight" in matrices and "shared.weight" in matrices
    assert not any(torch.equal(first[name], other[name]) for name in matrices)


def test_build_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    build_model("tiny-student", 256, seed=3)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("preset", ["tiny-teacher", "tiny-student"])
def test_lm_head_is_untied_and_embeddings_stay_tied(preset):
    model = build_model(preset, 1024)
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
    assert not torch.equal(model.lm_head.weight, model.shared.weight)
    assert model.encoder.embed_tokens.weight is model.shared.weight
    assert model.decoder.embed_tokens.weight is model.shared.weight
    # Untied Flan-T5 does not rescale the decoder output before lm_head.
    assert model.config.scale_decoder_outputs is False
    assert model.config.vocab_size == 1024
    assert model.config.d_model == PRESETS[preset]["d_model"]
    assert model.config.feed_forward_proj == "gated-gelu"
    assert (model.config.decoder_start_token_id, model.config.pad_token_id, model.config.eos_token_id) == (0, 0, 1)


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'tiny-studnet'.*known presets: tiny-teacher, tiny-student, flan-t5-small"):
        build_model("tiny-studnet", 1024)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_parameter_counts_match_the_shapes(preset):
    with torch.device("meta"):  # shapes only: no memory, no initialisation time
        model = build_model(preset, 32128)
    assert count_parameters(model) == expected_t5_parameters(preset, 32128)


def test_flan_t5_small_has_77m_parameters():
    model = build_model("flan-t5-small", 32128)  # really built: under a second on CPU
    count = count_parameters(model)
    assert count == expected_t5_parameters("flan-t5-small", 32128) == 76_961_152
    assert abs(count - 77_000_000) / 77_000_000 < 0.01
    assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()


def test_save_and_reload_is_bit_identical(tmp_path, trained_tokenizer):
    vocab_size = model_vocab_size(trained_tokenizer)
    model = build_model("tiny-teacher", vocab_size, seed=5)
    out_dir = save_checkpoint(model, trained_tokenizer, tmp_path / "teacher")

    assert out_dir == tmp_path / "teacher"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "spiece.model"} <= {
        path.name for path in out_dir.iterdir()}
    assert [path.name for path in tmp_path.iterdir()] == ["teacher"]  # no staging folder left behind

    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out_dir)
    original_state, reloaded_state = model.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    assert all(torch.equal(original_state[name], reloaded_state[name]) for name in original_state)
    assert reloaded.lm_head.weight.data_ptr() != reloaded.shared.weight.data_ptr()
    assert reloaded.encoder.embed_tokens.weight is reloaded.shared.weight
    assert reloaded.config.scale_decoder_outputs is False

    batch = fixed_batch(vocab_size)
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reloaded(**batch).logits)

    tokenizer = AutoTokenizer.from_pretrained(out_dir)
    assert len(tokenizer) == TRAINED_VOCAB
    assert tokenizer("Hello world").input_ids == trained_tokenizer("Hello world").input_ids


def test_save_checkpoint_replaces_an_existing_folder(tmp_path, trained_tokenizer):
    out_dir = tmp_path / "student"
    save_checkpoint(build_model("tiny-student", 1024, seed=0), trained_tokenizer, out_dir)
    (out_dir / "stale.txt").write_text("from the previous checkpoint")
    replacement = build_model("tiny-student", 1024, seed=1)
    save_checkpoint(replacement, trained_tokenizer, out_dir)

    assert not (out_dir / "stale.txt").exists()
    assert [path.name for path in tmp_path.iterdir()] == ["student"]
    reloaded = AutoModelForSeq2SeqLM.from_pretrained(out_dir)
    assert torch.equal(reloaded.lm_head.weight, replacement.lm_head.weight)


# --- tokenizers -------------------------------------------------------------------------------------------------


def test_trained_tokenizer_has_t5_special_ids_and_the_trained_size(trained_tokenizer_dir, trained_tokenizer):
    assert type(trained_tokenizer).__name__ == "T5Tokenizer"
    assert len(trained_tokenizer) == TRAINED_VOCAB
    assert (trained_tokenizer.pad_token_id, trained_tokenizer.eos_token_id, trained_tokenizer.unk_token_id) == (0, 1, 2)
    assert trained_tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
    assert trained_tokenizer.bos_token_id is None
    assert not any("extra_id" in token for token in trained_tokenizer.get_vocab())
    assert model_vocab_size(trained_tokenizer) == 1024
    assert (trained_tokenizer_dir / "spiece.model").is_file()


def test_trained_tokenizer_round_trips_the_corpus(corpus, trained_tokenizer):
    for text in corpus:
        ids = trained_tokenizer(text).input_ids
        assert ids[-1] == 1
        assert 2 not in ids  # every corpus character is in the vocabulary
        assert trained_tokenizer.decode(ids, skip_special_tokens=True) == text
    # T5 normalisation turns newlines into spaces.
    ids = trained_tokenizer("Hello world\nHello\n\nworld").input_ids
    assert trained_tokenizer.decode(ids, skip_special_tokens=True) == "Hello world Hello world"


def test_tokenizer_training_is_deterministic(tmp_path, corpus, trained_tokenizer_dir):
    train_tokenizer(corpus, tmp_path / "again", vocab_size=TRAINED_VOCAB)
    assert (tmp_path / "again" / "spiece.model").read_bytes() == (trained_tokenizer_dir / "spiece.model").read_bytes()
    again_json = (tmp_path / "again" / "tokenizer.json").read_bytes()
    assert again_json == (trained_tokenizer_dir / "tokenizer.json").read_bytes()


def test_tokenizer_training_rejects_a_corpus_too_small_for_the_vocabulary(tmp_path):
    with pytest.raises(ValueError, match=r"too small for a 1000-piece vocabulary: it allows at most \d+ pieces"):
        train_tokenizer(["Hello world", "A tiny corpus."], tmp_path / "tok", vocab_size=1000)
    with pytest.raises(ValueError, match="empty corpus"):
        train_tokenizer(["", "  \n "], tmp_path / "tok", vocab_size=100)


def test_flan_t5_tokenizer_gives_32128_logits_and_a_working_model(flan_t5_tokenizer_dir):
    tokenizer = AutoTokenizer.from_pretrained(flan_t5_tokenizer_dir)
    assert len(tokenizer) == 32100
    vocab_size = model_vocab_size(tokenizer)
    assert vocab_size == 32128
    model = build_model("tiny-student", vocab_size)
    batch = tokenizer(["premise: A dog runs. hypothesis: An animal moves."], return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch, decoder_input_ids=torch.zeros((1, 1), dtype=torch.long)).logits
    assert logits.shape == (1, 1, 32128)
    assert torch.isfinite(logits).all()


# --- corpus reading ---------------------------------------------------------------------------------------------


def test_read_corpus_reads_txt_jsonl_and_parquet(tmp_path):
    (tmp_path / "a.txt").write_text("first line\n\nsecond line\n")
    (tmp_path / "b.jsonl").write_text(
        json.dumps({"uid": "u1", "premise": "A premise.", "label": 0, "tags": ["x"]}) + "\n\n"
        + json.dumps({"hypothesis": "A hypothesis."}) + "\n")
    pq.write_table(pa.table({"premise": ["P1", None], "label": [0, 1], "reason": ["R1", "R2"]}), tmp_path / "c.parquet")

    texts = read_corpus([tmp_path / "a.txt", tmp_path / "b.jsonl", str(tmp_path / "c.parquet")])
    assert texts == ["first line", "second line", "u1", "A premise.", "A hypothesis.", "P1", "R1", "R2"]


def test_read_corpus_rejects_missing_and_unknown_files(tmp_path):
    with pytest.raises(ValueError, match="missing.txt: corpus file not found"):
        read_corpus([tmp_path / "missing.txt"])
    (tmp_path / "data.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match=r"data.csv: unsupported corpus file type '.csv'"):
        read_corpus([tmp_path / "data.csv"])
    (tmp_path / "bad.jsonl").write_text('{"ok": "yes"}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        read_corpus([tmp_path / "bad.jsonl"])


# --- command line -----------------------------------------------------------------------------------------------


def test_cli_trains_a_tokenizer_and_builds_both_tiny_presets(tmp_path):
    (tmp_path / "corpus.txt").write_text("\n".join(synthetic_corpus()) + "\n")
    result = run_cli("--out", "models", "--presets", "tiny-teacher", "tiny-student",
                     "--train-tokenizer-on", "corpus.txt", "--vocab-size", str(TRAINED_VOCAB), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # the tool's lines are tab-separated; with accelerate installed (INSTALL_BENCH=1), transformers imports
    # DeepSpeed, whose logger prints a "Setting accelerator to CPU" line to stdout as well
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert [line.split("\t")[0] for line in lines] == ["tiny-teacher", "tiny-student"]
    assert all("vocab=1024" in line for line in lines)

    out = tmp_path / "models"
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    assert len(tokenizer) == TRAINED_VOCAB
    for preset, line in zip(["tiny-teacher", "tiny-student"], lines):
        model = AutoModelForSeq2SeqLM.from_pretrained(out / preset)
        assert f"params={count_parameters(model)}" in line
        assert line.split("\t")[-1] == str(Path("models") / preset)  # as given with --out
        assert model.config.d_model == PRESETS[preset]["d_model"]
        assert model.config.vocab_size == 1024
        assert model.lm_head.weight.data_ptr() != model.shared.weight.data_ptr()
        built = build_model(preset, 1024, seed=0)  # the CLI's default seed
        assert torch.equal(model.lm_head.weight, built.lm_head.weight)
        preset_tokenizer = AutoTokenizer.from_pretrained(out / preset)
        assert preset_tokenizer("Hello world").input_ids == tokenizer("Hello world").input_ids


def test_cli_reports_bad_input_on_one_line(tmp_path):
    result = run_cli("--out", "models", "--presets", "tiny-studnet", "--train-tokenizer-on", "missing.txt",
                     cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "make_tiny_models: unknown preset 'tiny-studnet'; known presets: "
        "tiny-teacher, tiny-student, flan-t5-small, flan-t5-base"]
    assert not (tmp_path / "models").exists()

    result = run_cli("--out", "models", "--presets", "tiny-student", "--train-tokenizer-on", "missing.txt",
                     cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["make_tiny_models: missing.txt: corpus file not found"]

    result = run_cli("--out", "models", "--presets", "tiny-student", "--train-tokenizer-on", "missing.txt",
                     "--vocab-size", "0", cwd=tmp_path)
    assert result.returncode == 2 and "--vocab-size must be >= 4" in result.stderr.strip().splitlines()[-1]


def test_tokenizer_training_errors_are_one_line_value_errors(tmp_path):
    with pytest.raises(ValueError, match="a 5-piece tokenizer cannot be trained on this corpus: .*smaller than"):
        train_tokenizer(["The quick brown fox jumps over the lazy dog."] * 20, tmp_path / "tok", vocab_size=5)


# --- decoder-only families (GPT-2, OPT, LLaMA) ------------------------------------------------------------------

CAUSAL_VOCAB = 800
# (pad, EOS, BOS, unk) ids of the real tokenizers; LLaMA has no pad token.
CAUSAL_SPECIAL_IDS = {"gpt2": (0, 0, 0, 0), "opt": (1, 2, 2, 3), "llama": (None, 2, 1, 0)}
# Whether the tokenizer puts BOS in front of every text (OPT and LLaMA do, GPT-2 does not).
PREPENDS_BOS = {"gpt2": False, "opt": True, "llama": True}


@pytest.fixture(scope="module")
def anli_corpus(shared_anli) -> list[str]:
    return read_corpus([shared_anli / "plain_text" / "dev_r1-00000-of-00001.parquet"])


@pytest.fixture(scope="module")
def causal_tokenizer_dirs(tmp_path_factory, anli_corpus) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("causal_tokenizers")
    for family in CAUSAL_FAMILIES:
        train_causal_tokenizer(family, anli_corpus, root / family, vocab_size=CAUSAL_VOCAB)
    return {family: root / family for family in CAUSAL_FAMILIES}


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_tokenizer_has_the_real_special_ids(family, causal_tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(causal_tokenizer_dirs[family])
    assert type(tokenizer).__name__ == ("LlamaTokenizer" if family == "llama" else "GPT2Tokenizer")
    assert len(tokenizer) == CAUSAL_VOCAB
    ids = (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.bos_token_id, tokenizer.unk_token_id)
    assert ids == CAUSAL_SPECIAL_IDS[family]
    if family == "gpt2":
        assert tokenizer.eos_token == tokenizer.pad_token == "<|endoftext|>"
    elif family == "opt":
        assert tokenizer.convert_ids_to_tokens([0, 1, 2, 3]) == ["<s>", "<pad>", "</s>", "<unk>"]
    else:
        assert tokenizer.convert_ids_to_tokens([0, 1, 2]) == ["<unk>", "<s>", "</s>"]
        assert tokenizer.convert_ids_to_tokens([3, 258]) == ["<0x00>", "<0xFF>"]
    assert model_vocab_size(tokenizer) == 896


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_tokenizer_round_trips_text(family, causal_tokenizer_dirs, anli_corpus):
    tokenizer = AutoTokenizer.from_pretrained(causal_tokenizer_dirs[family])
    bos, unk = tokenizer.bos_token_id, tokenizer.unk_token_id
    # byte-level (GPT-2, OPT) and byte-fallback (LLaMA) vocabularies cover characters the corpus never had. Leading
    # spaces are stripped: transformers' LlamaTokenizer decodes " x" as "x" (its own quirk, any vocabulary).
    texts = [*(text.lstrip() for text in anli_corpus[:200]), "Hello world", "Ünïcödé: 日本語, emoji 🙂 and\ttabs"]
    for text in texts:
        ids = tokenizer(text).input_ids
        assert (ids[0] == bos) == PREPENDS_BOS[family]
        assert unk not in ids[int(PREPENDS_BOS[family]):]
        assert tokenizer.eos_token_id not in ids[int(PREPENDS_BOS[family]):]  # EOS is the data pipeline's job
        assert tokenizer.decode(ids, skip_special_tokens=True) == text
    # a trained vocabulary merges frequent words: far fewer tokens than characters in a premise
    premise = max(anli_corpus[:10], key=len)
    assert len(tokenizer(premise).input_ids) < len(premise) / 1.8  # about 2 characters a token at 800 tokens


def test_causal_tokenizer_training_is_deterministic(tmp_path, anli_corpus, causal_tokenizer_dirs):
    for family in CAUSAL_FAMILIES:
        train_causal_tokenizer(family, anli_corpus, tmp_path / family, vocab_size=CAUSAL_VOCAB)
        again = (tmp_path / family / "tokenizer.json").read_bytes()
        assert again == (causal_tokenizer_dirs[family] / "tokenizer.json").read_bytes()


def test_causal_tokenizer_training_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match=r"corpus too small for a 5000-token vocabulary: it allows at most \d+"):
        train_causal_tokenizer("opt", ["Hello world", "A tiny corpus."], tmp_path / "tok", vocab_size=5000)
    with pytest.raises(ValueError, match="a 200-token llama vocabulary is too small: .* take 259"):
        train_causal_tokenizer("llama", ["Hello world"], tmp_path / "tok", vocab_size=200)
    with pytest.raises(ValueError, match="empty corpus"):
        train_causal_tokenizer("gpt2", ["", " \n"], tmp_path / "tok", vocab_size=300)
    with pytest.raises(ValueError, match="unknown decoder-only family 'gpt3'; known families: gpt2, opt, llama"):
        train_causal_tokenizer("gpt3", ["Hello world"], tmp_path / "tok", vocab_size=300)


@pytest.mark.parametrize("family", CAUSAL_FAMILIES)
def test_causal_model_saves_and_loads_from_disk(family, tmp_path, causal_tokenizer_dirs):
    tokenizer = AutoTokenizer.from_pretrained(causal_tokenizer_dirs[family])
    vocab_size = model_vocab_size(tokenizer)
    student = build_causal_model(family, "tiny-student", vocab_size, seed=3)
    teacher = build_causal_model(family, "tiny-teacher", vocab_size, seed=3)
    assert count_parameters(student) < count_parameters(teacher) < 600_000
    assert not student.training
    out_dir = save_checkpoint(student, tokenizer, tmp_path / "student")

    reloaded = AutoModelForCausalLM.from_pretrained(out_dir)
    assert type(reloaded) is type(student)
    config = reloaded.config
    pad, eos, bos, unk = CAUSAL_SPECIAL_IDS[family]
    # LLaMA's config pads with <unk>, a pad distinct from EOS; the others name the tokenizer's pad
    assert (config.pad_token_id, config.eos_token_id, config.bos_token_id) == (unk if pad is None else pad, eos, bos)
    assert config.vocab_size == vocab_size
    layers, width = CAUSAL_PRESETS["tiny-student"][:2]
    assert (config.num_hidden_layers, config.hidden_size) == (layers, width)
    original_state, reloaded_state = student.state_dict(), reloaded.state_dict()
    assert original_state.keys() == reloaded_state.keys()
    assert all(torch.equal(original_state[name], reloaded_state[name]) for name in original_state)

    ids = AutoTokenizer.from_pretrained(out_dir)(["Hello world"], return_tensors="pt").input_ids
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
    assert logits.shape == (1, ids.shape[1], vocab_size)
    assert torch.equal(logits, student(input_ids=ids).logits)
    assert torch.equal(build_causal_model(family, "tiny-student", vocab_size, seed=3).lm_head.weight,
                       student.lm_head.weight)
    assert not torch.equal(build_causal_model(family, "tiny-student", vocab_size, seed=4).lm_head.weight,
                           student.lm_head.weight)


def test_causal_presets_reject_unknown_names():
    with pytest.raises(ValueError, match="unknown preset 'flan-t5-small' for gpt2; known presets: tiny-student, "
                                         "tiny-teacher"):
        build_causal_model("gpt2", "flan-t5-small", 896)
    with pytest.raises(ValueError, match="unknown decoder-only family 't5'"):
        build_causal_model("t5", "tiny-student", 896)


def test_cli_builds_a_causal_family(tmp_path, shared_anli):
    corpus = shared_anli / "plain_text" / "dev_r1-00000-of-00001.parquet"
    result = run_cli("--out", "models", "--family", "opt", "--presets", "tiny-student", "--train-tokenizer-on",
                     str(corpus), "--vocab-size", str(CAUSAL_VOCAB), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if "\t" in line]
    assert [line.split("\t")[:3] for line in lines] == [
        ["tiny-student", f"params={count_parameters(build_causal_model('opt', 'tiny-student', 896))}", "vocab=896"]]
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / "tiny-student")
    assert torch.equal(model.lm_head.weight, build_causal_model("opt", "tiny-student", 896, seed=0).lm_head.weight)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models" / "tiny-student")
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (1, 2)

    result = run_cli("--out", "models", "--family", "llama", "--presets", "tiny-teacher", "tiny-studnet",
                     "--train-tokenizer-on", str(corpus), cwd=tmp_path)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "make_tiny_models: unknown preset 'tiny-studnet' for llama; known presets: tiny-student, tiny-teacher"]

"""Randomly initialised checkpoints and tokenizers, built offline: Flan-T5 and MiniLLM's decoder-only families.

Tests and smoke runs need a teacher/student pair without the Hugging Face hub. This module builds T5 models of fixed
shapes (:data:`PRESETS`), trains a small SentencePiece tokenizer on local text when the real Flan-T5 one is not wanted,
and saves both as ordinary Hugging Face folders that ``AutoModelForSeq2SeqLM.from_pretrained`` and
``AutoTokenizer.from_pretrained`` load offline.

The decoder-only families MiniLLM distils (GPT-2, OPT, LLaMA) get the same: :func:`build_causal_model` builds a
model of a :data:`CAUSAL_PRESETS` shape and :func:`train_causal_tokenizer` trains a BPE vocabulary run by the family's
own tokenizer class, with the real tokenizer's special tokens (:data:`CAUSAL_SPECIAL_TOKENS`): GPT-2 pads with its
EOS ``<|endoftext|>``; OPT has ``<pad>`` (1) apart from ``</s>`` (2, also BOS) and prepends BOS; LLaMA has ``<unk>``
(0), ``<s>`` (1), ``</s>`` (2), no pad token, and prepends BOS. Both load with ``AutoModelForCausalLM`` /
``AutoTokenizer.from_pretrained``.

Notes on transformers 5, which these helpers work around:

* ``T5Config`` always sets ``tie_word_embeddings=True``; the value passed in only decides ``scale_decoder_outputs``
  (``False`` for Flan-T5, which does not rescale the decoder output). A model built from a config therefore shares
  ``lm_head`` with the embedding, unlike Flan-T5. :func:`build_model` gives ``lm_head`` its own parameter afterwards.
  The saved ``config.json`` still says ``tie_word_embeddings: true``; loading sees that ``lm_head.weight`` and
  ``shared.weight`` differ in the checkpoint, keeps them untied, and logs a warning saying so (expected, harmless).
* ``T5Tokenizer`` is the tokenizers-backed class and adds 100 ``<extra_id_*>`` sentinels unless ``extra_ids=0``; a
  locally trained vocabulary has no sentinels, so the model's vocabulary matches the trained size.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterable
from pathlib import Path

import sentencepiece
import torch
from torch import nn
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import (
    AutoTokenizer,
    GPT2Config,
    GPT2LMHeadModel,
    GPT2Tokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    LlamaTokenizer,
    OPTConfig,
    OPTForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    T5Config,
    T5ForConditionalGeneration,
    T5Tokenizer,
)

# Settings every Flan-T5 checkpoint shares: gated-GELU feed-forward, untied output layer (which also means no decoder
# output rescaling), decoding starts from <pad>, and T5's special ids.
_FLAN_T5_STYLE = {
    "feed_forward_proj": "gated-gelu",
    "tie_word_embeddings": False,
    "decoder_start_token_id": 0,
    "pad_token_id": 0,
    "eos_token_id": 1,
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
}

PRESETS: dict[str, dict] = {
    "tiny-teacher": {
        **_FLAN_T5_STYLE,
        "d_model": 128,
        "d_ff": 512,
        "num_layers": 3,
        "num_decoder_layers": 3,
        "num_heads": 4,
        "d_kv": 32,
        "dropout_rate": 0.0,
    },
    "tiny-student": {
        **_FLAN_T5_STYLE,
        "d_model": 64,
        "d_ff": 256,
        "num_layers": 2,
        "num_decoder_layers": 2,
        "num_heads": 4,
        "d_kv": 16,
        "dropout_rate": 0.0,
    },
    "flan-t5-small": {
        **_FLAN_T5_STYLE,
        "d_model": 512,
        "d_ff": 1024,
        "num_layers": 8,
        "num_decoder_layers": 8,
        "num_heads": 6,
        "d_kv": 64,
        "dropout_rate": 0.1,
    },
    "flan-t5-base": {
        **_FLAN_T5_STYLE,
        "d_model": 768,
        "d_ff": 2048,
        "num_layers": 12,
        "num_decoder_layers": 12,
        "num_heads": 12,
        "d_kv": 64,
        "dropout_rate": 0.1,
    },
}

# Flan-T5 pads its 32100-token vocabulary to 32128 logits; multiples of 128 keep matrix shapes friendly to GPU kernels.
VOCAB_MULTIPLE = 128
# As in the Flan-T5 tokenizer config.
MODEL_MAX_LENGTH = 512
SPIECE_FILE = "spiece.model"
# T5's SentencePiece layout: <pad>=0, </s>=1, <unk>=2, no <s>.
_T5_SPECIAL_PIECES = {
    "pad_id": 0,
    "pad_piece": "<pad>",
    "eos_id": 1,
    "eos_piece": "</s>",
    "unk_id": 2,
    "unk_piece": "<unk>",
    "bos_id": -1,
}


def preset_config(preset: str) -> dict:
    """The T5Config keyword arguments of a preset (a copy); ValueError for an unknown name."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; known presets: {', '.join(PRESETS)}")
    return dict(PRESETS[preset])


def build_model(preset: str, vocab_size: int, seed: int = 0) -> T5ForConditionalGeneration:
    """A randomly initialised T5 of the preset's shape with an untied output layer, in eval mode.

    The same seed gives bit-identical weights; the caller's global torch RNG state is left as it was.
    """
    config = T5Config(vocab_size=vocab_size, **preset_config(preset))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5ForConditionalGeneration(config)
        # transformers 5 always ties lm_head to the shared embedding when building from a config; Flan-T5's head is a
        # separate matrix. Its std is factor * d_model**-0.5, like T5's other input projections: the decoder output
        # is RMS-normalised (entries ~1) and an untied head does no rescaling, so std = factor (what transformers
        # gives an untied T5 head) would start with logits of std ~sqrt(d_model) and a loss near 12.
        head_std = config.initializer_factor * config.d_model**-0.5
        untied_head = torch.empty_like(model.shared.weight).normal_(mean=0.0, std=head_std)
        model.lm_head.weight = nn.Parameter(untied_head)
    # Match what from_pretrained returns, so a built model and its reloaded copy behave the same.
    return model.eval()


def count_parameters(model: nn.Module) -> int:
    """Number of distinct parameter values (a tied matrix counts once)."""
    return sum(parameter.numel() for parameter in model.parameters())


def model_vocab_size(tokenizer: PreTrainedTokenizerBase) -> int:
    """The logit width for a tokenizer: its length rounded up to a multiple of 128 (32100 -> 32128, 1000 -> 1024)."""
    return -(-len(tokenizer) // VOCAB_MULTIPLE) * VOCAB_MULTIPLE


def train_tokenizer(
    texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1000
) -> PreTrainedTokenizerBase:
    """Train a SentencePiece vocabulary of exactly `vocab_size` pieces with T5's special ids, save it as a T5
    tokenizer (no sentinel tokens) in `out_dir`, and return it reloaded with AutoTokenizer.

    The pieces are chosen by SentencePiece's BPE trainer, and the model is saved as a unigram model (the only kind the
    T5 tokenizer class runs) whose scores make the fewest pieces win. On a small, repetitive corpus the unigram trainer
    spends a few hundred pieces on whole rare words and splits the frequent ones ("▁", "the"; "B", "ase", "d"): on the
    synthetic NLI data a 512-piece unigram vocabulary gives Flan prompts of ~72 tokens where these pieces give ~38,
    and tiny models learn the task several times faster from the shorter prompts. SentencePiece and the Hugging Face
    tokenizer segment alike with these scores.

    Each line of each text is one training sentence, as in a SentencePiece text file. Training is deterministic: one
    thread, every sentence used in order (no sampling or shuffling). A corpus too small to yield `vocab_size` pieces
    is an error (ValueError saying how many it allows) rather than silently giving a smaller vocabulary.
    """
    sentences = [line for text in texts for line in text.splitlines() if line.strip()]
    if not sentences:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    model_bytes = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model_bytes,
            model_type="bpe",
            vocab_size=vocab_size,
            # Every character of the corpus gets a piece, so corpus text never decodes to <unk>.
            character_coverage=1.0,
            input_sentence_size=0,
            shuffle_input_sentence=False,
            num_threads=1,
            minloglevel=2,
            **_T5_SPECIAL_PIECES,
        )
    except RuntimeError as err:  # SentencePiece reports every bad setting this way
        limit = re.search(r"Vocabulary size too high \(\d+\)\. Please set it to a value <= (\d+)", str(err))
        if limit is None:
            raise ValueError(f"a {vocab_size}-piece tokenizer cannot be trained on this corpus: "
                             f"{str(err).strip().splitlines()[0]}") from None
        raise ValueError(
            f"corpus too small for a {vocab_size}-piece vocabulary: it allows at most {limit.group(1)} pieces; "
            "lower the vocabulary size or add text"
        ) from None

    model_proto = _as_fewest_pieces_unigram(model_bytes.getvalue())
    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory() as scratch:
        # In transformers 5 only from_pretrained converts a SentencePiece model; the constructor given vocab_file
        # silently builds a 4-token tokenizer. The scratch folder holds nothing else, so nothing stale is picked up.
        (Path(scratch) / SPIECE_FILE).write_bytes(model_proto)
        tokenizer = T5Tokenizer.from_pretrained(scratch, extra_ids=0, model_max_length=MODEL_MAX_LENGTH)
        _save_tokenizer(tokenizer, out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def _as_fewest_pieces_unigram(bpe_model: bytes) -> bytes:
    """A SentencePiece BPE model rewritten as a unigram model over the same pieces. Every normal piece scores about
    -1, so Viterbi segmentation picks the fewest pieces; ties go to the piece BPE merged first (a tiny rank term)."""
    from sentencepiece import sentencepiece_model_pb2

    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(bpe_model)
    model.trainer_spec.model_type = sentencepiece_model_pb2.TrainerSpec.UNIGRAM
    for rank, piece in enumerate(model.pieces):
        if piece.type == sentencepiece_model_pb2.ModelProto.SentencePiece.NORMAL:
            piece.score = -1.0 - rank * 1e-4
    return model.SerializeToString()


def _save_tokenizer(tokenizer: PreTrainedTokenizerBase, out_dir: Path) -> None:
    """save_pretrained, plus the SentencePiece model it came from: transformers 5 writes only tokenizer.json, and
    keeping spiece.model gives the folder the same files as a hub Flan-T5 one (for code that reads it directly)."""
    tokenizer.save_pretrained(out_dir)
    source = getattr(tokenizer, "vocab_file", None)
    if source and Path(source).name == SPIECE_FILE and Path(source).is_file():
        shutil.copyfile(source, Path(out_dir) / SPIECE_FILE)


# --- decoder-only families (MiniLLM's GPT-2, OPT and LLaMA) -----------------------------------------------------

CAUSAL_FAMILIES = ("gpt2", "opt", "llama")

# (layers, width, attention heads, feed-forward width): the student is the narrower and shallower model.
CAUSAL_PRESETS: dict[str, tuple[int, int, int, int]] = {
    "tiny-student": (2, 64, 4, 256),
    "tiny-teacher": (3, 96, 4, 384),
}
# Longest prompt + response MiniLLM trains on.
CAUSAL_MAX_POSITIONS = 512

# The special tokens of each family's real tokenizer, in vocabulary order from id 0, and which of them the model's
# config names. GPT-2's single special token is BOS, EOS, unk and (as MiniLLM sets it) pad; OPT reuses </s> as BOS
# and has a separate <pad>; LLaMA has no pad token: its config pads with <unk> (0), a pad distinct from EOS.
CAUSAL_SPECIAL_TOKENS: dict[str, dict] = {
    "gpt2": {"vocabulary": ["<|endoftext|>"],
             "tokenizer": {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
                           "pad_token": "<|endoftext|>", "add_bos_token": False},
             "config": {"bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}},
    "opt": {"vocabulary": ["<s>", "<pad>", "</s>", "<unk>"],
            "tokenizer": {"bos_token": "</s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
                          "add_bos_token": True},
            "config": {"bos_token_id": 2, "eos_token_id": 2, "pad_token_id": 1}},
    "llama": {"vocabulary": ["<unk>", "<s>", "</s>"],
              "tokenizer": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "add_bos_token": True},
              "config": {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}},
}
# LLaMA's SentencePiece vocabulary falls back to these 256 byte pieces for characters it has no piece for.
_LLAMA_BYTE_PIECES = [f"<0x{byte:02X}>" for byte in range(256)]


def check_causal_family(family: str) -> None:
    """ValueError for a family other than gpt2, opt and llama."""
    if family not in CAUSAL_FAMILIES:
        raise ValueError(f"unknown decoder-only family {family!r}; known families: {', '.join(CAUSAL_FAMILIES)}")


def causal_preset_config(family: str, preset: str):
    """The family's config (GPT2Config / OPTConfig / LlamaConfig, vocabulary size unset) of a preset shape, with the
    family's special ids and no dropout; ValueError for an unknown family or preset."""
    check_causal_family(family)
    if preset not in CAUSAL_PRESETS:
        raise ValueError(f"unknown preset {preset!r} for {family}; known presets: {', '.join(CAUSAL_PRESETS)}")
    layers, width, heads, ffn = CAUSAL_PRESETS[preset]
    special_ids = CAUSAL_SPECIAL_TOKENS[family]["config"]
    if family == "gpt2":
        return GPT2Config(n_layer=layers, n_embd=width, n_head=heads, n_inner=ffn, n_positions=CAUSAL_MAX_POSITIONS,
                          resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **special_ids)
    if family == "opt":
        return OPTConfig(num_hidden_layers=layers, hidden_size=width, word_embed_proj_dim=width,
                         num_attention_heads=heads, ffn_dim=ffn, max_position_embeddings=CAUSAL_MAX_POSITIONS,
                         dropout=0.0, attention_dropout=0.0, **special_ids)
    # LLaMA: gated SiLU feed-forward of about 8/3 of the width (two thirds of the other families' 4x), untied head.
    return LlamaConfig(num_hidden_layers=layers, hidden_size=width, num_attention_heads=heads,
                       num_key_value_heads=heads, intermediate_size=ffn * 2 // 3,
                       max_position_embeddings=CAUSAL_MAX_POSITIONS, attention_dropout=0.0,
                       tie_word_embeddings=False, **special_ids)


def build_causal_model(family: str, preset: str, vocab_size: int, seed: int = 0) -> PreTrainedModel:
    """A randomly initialised GPT-2 / OPT / LLaMA of the preset's shape (:data:`CAUSAL_PRESETS`), in eval mode.

    The same seed gives bit-identical weights; the caller's global torch RNG state is left as it was.
    """
    config = causal_preset_config(family, preset)
    config.vocab_size = vocab_size
    model_class = {"gpt2": GPT2LMHeadModel, "opt": OPTForCausalLM, "llama": LlamaForCausalLM}[family]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def train_causal_tokenizer(
    family: str, texts: Iterable[str], out_dir: str | os.PathLike, vocab_size: int = 1000
) -> PreTrainedTokenizerBase:
    """Train a BPE vocabulary of exactly `vocab_size` tokens (special and byte tokens included) for a decoder-only
    family, save it in `out_dir` as that family's tokenizer, and return it reloaded with AutoTokenizer.

    GPT-2 and OPT: byte-level BPE (every byte has a token, so any text round-trips), run by ``GPT2Tokenizer``.
    LLaMA: SentencePiece-style BPE over "▁"-marked words with byte fallback (``<0x00>``-``<0xFF>``), run by
    ``LlamaTokenizer``. The merges are learnt within words (pre-tokenized as the family's tokenizer splits text),
    the special tokens come first with the ids of :data:`CAUSAL_SPECIAL_TOKENS`. Each line of each text is one
    training sentence; training is deterministic. A corpus too small for `vocab_size` tokens is a ValueError.
    """
    check_causal_family(family)
    sentences = [line for text in texts for line in text.splitlines() if line.strip()]
    if not sentences:
        raise ValueError("cannot train a tokenizer on an empty corpus")
    special = CAUSAL_SPECIAL_TOKENS[family]
    trainer_tokenizer = Tokenizer(models.BPE())
    if family == "llama":
        trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        leading_tokens, alphabet = special["vocabulary"] + _LLAMA_BYTE_PIECES, []
    else:
        trainer_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        leading_tokens, alphabet = special["vocabulary"], pre_tokenizers.ByteLevel.alphabet()
    if vocab_size <= len(leading_tokens) + len(alphabet):
        raise ValueError(f"a {vocab_size}-token {family} vocabulary is too small: its special and byte tokens alone "
                         f"take {len(leading_tokens) + len(alphabet)}")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=leading_tokens, initial_alphabet=alphabet,
                                  show_progress=False)
    trainer_tokenizer.train_from_iterator(sentences, trainer)
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    if len(trained["vocab"]) < vocab_size:
        raise ValueError(f"corpus too small for a {vocab_size}-token vocabulary: it allows at most "
                         f"{len(trained['vocab'])} tokens; lower the vocabulary size or add text")
    vocab, merges = trained["vocab"], [tuple(merge) for merge in trained["merges"]]
    tokenizer_class = LlamaTokenizer if family == "llama" else GPT2Tokenizer
    tokenizer = tokenizer_class(vocab=vocab, merges=merges, model_max_length=CAUSAL_MAX_POSITIONS,
                                **special["tokenizer"])
    out_dir = Path(out_dir)
    tokenizer.save_pretrained(out_dir)
    return AutoTokenizer.from_pretrained(out_dir)


def read_corpus(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Texts from .txt (one per non-blank line), .jsonl (every string value of every object) and .parquet (every
    string column, row by row) files; ValueError naming the file for a missing file or another extension."""
    texts: list[str] = []
    for path in map(Path, paths):
        if not path.is_file():
            raise ValueError(f"{path}: corpus file not found")
        suffix = path.suffix.lower()
        if suffix == ".txt":
            texts.extend(line for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        elif suffix == ".jsonl":
            texts.extend(_jsonl_strings(path))
        elif suffix == ".parquet":
            texts.extend(_parquet_strings(path))
        else:
            raise ValueError(f"{path}: unsupported corpus file type {path.suffix!r}; expected .txt, .jsonl or .parquet")
    return texts


def _jsonl_strings(path: Path) -> list[str]:
    strings = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{line_number}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{path}:{line_number}: expected a JSON object, got {type(record).__name__}")
            strings.extend(value for value in record.values() if isinstance(value, str) and value.strip())
    return strings


def _parquet_strings(path: Path) -> list[str]:
    # pyarrow is only needed for parquet corpora.
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    string_columns = [
        field.name for field in table.schema if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)
    ]
    return [
        value
        for row in table.select(string_columns).to_pylist()
        for value in row.values()
        if isinstance(value, str) and value.strip()
    ]


def save_checkpoint(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: str | os.PathLike) -> Path:
    """Save model (safetensors) and tokenizer into `out_dir`, replacing any existing folder.

    Everything is written to a hidden sibling folder first and renamed into place, so `out_dir` is either absent, the
    old checkpoint or the complete new one, never half-written. Returns `out_dir`.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # Siblings of out_dir sit on the same file system, so the renames below are atomic.
    staging = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        model.save_pretrained(staging)
        _save_tokenizer(tokenizer, staging)
        if out_dir.exists():
            retired = out_dir.parent / f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            out_dir.rename(retired)
            staging.rename(out_dir)
            shutil.rmtree(retired)
        else:
            staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return out_dir

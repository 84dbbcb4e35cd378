"""Build randomly initialised checkpoints offline (Flan-T5, GPT-2, OPT or LLaMA shaped), for tests and smoke runs.

Usage:
    minillm-make-tiny-models --out DIR --presets tiny-teacher tiny-student [--family t5|gpt2|opt|llama] \\
        (--tokenizer PATH | --train-tokenizer-on FILE [FILE ...] [--vocab-size 1000]) [--seed 0]

--family NAME               t5 (default): encoder-decoder Flan-T5 shapes; gpt2, opt, llama: MiniLLM's decoder-only
                            families, with the real tokenizers' special tokens (see CAUSAL_SPECIAL_TOKENS).

--tokenizer PATH            use an existing tokenizer folder (e.g. ../shared/tokenizers/flan-t5, or a hub name
                            when online); the models get its vocabulary rounded up to a multiple of 128.
--train-tokenizer-on FILE   train a tokenizer on .txt / .jsonl / .parquet files and save it to DIR/tokenizer/
                            first (t5: SentencePiece unigram; gpt2, opt: byte-level BPE; llama: BPE with byte
                            fallback).

Writes DIR/{preset}/ for each preset: config.json, model.safetensors and the tokenizer files, loadable with
minillm.models.load_model / load_tokenizer (or transformers' Auto classes). Prints one line per
preset: name, parameter count, vocabulary size, path. Presets: PRESETS (t5) and CAUSAL_PRESETS in
minillm/models/tiny.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoTokenizer, PreTrainedTokenizerBase
from transformers.utils.logging import disable_progress_bar

from minillm.models.tiny import (
    CAUSAL_FAMILIES,
    CAUSAL_PRESETS,
    PRESETS,
    build_causal_model,
    build_model,
    causal_preset_config,
    count_parameters,
    model_vocab_size,
    preset_config,
    read_corpus,
    save_checkpoint,
    train_causal_tokenizer,
    train_tokenizer,
)

DEFAULT_VOCAB_SIZE = 1000


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--presets", required=True, nargs="+", metavar="PRESET",
                        help=f"t5: any of {', '.join(PRESETS)}; gpt2, opt, llama: any of {', '.join(CAUSAL_PRESETS)}")
    parser.add_argument("--family", default="t5", choices=("t5", *CAUSAL_FAMILIES), help="model family (default t5)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--tokenizer", help="existing tokenizer folder or hub name")
    source.add_argument("--train-tokenizer-on", nargs="+", type=Path, metavar="FILE", help="corpus files to train on")
    parser.add_argument("--vocab-size", type=int, help=f"pieces in a trained tokenizer (default {DEFAULT_VOCAB_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default 0)")
    args = parser.parse_args(argv)
    if args.vocab_size is not None and args.tokenizer is not None:
        parser.error("--vocab-size applies only with --train-tokenizer-on")
    if args.vocab_size is not None and args.vocab_size < 4:
        parser.error(f"--vocab-size must be >= 4 (pad, EOS, unk and at least one piece), got {args.vocab_size}")
    return args


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A tokenizer from a local folder or a hub name; ValueError that names it when it cannot be loaded."""
    if not Path(name_or_path).is_dir() and (Path(name_or_path).is_absolute() or name_or_path.startswith((".", "~"))):
        raise ValueError(f"{name_or_path}: tokenizer folder not found")
    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (ValueError, OSError) as err:
        raise ValueError(f"{name_or_path}: cannot load a tokenizer: {err}") from None


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The per-save "Writing model shards" bars would drown the one line per preset.
    disable_progress_bar()
    try:
        # Check every preset name before any slow work.
        for preset in args.presets:
            if args.family == "t5":
                preset_config(preset)
            else:
                causal_preset_config(args.family, preset)
        if args.tokenizer is not None:
            tokenizer = load_tokenizer(args.tokenizer)
        else:
            texts = read_corpus(args.train_tokenizer_on)
            vocab_size = args.vocab_size if args.vocab_size is not None else DEFAULT_VOCAB_SIZE
            if args.family == "t5":
                tokenizer = train_tokenizer(texts, args.out / "tokenizer", vocab_size=vocab_size)
            else:
                tokenizer = train_causal_tokenizer(args.family, texts, args.out / "tokenizer", vocab_size=vocab_size)
        vocab_size = model_vocab_size(tokenizer)
        for preset in args.presets:
            if args.family == "t5":
                model = build_model(preset, vocab_size, seed=args.seed)
            else:
                model = build_causal_model(args.family, preset, vocab_size, seed=args.seed)
            path = save_checkpoint(model, tokenizer, args.out / preset)
            print(f"{preset}\tparams={count_parameters(model)}\tvocab={vocab_size}\t{path}")
    except (ValueError, OSError) as err:
        # One line: some transformers messages span several.
        sys.exit(f"make_tiny_models: {' '.join(str(err).split())}")


if __name__ == "__main__":
    main()

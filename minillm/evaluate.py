"""Evaluate checkpoints on ANLI (see :mod:`minillm.evaluation` for what is computed), one after another in a
single process (the interpreter and its imports start once, not once per checkpoint).

    python -m minillm.evaluate --model-path CKPT [CKPT ...] --data-dir DIR [--split test] [--rounds r1 r2 r3]
        [--batch-size 32] [--max-new-tokens 16] [--no-generate] [--max-examples N] [--dtype fp32|bf16]
        [--tokenizer-path TOK] [--out-dir DIR] [--teacher-model-path TEACHER]

With ``--teacher-model-path`` (a model sharing the checkpoints' tokenizer, loaded once with the same ``--dtype``)
the figures include the option KLs between each checkpoint and the teacher (``option_rev_kl``, ``option_fwd_kl``).
Prints each checkpoint's per-round table and writes its ``results.json`` and ``predictions.jsonl`` to
``CKPT/eval/SPLIT`` (or ``--out-dir``, with a single checkpoint), then a one-line summary per checkpoint. Runs on
the GPU when there is one. Bad input is reported in one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from .data.anli import ROUNDS
from .data.seq2seq import read_meta
from .evaluation import check_split, evaluate, format_table, write_results
from .models import load_model as load_checkpoint, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


class InputError(Exception):
    """A problem with the command line's input, reported as one line."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m minillm.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", required=True, nargs="+",
                        help="checkpoint folder(s) (Hugging Face layout), evaluated in turn")
    parser.add_argument("--data-dir", required=True, help="output folder of process_data_anli.sh")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--rounds", nargs="+", default=list(ROUNDS), choices=ROUNDS, help="rounds (default: all)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16, help="greedy generation length")
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="skip generation: rank classification and loss only")
    parser.add_argument("--max-examples", type=int, default=None, help="at most this many examples per round")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32", help="model weights dtype")
    parser.add_argument("--tokenizer-path", default=None,
                        help="tokenizer used when the checkpoint folder has none")
    parser.add_argument("--out-dir", default=None, help="with one --model-path only; default: MODEL_PATH/eval/SPLIT")
    parser.add_argument("--teacher-model-path", default=None,
                        help="teacher (same tokenizer) for the option KLs of every checkpoint; default: none")
    args = parser.parse_args(argv)
    if args.out_dir is not None and len(args.model_path) > 1:
        parser.error(f"--out-dir takes one --model-path (got {len(args.model_path)}); drop it to write each "
                     "checkpoint's results to CKPT/eval/SPLIT")
    for name in ("batch_size", "max_new_tokens", "max_examples"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    return args


def tokenizer_path_for(model_path: Path, args: argparse.Namespace) -> Path | str:
    """The checkpoint's own tokenizer, else ``--tokenizer-path``; :class:`InputError` when there is neither."""
    if any((model_path / name).is_file() for name in TOKENIZER_FILES):
        return model_path
    if args.tokenizer_path is None:
        raise InputError(f"--model-path {model_path} holds no tokenizer; pass --tokenizer-path")
    return args.tokenizer_path


def load_model(flag: str, path, args: argparse.Namespace):
    """The model at ``path`` in ``--dtype``, on the CPU; :class:`InputError` naming ``flag`` and ``path`` when it
    cannot be loaded (any failure is bad input here: a missing folder, truncated weights, a config that does not
    match them, ...). The library's default attention, as the checkpoint asks for it."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    try:
        return load_checkpoint(path, dtype=DTYPES[args.dtype], attn_implementation=None, flag=None)
    except Exception as err:
        raise InputError(f"{flag} {path}: cannot load the model: {_first_line(err)}") from None


def check_teacher_vocabulary(teacher, teacher_path: str, model_paths: list[Path]) -> None:
    """:class:`InputError` when a checkpoint's vocabulary (from its config.json) is not the teacher's: the option
    KLs compare distributions over the same token ids."""
    from transformers import AutoConfig

    for model_path in model_paths:
        try:
            vocab_size = AutoConfig.from_pretrained(model_path).vocab_size
        except Exception as err:
            raise InputError(f"--model-path {model_path}: cannot read its config: {_first_line(err)}") from None
        if vocab_size != teacher.config.vocab_size:
            raise InputError(f"--teacher-model-path {teacher_path}: vocabulary of {teacher.config.vocab_size} "
                             f"tokens but --model-path {model_path} has {vocab_size}; the teacher must share the "
                             "checkpoints' tokenizer")


def load_model_and_tokenizer(model_path: Path, args: argparse.Namespace):
    tokenizer_path = tokenizer_path_for(model_path, args)
    model = load_model("--model-path", model_path, args)
    try:
        tokenizer = load_tokenizer(tokenizer_path, flag=None)
    except Exception as err:
        raise InputError(f"tokenizer {tokenizer_path}: cannot load it: {_first_line(err)}") from None
    return model, tokenizer


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _first_line(err: Exception, limit: int = 200) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit] if lines else ''}"


def evaluate_checkpoint(model_path: Path, meta: dict, args: argparse.Namespace, teacher=None) -> dict:
    """Score one checkpoint (beside ``teacher``, already on the device, when given), print its table and write its
    results; returns the results."""
    model, tokenizer = load_model_and_tokenizer(model_path, args)
    if meta["vocab_size"] > model.config.vocab_size:
        raise InputError(f"--data-dir {args.data_dir} was tokenised with {meta['vocab_size']} tokens but "
                         f"{model_path} has {model.config.vocab_size} logits: wrong tokenizer for this model")
    model.to(_device())
    result = evaluate(model, tokenizer, args.data_dir, split=args.split, rounds=args.rounds,
                      batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, generate=args.generate,
                      max_examples=args.max_examples, teacher=teacher)
    result["settings"]["teacher_model_path"] = args.teacher_model_path
    out_dir = Path(args.out_dir) if args.out_dir else model_path / "eval" / args.split
    write_results(result, out_dir)
    print(f"{model_path} on {args.split}:")
    print(format_table(result))
    for example in result["overall"]["unparsed_examples"] or []:
        print(f"unparsed generation, uid {example['uid']}: {example['generated']!r}")
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'predictions.jsonl'}")
    return result


def main(argv=None) -> int:
    args = parse_args(argv)
    model_paths = [Path(path) for path in args.model_path]
    summary = []
    try:
        meta = read_meta(args.data_dir)
        check_split(args.data_dir, args.split, args.rounds)  # before the (slow) model loads
        for model_path in model_paths:
            if not (model_path / "config.json").is_file():
                raise InputError(f"--model-path {model_path}: no config.json there; give a checkpoint folder")
            tokenizer_path_for(model_path, args)
        teacher = None
        if args.teacher_model_path is not None:  # once for every checkpoint
            teacher = load_model("--teacher-model-path", args.teacher_model_path, args)
            check_teacher_vocabulary(teacher, args.teacher_model_path, model_paths)
            teacher.to(_device())
        for model_path in model_paths:
            result = evaluate_checkpoint(model_path, meta, args, teacher)
            rounds = "  ".join(f"{name} {r['accuracy_rank']:.2f}" for name, r in result["rounds"].items())
            summary.append(f"{model_path}: overall {result['overall']['accuracy_rank']:.2f}  ({rounds})")
    except (InputError, FileNotFoundError, ValueError) as err:  # ValueError: data whose files disagree, bad JSON
        print(f"minillm.evaluate: error: {(str(err).strip() or repr(err)).splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"\n== summary: accuracy (rank classification) on {args.split}", *summary, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Evaluate checkpoints on processed data (ANLI rounds r1 r2 r3, or Dolly's round dolly; see
:mod:`minillm.evaluation` for what is computed), one after another in a single process (the interpreter and its
imports start once, not once per checkpoint).

    python -m minillm.evaluate --model-path CKPT [CKPT ...] --data-dir DIR [--split test] [--rounds ROUND ...]
        [--batch-size 32] [--max-new-tokens 16] [--max-prompt-length 512] [--no-generate] [--max-examples N]
        [--decoding greedy|sample] [--seeds S1 S2 ...] [--temperature 1.0] [--top-k 0] [--top-p 1.0]
        [--no-repeat-ngram-size N] [--dtype fp32|bf16] [--tokenizer-path TOK] [--out-dir DIR]
        [--teacher-model-path TEACHER] [--deepspeed-config FILE]
    torchrun --nproc-per-node P --module minillm.evaluate ... --deepspeed-config configs/deepspeed/zero3_fp32.json

By default one greedy generation pass, as during training. MiniLLM's evaluation (scripts/*/eval/run_eval.sh) is
``--decoding sample --seeds 10 20 30 40 50 --temperature 1.0 --top-k 0 --top-p 1.0 --no-repeat-ngram-size 6``:
one sampled pass per seed (``torch.manual_seed(seed)`` before each), Rouge-L and exact match per seed, and their
mean and sample standard deviation over the seeds in the table, in results.json (``rougeL``, ``rougeL_std``,
``per_seed``, ...) and in the summary line; the loss and the rank figures are computed once. The decoding settings
go to results.json (``settings.decoding``).

With ``--teacher-model-path`` (a model sharing the checkpoints' tokenizer, loaded once with the same ``--dtype``)
the figures include the option KLs between each checkpoint and the teacher (``option_rev_kl``, ``option_fwd_kl``).
Prints each checkpoint's per-round table and writes its ``results.json`` and ``predictions.jsonl`` to
``CKPT/eval/SPLIT`` (or ``--out-dir``, with a single checkpoint), then a one-line summary per checkpoint. Runs on
the GPU when there is one. Bad input (flags included) is reported in one line on stderr with exit status 2.

Sharded (a model too large for one device, such as an 11B Flan-T5-XXL teacher): with ``--deepspeed-config`` a
ZeRO-3 file (training's ``configs/deepspeed/zero3*_*.json``), every checkpoint and the teacher are held by a DeepSpeed
ZeRO-3 inference engine over the launched processes (:func:`minillm.engine.gathering.shard_for_inference`): each process
keeps 1/P of every parameter and the layers are gathered one at a time for each forward call. The examples are dealt
out to the processes (``rank::P``, padded to equal work, generation with ``synced_gpus``) and the results gathered,
so the figures and predictions are those of one process holding the whole model; process 0 prints and writes. The
model's dtype is then the file's precision (fp32 or bf16) unless ``--dtype`` is given. A file of stage 0-2 shards
nothing (each process holds the whole model). Under a launcher without the flag the processes split the examples
the same way, each holding the whole model.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from .console import quiet_libraries
from .data.anli import ROUNDS
from .data.seq2seq import read_meta
from .engine.distributed import stop_heartbeat
from .engine.gathering import parameters_held, shard_for_inference
from .evaluation import (DECODING_MODES, Decoding, check_split, evaluate, format_table, read_inference_config,
                         write_results)
from .models import check_tokenizer_matches, load_model as load_checkpoint, load_tokenizer

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "spiece.model")


# MiniLLM's --no-repeat-ngram-size default, which its evaluation keeps; ANLI's answers are a few words, and its
# evaluation has never used the rule.
MINILLM_NO_REPEAT_NGRAM_SIZE = 6
# MiniLLM's sampling defaults (arguments.py), used for --decoding sample when a flag is not given.
SAMPLING_DEFAULTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0}


class InputError(Exception):
    """A problem with the command line's input, reported as one line."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse whose errors are one line on stderr (``minillm.evaluate: error: ...``, exit status 2), like every
    other bad input of this command."""

    def error(self, message):
        self.exit(2, f"minillm.evaluate: error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = OneLineErrorParser(prog="python -m minillm.evaluate", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    parser.add_argument("--model-path", required=True, nargs="+",
                        help="checkpoint folder(s) (Hugging Face layout), evaluated in turn")
    parser.add_argument("--data-dir", required=True,
                        help="processed data folder (process_data_anli.sh or process_data_dolly.sh output)")
    parser.add_argument("--split", default="test", help="split to evaluate (default: test)")
    parser.add_argument("--rounds", nargs="+", default=None,
                        help=f"rounds of --data-dir to evaluate (ANLI: {' '.join(ROUNDS)} or all; Dolly: dolly); "
                        "default: every round the folder was processed into, less ANLI's union all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=16,
                        help="most tokens generated per answer (default 16; MiniLLM's Dolly evaluation: 256)")
    parser.add_argument("--max-prompt-length", type=int, default=512,
                        help="prompts are cut to their last this many tokens (default 512; processing already "
                        "fits them: ANLI cuts premises to its MAX_PROMPT_LENGTH, Dolly drops prompts over 256)")
    parser.add_argument("--no-generate", dest="generate", action="store_false",
                        help="skip generation: loss and, with answer options, rank classification only")
    parser.add_argument("--decoding", choices=DECODING_MODES, default="greedy",
                        help="greedy (default; one pass) or sample (one pass per --seeds value)")
    parser.add_argument("--seeds", nargs="+", type=int, default=None,
                        help="one generation pass per seed, torch.manual_seed(seed) before each; the figures are "
                        "reported per seed and as their mean and standard deviation. Required by --decoding sample; "
                        "several need it (MiniLLM: 10 20 30 40 50). Default: one unseeded greedy pass")
    parser.add_argument("--temperature", type=float, default=None,
                        help=f"sampling temperature, > 0 (--decoding sample only; default "
                        f"{SAMPLING_DEFAULTS['temperature']}, MiniLLM's)")
    parser.add_argument("--top-k", type=int, default=None,
                        help=f"sample among the k most likely tokens, 0 for all (--decoding sample only; default "
                        f"{SAMPLING_DEFAULTS['top_k']}, MiniLLM's)")
    parser.add_argument("--top-p", type=float, default=None,
                        help=f"nucleus sampling mass in (0, 1], 1 for no cut (--decoding sample only; default "
                        f"{SAMPLING_DEFAULTS['top_p']}, MiniLLM's)")
    parser.add_argument("--no-repeat-ngram-size", type=int, default=None,
                        help=f"never generate an n-gram that already occurs (prompt included), 0 for off; default "
                        f"{MINILLM_NO_REPEAT_NGRAM_SIZE} (MiniLLM's) on data without answer options (Dolly), 0 on "
                        "ANLI (as its evaluation always ran)")
    parser.add_argument("--max-examples", type=int, default=None, help="at most this many examples per round")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="model weights dtype (default fp32, or the --deepspeed-config file's precision)")
    parser.add_argument("--tokenizer-path", default=None,
                        help="tokenizer used when the checkpoint folder has none")
    parser.add_argument("--out-dir", default=None, help="with one --model-path only; default: MODEL_PATH/eval/SPLIT")
    parser.add_argument("--teacher-model-path", default=None,
                        help="teacher (same tokenizer) for the option KLs of every checkpoint; default: none")
    parser.add_argument("--deepspeed-config", default=None,
                        help="a DeepSpeed JSON (configs/deepspeed/); ZeRO stage 3 shards every model over the "
                        "launched processes (ZeRO-3 inference); default: none, each process holds whole models")
    parser.add_argument("--allow-pickle-weights", action="store_true",
                        help="load checkpoints whose weights are pickles (pytorch_model.bin, no safetensors): "
                        "unpickling can run code stored in the file, so only for a source you trust")
    args = parser.parse_args(argv)
    if args.out_dir is not None and len(args.model_path) > 1:
        parser.error(f"--out-dir takes one --model-path (got {len(args.model_path)}); drop it to write each "
                     "checkpoint's results to CKPT/eval/SPLIT")
    for name in ("batch_size", "max_new_tokens", "max_examples", "max_prompt_length"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1 (got {value})")
    given = [flag for flag in ("seeds", "temperature", "top_k", "top_p", "no_repeat_ngram_size")
             if getattr(args, flag) is not None]
    if not args.generate and (given or args.decoding != "greedy"):
        parser.error(f"--{(given or ['decoding'])[0].replace('_', '-')} sets generation, which --no-generate skips")
    sampling_flags = [flag for flag in given if flag in SAMPLING_DEFAULTS]
    if args.decoding == "greedy" and sampling_flags:
        parser.error(f"--{sampling_flags[0].replace('_', '-')} applies to --decoding sample only")
    try:
        decoding_from_args(args, no_repeat_ngram_size_default=0)
    except ValueError as err:
        parser.error(str(err))
    return args


def decoding_from_args(args: argparse.Namespace, no_repeat_ngram_size_default: int) -> Decoding:
    """The :class:`Decoding` the flags ask for (MiniLLM's sampling defaults for flags not given; ValueError for
    settings that do not fit together)."""
    sampling = {name: default if getattr(args, name) is None else getattr(args, name)
                for name, default in SAMPLING_DEFAULTS.items()}
    no_repeat = args.no_repeat_ngram_size
    return Decoding(args.decoding, tuple(args.seeds or ()), **sampling,
                    no_repeat_ngram_size=no_repeat_ngram_size_default if no_repeat is None else no_repeat)


def data_rounds(meta: dict, args: argparse.Namespace) -> list[str]:
    """``--rounds``, or by default every round of the folder less ANLI's union ``all``; :class:`InputError` for a
    round the folder does not hold."""
    available = meta.get("rounds", [*ROUNDS, "all"])  # folders that predate the field are ANLI's
    if args.rounds is None:
        return [name for name in available if name != "all"]
    for name in args.rounds:
        if name not in available:
            raise InputError(f"--rounds {name}: --data-dir {args.data_dir} holds no such round (its rounds: "
                             f"{' '.join(available)})")
    return args.rounds


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
    try:
        return load_checkpoint(path, dtype=DTYPES[args.dtype or "fp32"], attn_implementation=None, flag=None,
                               allow_pickle=args.allow_pickle_weights)
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


def _device(local_rank: int = 0) -> str:
    return f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"


def inference_settings(args: argparse.Namespace) -> dict | None:
    """``--deepspeed-config`` read (:func:`minillm.evaluation.read_inference_config`), or None without it; sets
    ``args.dtype`` when not given: fp32, or the file's precision. :class:`InputError` for a file that cannot be
    read or whose precision (fp16) evaluation does not run in without ``--dtype``."""
    settings = None
    if args.deepspeed_config is not None:
        try:
            settings = read_inference_config(args.deepspeed_config)
        except ValueError as err:
            raise InputError(str(err)) from None
    if args.dtype is None:
        precision = "fp32" if settings is None else settings["precision"]
        if precision not in DTYPES:
            raise InputError(f"--deepspeed-config {args.deepspeed_config}: {precision} precision; evaluation runs in "
                             f"{' or '.join(sorted(DTYPES))}: pass --dtype, or a *_fp32.json / *_bf16.json file")
        args.dtype = precision
    return settings


def sharded(args: argparse.Namespace) -> bool:
    return args.inference is not None and args.inference["zero_stage"] == 3


def place(model, args: argparse.Namespace):
    """``(model, engine)``: with ZeRO-3 the bare model inside its inference engine (:func:`shard_for_inference`),
    else the model on this process's device and None."""
    if sharded(args):
        engine = shard_for_inference(model, args.inference["zero_optimization"])
        return engine.module, engine
    return model.to(args.device), None


def sharding_figures(model, args: argparse.Namespace) -> dict | None:
    """With ZeRO-3: the stage, the process count, the model's parameters and how many each process holds (every
    process must call this); else None."""
    if not sharded(args):
        return None
    total, held = parameters_held(model)
    per_process = [None] * args.world_size
    dist.all_gather_object(per_process, held)
    return {"zero_stage": 3, "processes": args.world_size, "parameters": total, "held_per_process": per_process}


def _first_line(err: Exception, limit: int = 200) -> str:
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:limit] if lines else ''}"


def evaluate_checkpoint(model_path: Path, meta: dict, args: argparse.Namespace, rounds: list[str],
                        decoding_settings: Decoding, teacher=None) -> dict:
    """Score one checkpoint (beside ``teacher``, already on the device, when given), print its table (and, with
    seeds, each seed's overall figures) and write its results; returns the results."""
    model, tokenizer = load_model_and_tokenizer(model_path, args)
    try:  # the data, the tokenizer and the model agree (the training's check)
        check_tokenizer_matches(tokenizer, model, meta, tokenizer_flag="tokenizer",
                                tokenizer_path=tokenizer_path_for(model_path, args), model_flag="--model-path",
                                model_path=model_path, data_dir=args.data_dir)
    except ValueError as err:
        raise InputError(str(err)) from None
    model, engine = place(model, args)
    sharding = sharding_figures(model, args)
    result = evaluate(model, tokenizer, args.data_dir, split=args.split, rounds=rounds, batch_size=args.batch_size,
                      max_new_tokens=args.max_new_tokens, generate=args.generate, max_examples=args.max_examples,
                      max_prompt_length=args.max_prompt_length, teacher=teacher, decoding=decoding_settings)
    if engine is not None:
        engine.destroy()  # the next checkpoint gets its own engine
    result["settings"].update(teacher_model_path=args.teacher_model_path, deepspeed_config=args.deepspeed_config,
                              dtype=args.dtype, sharding=sharding)
    if args.rank != 0:  # every process holds the whole result; one writes and prints it
        return result
    out_dir = Path(args.out_dir) if args.out_dir else model_path / "eval" / args.split
    if sharding is not None:
        print(f"{model_path}: ZeRO-3 over {sharding['processes']} processes, each holding at most "
              f"{max(sharding['held_per_process']):,} of its {sharding['parameters']:,} parameters")
    write_results(result, out_dir)
    print(f"{model_path} on {args.split}:")
    print(format_table(result))
    for figures in result["overall"]["per_seed"] or []:
        accuracy = figures["accuracy_generate"]
        print(f"seed {figures['seed']}: rougeL {figures['rougeL']:.2f}  EM {figures['exact_match']:.2f}"
              + ("" if accuracy is None else f"  acc(gen) {accuracy:.2f}"))
    for example in result["overall"]["unparsed_examples"] or []:
        print(f"unparsed generation, uid {example['uid']}: {example['generated']!r}")
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'predictions.jsonl'}")
    return result


def headline(summary: dict) -> str:
    """A summary's headline figure: the rank accuracy on data with answer options, else Rouge-L (``mean ± sd``
    over several seeds), else (without generation) the loss."""
    if summary["accuracy_rank"] is not None:
        return f"{summary['accuracy_rank']:.2f}"
    if summary["rougeL"] is not None:
        spread = "" if summary["rougeL_std"] is None else f" ± {summary['rougeL_std']:.2f}"
        return f"{summary['rougeL']:.2f}{spread}"
    return f"{summary['loss']:.4f}"


def summary_line(model_path: Path, result: dict) -> str:
    """``CKPT: overall X  (round X ...)`` with X the :func:`headline` figure."""
    rounds = "  ".join(f"{name} {headline(r)}" for name, r in result["rounds"].items())
    return f"{model_path}: overall {headline(result['overall'])}  ({rounds})"


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_libraries()  # before deepspeed is imported and any model is loaded
    args.rank, args.world_size, args.device, args.inference = 0, 1, _device(), None
    try:
        return run(args)
    finally:  # shut the process group down before the interpreter exits, not in the exit-time destructors
        stop_heartbeat()  # its thread must not be inside a store call while the interpreter tears threads down
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def run(args: argparse.Namespace) -> int:
    """:func:`main` once the flags are parsed: in a process group under a launcher or with --deepspeed-config."""
    model_paths = [Path(path) for path in args.model_path]
    summary = []
    try:
        args.inference = inference_settings(args)
        if args.inference is not None or int(os.environ.get("WORLD_SIZE", "1")) > 1:
            from .engine.distributed import init_distributed

            args.rank, args.world_size, local_rank = init_distributed()
            args.device = _device(local_rank)
            if torch.cuda.is_available():
                torch.cuda.set_device(local_rank)  # the collectives' device
        meta = read_meta(args.data_dir)
        rounds = data_rounds(meta, args)
        check_split(args.data_dir, args.split, rounds)  # before the (slow) model loads
        has_options = meta.get("task", "anli") == "anli"
        decoding_settings = decoding_from_args(args, 0 if has_options else MINILLM_NO_REPEAT_NGRAM_SIZE)
        for model_path in model_paths:
            if not (model_path / "config.json").is_file():
                raise InputError(f"--model-path {model_path}: no config.json there; give a checkpoint folder")
            tokenizer_path_for(model_path, args)
        teacher = teacher_engine = None
        if args.teacher_model_path is not None:  # once for every checkpoint
            teacher = load_model("--teacher-model-path", args.teacher_model_path, args)
            check_teacher_vocabulary(teacher, args.teacher_model_path, model_paths)
            teacher, teacher_engine = place(teacher, args)
        for model_path in model_paths:
            result = evaluate_checkpoint(model_path, meta, args, rounds, decoding_settings, teacher_engine or teacher)
            summary.append(summary_line(model_path, result))
    except (InputError, FileNotFoundError, ValueError) as err:  # ValueError: data whose files disagree, bad JSON
        if args.rank == 0:  # the same input on every process: one line
            print(f"minillm.evaluate: error: {(str(err).strip() or repr(err)).splitlines()[0]}", file=sys.stderr)
        return 2
    if args.world_size > 1:
        dist.barrier()  # process 0 has written every result before any process leaves
    if args.rank != 0:
        return 0
    if has_options:
        heading = "accuracy (rank classification)"
    elif not args.generate:
        heading = "loss"
    else:
        heading = "Rouge-L" + (f" (mean ± sd over seeds {' '.join(map(str, decoding_settings.seeds))})"
                               if len(decoding_settings.seeds) > 1 else "")
    print(f"\n== summary: {heading} on {args.split}", *summary, sep="\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

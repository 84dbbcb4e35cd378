"""Print the padding fraction of the trainer's length-bucketed batches on a processed data set.

    python tools/padding_fraction.py --data-dir PROCESSED [--round all] [--split train] [--batch-size 8] \
        [--grad-acc 1] [--processes 1] [--bucket-window 50] [--seed 42] [--epochs 1] [--max-prompt-length 512] \
        [--max-target-length 128]

The defaults are the trainer's (minillm/engine/config.py). It builds, for every process, the micro-batches the
trainer would train on for the given epochs and counts padded cells over the encoder input and the decoder target
(the ``padding`` the trainer logs), once with --bucket-window and once with a window of one global batch (each global
batch a random draw, sorted only within itself); no model is loaded. Bad arguments end with one line on stderr and
exit status 2.
"""

import argparse
import dataclasses
import sys
from pathlib import Path

from minillm.data.seq2seq import Seq2SeqExamples, read_meta
from minillm.engine.padding import padding_fraction
from minillm.engine.config import TrainConfig

TRAINER_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
SIZE_FLAGS = ("batch_size", "grad_acc", "processes", "bucket_window", "epochs", "max_prompt_length",
              "max_target_length")


def fail(message: str):
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True, help="an output folder of process_data_anli.sh")
    parser.add_argument("--round", default=TRAINER_DEFAULTS["train_round"], choices=("r1", "r2", "r3", "all"))
    parser.add_argument("--split", default="train", choices=("train", "dev", "test"))
    parser.add_argument("--processes", type=int, default=1, help="data-parallel processes (NUM_GPUS x NUM_NODES)")
    parser.add_argument("--epochs", type=int, default=1)
    for name in ("batch_size", "grad_acc", "bucket_window", "seed", "max_prompt_length", "max_target_length"):
        parser.add_argument("--" + name.replace("_", "-"), type=int, default=TRAINER_DEFAULTS[name])
    args = parser.parse_args(argv)
    for name in SIZE_FLAGS:
        if getattr(args, name) < 1:
            fail(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    try:
        read_meta(args.data_dir)
        examples = Seq2SeqExamples(args.data_dir, args.round, args.split, args.max_prompt_length,
                                   args.max_target_length)
    except (FileNotFoundError, ValueError) as error:
        fail(str(error).splitlines()[0])
    global_batch = args.batch_size * args.processes * args.grad_acc
    steps_per_epoch = len(examples) // global_batch
    if steps_per_epoch == 0:
        fail(f"--data-dir {args.data_dir}: {len(examples)} examples in {args.round}/{args.split}, fewer than one "
             f"global batch ({global_batch})")
    steps = range(args.epochs * steps_per_epoch)
    # The pad id fills cells but does not change how many there are.
    fractions = {window: padding_fraction(examples, steps, args.batch_size, args.grad_acc, args.processes, args.seed,
                                          window, pad_token_id=0)
                 for window in (args.bucket_window, 1)}
    print(f"{args.data_dir} {args.round}/{args.split}: {len(examples):,} examples, global batch {global_batch} "
          f"= batch {args.batch_size} x processes {args.processes} x accumulation {args.grad_acc}, "
          f"{len(steps):,} steps (epochs {args.epochs}, seed {args.seed})")
    print(f"padding fraction: {fractions[args.bucket_window]:.4f} with --bucket-window {args.bucket_window}, "
          f"{fractions[1]:.4f} with --bucket-window 1 (random global batches)")


if __name__ == "__main__":
    main()

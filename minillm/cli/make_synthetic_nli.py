"""Write the deterministic synthetic NLI data set (the offline stand-in for ANLI) in the facebook/anli layout.

    minillm-make-synthetic-nli --out DIR [--seed 0] [--train-per-round 3000] [--dev-per-round 300] \
        [--test-per-round 300]

Writes DIR/plain_text/{train,dev,test}_r{1,2,3}-00000-of-00001.parquet, which minillm-process-anli reads as
--raw-dir DIR, and prints one line per file with its row and label counts. Sizes must be non-negative and divisible
by 3 (every split holds exactly a third of each label); bad arguments end with one line on stderr and exit status 2.
See minillm/data/synthetic.py for what the three rounds contain.
"""

import argparse
import sys
from collections import Counter
from pathlib import Path

from minillm.data.synthetic import LABEL_NAMES, generate, hf_file_name, write_hf_layout


def fail(message: str):
    """One line on stderr and exit status 2, like argparse's own errors but without the usage block."""
    print(f"{Path(sys.argv[0]).name}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="output folder; the files go to OUT/plain_text")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-round", type=int, default=3000)
    parser.add_argument("--dev-per-round", type=int, default=300)
    parser.add_argument("--test-per-round", type=int, default=300)
    args = parser.parse_args(argv)
    for flag in ("train_per_round", "dev_per_round", "test_per_round"):
        size = getattr(args, flag)
        option = "--" + flag.replace("_", "-")
        if size < 0:
            fail(f"{option} must be >= 0, got {size}")
        if size % 3:
            fail(f"{option} must be divisible by 3 so that the three labels are exactly balanced, got {size}")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        (args.out / "plain_text").mkdir(parents=True, exist_ok=True)  # before the (longer) generation
    except OSError as err:
        fail(f"--out {args.out}: cannot create {args.out / 'plain_text'} ({err.strerror or err})")
    try:
        data = generate(args.seed, args.train_per_round, args.dev_per_round, args.test_per_round)
    except ValueError as err:  # a round without room for that many distinct examples
        fail(str(err))
    try:
        folder = write_hf_layout(data, args.out)
    except OSError as err:  # a full disk, a folder made read-only meanwhile
        fail(f"--out {args.out}: cannot write the data ({err.strerror or err})")
    for (round_name, split), records in data.items():
        counts = Counter(record["label"] for record in records)
        labels = ", ".join(f"{name} {counts[label]}" for label, name in enumerate(LABEL_NAMES))
        print(f"{folder / hf_file_name(round_name, split)}: {len(records)} rows ({labels})")


if __name__ == "__main__":
    main()

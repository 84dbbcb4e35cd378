"""Write the project's offline Dolly-format sample: deterministic instruction/context/response rows generated from
templates (no Dolly text), with databricks-dolly-15k's field names, for tests and the demo.

    minillm-make-dolly-sample --out data/dolly-sample/sample.jsonl [--rows 300] [--seed 0]
"""

import argparse
from pathlib import Path

from minillm.data.dolly import sample_rows, write_jsonl_atomically


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True, help="JSON-lines file to write")
    p.add_argument("--rows", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.rows < 1:
        p.error("--rows must be >= 1")
    write_jsonl_atomically(args.out, sample_rows(args.rows, args.seed))
    print(f"make_dolly_sample: {args.rows} rows -> {args.out}")


if __name__ == "__main__":
    main()

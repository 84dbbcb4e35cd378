"""Benchmark the ANLI processing pipeline (text stage + tokenised full/ and prompt/ shards) on this machine.

    python tools/bench_data_pipeline.py [--anli ../shared/data/anli] [--tokenizer ../shared/tokenizers/flan-t5]

Prints wall-clock seconds for (1) the six real ANLI dev/test splits, end to end including tokenizer load, and
(2) an ANLI-train-sized set of 170,000 examples (real dev/test rows repeated under new uids, split over the
rounds as 17k / 45k / 108k), against the targets of 10 s and 60 s.
"""

import argparse
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from minillm.data.process import build_shards, build_text

REPO = Path(__file__).resolve().parents[1]
TRAIN_SIZES = {"r1": 17_000, "r2": 45_000, "r3": 108_000}


def run_pipeline(raw_dir: Path, out_dir: Path, tokenizer: str) -> tuple[float, float]:
    started = time.perf_counter()
    build_text(raw_dir, out_dir, "flan", "label")
    text_done = time.perf_counter()
    build_shards(out_dir, tokenizer)
    return text_done - started, time.perf_counter() - text_done


def make_train_sized_set(anli: Path, out: Path) -> int:
    """Real dev/test rows repeated with fresh uids into train_r{k} parquet files of TRAIN_SIZES rows."""
    rows = pq.read_table(sorted((anli / "plain_text").glob("*.parquet"))).to_pylist()
    (out / "plain_text").mkdir(parents=True)
    for k, (round_name, size) in enumerate(TRAIN_SIZES.items(), 1):
        picked = [dict(rows[i % len(rows)], uid=f"bench-{round_name}-{i}") for i in range(size)]
        pq.write_table(pa.Table.from_pylist(picked), out / "plain_text" / f"train_r{k}-00000-of-00001.parquet")
    return sum(TRAIN_SIZES.values())


def main() -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--anli", type=Path, default=REPO.parent / "shared" / "data" / "anli")
    p.add_argument("--tokenizer", default=str(REPO.parent / "shared" / "tokenizers" / "flan-t5"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text_s, shards_s = run_pipeline(args.anli, tmp / "real", args.tokenizer)
        print(f"real ANLI dev+test (6,400 examples): text {text_s:.2f} s + tokenizer load and shards {shards_s:.2f} s "
              f"= {text_s + shards_s:.2f} s (target < 10 s)")
        n = make_train_sized_set(args.anli, tmp / "raw170k")
        text_s, shards_s = run_pipeline(tmp / "raw170k", tmp / "big", args.tokenizer)
        total = text_s + shards_s
        print(f"train-sized set ({n:,} examples): text {text_s:.2f} s + tokenizer load and shards {shards_s:.2f} s "
              f"= {total:.2f} s, {n / total:,.0f} examples/s (target < 60 s)")


if __name__ == "__main__":
    main()

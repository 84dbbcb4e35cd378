"""SeqKD shards: training targets from the teacher's outputs, dev and test from the gold data.

    python tools/process_pseudo_data_seqkd.py --generated-dir GEN_DIR --gold-dir DATA_DIR --out-dir OUT_DIR

GEN_DIR is an output of generate_data_seqkd.sh (minillm/generate_seqkd.py); DATA_DIR the processed gold folder
it generated from, whose tokenizer, prompt template and prompt length are reused, so prompts and the dev and test
shards come out identical to the gold ones. The training targets are the teacher's token ids as generated
(``target_ids``), never the gold targets. Usually called through t5-scripts/tools/process_pseudo_data_seqkd.sh.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm.data.anli import DataError  # noqa: E402
from minillm.data.process import build_pseudo_text, build_shards, log, staged_text_dir  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--generated-dir", type=Path, required=True, help="output of generate_data_seqkd.sh")
    p.add_argument("--gold-dir", type=Path, required=True, help="processed gold data the teacher generated from")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    try:
        gold_meta_path = args.gold_dir / "meta.json"
        if not gold_meta_path.is_file():
            raise DataError(f"{gold_meta_path}: missing; DATA_DIR must be a folder processed by process_data_anli.sh")
        gold = json.loads(gold_meta_path.read_text())
        counts = build_pseudo_text(args.generated_dir, args.gold_dir, args.out_dir)
        log(f"pseudo text: {sum(counts.values())} examples ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        build_shards(args.out_dir, gold["tokenizer"], gold["max_prompt_length"], gold["dtype"], gold["shard_size"],
                     staged_text=True)
    except DataError as err:
        shutil.rmtree(staged_text_dir(args.out_dir), ignore_errors=True)  # the previous output stays as it was
        sys.exit(f"process_pseudo_data_seqkd: error: {err}")


if __name__ == "__main__":
    main()

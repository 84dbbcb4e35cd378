"""SeqKD shards: training targets from the teacher's outputs, dev and test from the gold data.

    python tools/process_pseudo_data_seqkd.py --generated-dir GEN_DIR --gold-dir DATA_DIR --out-dir OUT_DIR

GEN_DIR is an output of generate_data_seqkd.sh (minillm/generate_seqkd.py); DATA_DIR the processed gold folder
it generated from, whose tokenizer, prompt template and prompt length are reused, so prompts and the dev and test
shards come out identical to the gold ones. The training targets are the teacher's token ids as generated
(``target_ids``), never the gold targets, and none may contain the pad id (generation never emits it: it is the
decoder start and the padding; a target holding it comes from another generator and is refused, naming the file and
the uid). Usually called through t5-scripts/tools/process_pseudo_data_seqkd.sh.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from minillm.data.anli import ROUNDS, DataError, read_jsonl_objects  # noqa: E402
from minillm.data.process import build_pseudo_text, build_shards, log, staged_text_dir  # noqa: E402


def check_no_pad_in_targets(generated_dir: Path, tokenizer_name: str) -> None:
    """:class:`DataError` naming the file, line and uid of the first generated target whose ``target_ids`` hold the
    tokenizer's pad id (the records were checked for their fields already)."""
    from transformers import AutoTokenizer

    pad_token_id = AutoTokenizer.from_pretrained(tokenizer_name).pad_token_id
    split = json.loads((generated_dir / "meta.json").read_text())["split"]
    for round_name in ROUNDS:
        path = generated_dir / round_name / f"{split}.jsonl"
        if not path.is_file():
            continue
        for where, record in read_jsonl_objects(path):
            if pad_token_id in record["target_ids"]:
                raise DataError(f"{where}: uid {record['uid']}: target_ids hold the pad id {pad_token_id}, which "
                                "generation never emits; regenerate it with generate_data_seqkd.sh")


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
        check_no_pad_in_targets(args.generated_dir, gold["tokenizer"])
        log(f"pseudo text: {sum(counts.values())} examples ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        build_shards(args.out_dir, gold["tokenizer"], gold["max_prompt_length"], gold["dtype"], gold["shard_size"],
                     staged_text=True)
    except DataError as err:
        shutil.rmtree(staged_text_dir(args.out_dir), ignore_errors=True)  # the previous output stays as it was
        sys.exit(f"process_pseudo_data_seqkd: error: {err}")


if __name__ == "__main__":
    main()

"""SeqKD shards: training targets from the teacher's outputs, dev and test from the gold data.

    minillm-process-seqkd --generated-dir GEN_DIR --gold-dir DATA_DIR --out-dir OUT_DIR

GEN_DIR is an output of generate_data_seqkd.sh (minillm/generate_seqkd.py); DATA_DIR the processed gold folder
it generated from (ANLI or Dolly, for a causal or a T5 tokenizer), whose tokenizer, prompts and settings are reused,
so prompts and the dev and test shards come out identical to the gold ones: ANLI's are rebuilt from the text with
DATA_DIR's template and prompt length (minillm.data.process.build_shards), Dolly's taken from DATA_DIR's shards
(build_pseudo_shards). The training targets are the teacher's token ids as generated (``target_ids``), never the
gold targets, and none may hold an id the teacher's adapter bans (the pad id where it is not EOS: T5's, which is
also the decoder start, OPT's, LLaMA's; GPT-2 pads with EOS and bans nothing): a target holding one comes from
another generator and is refused, naming the file and the uid. Usually called through
t5-scripts/tools/process_pseudo_data_seqkd.sh or scripts/{gpt2,opt,llama}/tools/process_pseudo_data_seqkd.sh. Bad
input ends with one line on stderr and exit status 1; the previous output stays as it was.
"""

import argparse
import json
import shutil
import sys
from pathlib import Path

from minillm.data.anli import DataError, read_jsonl_objects
from minillm.data.process import (build_pseudo_shards, build_pseudo_text, build_shards, log,
                                  staged_text_dir)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--generated-dir", type=Path, required=True, help="output of generate_data_seqkd.sh")
    p.add_argument("--gold-dir", type=Path, required=True, help="processed gold data the teacher generated from")
    p.add_argument("--out-dir", type=Path, required=True)
    return p


def banned_target_ids(generated_meta: dict, tokenizer_name: str) -> set[int]:
    """The ids the teacher's adapter banned, as the generation recorded them; for a generation from before it
    recorded them (always T5's), the tokenizer's pad id."""
    if "banned_ids" in generated_meta:
        return set(generated_meta["banned_ids"])
    from transformers import AutoTokenizer

    return {AutoTokenizer.from_pretrained(tokenizer_name).pad_token_id}


def check_no_banned_ids(generated_dir: Path, tokenizer_name: str) -> None:
    """:class:`DataError` naming the file, line and uid of the first generated target whose ``target_ids`` hold a
    banned (pad) id (the records were checked for their fields already)."""
    meta = json.loads((generated_dir / "meta.json").read_text())
    banned = banned_target_ids(meta, tokenizer_name)
    for round_name in meta["rounds"]:
        path = generated_dir / round_name / f"{meta['split']}.jsonl"
        if not path.is_file():
            continue
        for where, record in read_jsonl_objects(path):
            held = banned.intersection(record["target_ids"])
            if held:
                raise DataError(f"{where}: uid {record['uid']}: target_ids hold the pad id {min(held)}, which "
                                "generation never emits; regenerate it with generate_data_seqkd.sh")


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    try:
        gold_meta_path = args.gold_dir / "meta.json"
        if not gold_meta_path.is_file():
            raise DataError(f"{gold_meta_path}: missing; DATA_DIR must be a folder processed by process_data_anli.sh "
                            "or process_data_dolly.sh")
        gold = json.loads(gold_meta_path.read_text())
        counts = build_pseudo_text(args.generated_dir, args.gold_dir, args.out_dir)
        check_no_banned_ids(args.generated_dir, gold["tokenizer"])
        log(f"pseudo text: {sum(counts.values())} examples ({', '.join(f'{k} {v}' for k, v in counts.items())})")
        if gold.get("task", "anli") == "anli":
            build_shards(args.out_dir, gold["tokenizer"], gold["max_prompt_length"], gold["dtype"],
                         gold["shard_size"], staged_text=True, model_type=gold.get("model_type", "auto"))
        else:
            build_pseudo_shards(args.out_dir, args.gold_dir)
    except DataError as err:
        for staging in (staged_text_dir(args.out_dir), args.out_dir / ".shards.tmp"):
            shutil.rmtree(staging, ignore_errors=True)  # the previous output stays as it was
        sys.exit(f"process_pseudo_data_seqkd: error: {err}")


if __name__ == "__main__":
    main()

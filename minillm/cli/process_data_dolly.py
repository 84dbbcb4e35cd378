"""Process Dolly (instruction, context, response) into text and memory-mapped token shards, as MiniLLM does.

    minillm-process-dolly --raw-file data/dolly/raw.jsonl --out-dir processed_data/dolly/gpt2 \
        --tokenizer gpt2 [--model-type auto|seq2seq|causal] [--template alpaca] [--max-prompt-length 256] \
        [--dev-num 1000] [--test-num 500] [--stage all|text|shards] [--dtype auto|uint16|int32] [--shard-size 0]

Without --raw-file, --download-dir is searched for MiniLLM's raw.jsonl, then databricks-dolly-15k.jsonl, and
databricks/databricks-dolly-15k is downloaded there when neither exists. Usually called through
scripts/{gpt2,opt,llama}/tools/process_data_dolly.sh. Bad input ends with one line on stderr and exit status 1;
see minillm/data/dolly.py for the splits and the output layout.
"""

import argparse
from pathlib import Path

from minillm.cli import add_shard_options
from minillm.data.dolly import (DOWNLOAD_FILE, MINILLM_RAW_FILE, build_dolly_shards, build_dolly_text,
                                download_dolly, log)
from minillm.data.process import MODEL_TYPES, output_kept_whole, staged_text_dir
from minillm.data.templates import INSTRUCTION_TEMPLATES


def parse_args(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--raw-file", type=Path, help="Dolly JSON lines (databricks-dolly-15k or MiniLLM raw.jsonl fields)")
    p.add_argument("--download-dir", type=Path, help="where to look for (or download) the data without --raw-file")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--tokenizer", required=True, help="hub name or local tokenizer folder")
    p.add_argument("--model-type", default="auto", choices=("auto", *MODEL_TYPES),
                   help="seq2seq: prompts end in EOS; causal: they do not; auto: seq2seq when the tokenizer appends "
                   "EOS to every text (T5), else causal")
    p.add_argument("--template", default="alpaca", choices=sorted(INSTRUCTION_TEMPLATES))
    p.add_argument("--max-prompt-length", type=int, default=256, help="longer prompts are dropped (MiniLLM: 256)")
    p.add_argument("--dev-num", type=int, default=1000, help="first rows held out as dev (MiniLLM's valid: 1000)")
    p.add_argument("--test-num", type=int, default=500, help="next rows held out as test (0: none)")
    p.add_argument("--stage", default="all", choices=("all", "text", "shards"))
    add_shard_options(p)
    args = p.parse_args(argv)
    if args.raw_file is None and args.download_dir is None and args.stage != "shards":
        p.error("give --raw-file, or --download-dir to find or download databricks-dolly-15k")
    return args


def resolve_raw_file(args) -> Path:
    if args.raw_file is not None:
        return args.raw_file
    for name in (MINILLM_RAW_FILE, DOWNLOAD_FILE):
        if (args.download_dir / name).is_file():
            return args.download_dir / name
    log(f"no {MINILLM_RAW_FILE} or {DOWNLOAD_FILE} in {args.download_dir}: downloading databricks-dolly-15k")
    return download_dolly(args.download_dir)


def main(argv=None) -> None:
    args = parse_args(argv)
    stagings = [staged_text_dir(args.out_dir), args.out_dir / ".shards.tmp"]
    with output_kept_whole("process_data_dolly", args.out_dir, stagings):
        # STAGE=all keeps the new text staged until the shards built from it are done, then publishes both.
        if args.stage in ("all", "text"):
            raw_file = resolve_raw_file(args)
            counts = build_dolly_text(raw_file, args.out_dir, args.template, args.dev_num, args.test_num,
                                      publish_text=args.stage == "text")
            log(f"text stage: {counts} examples from {raw_file}")
        if args.stage in ("all", "shards"):
            build_dolly_shards(args.out_dir, args.tokenizer, args.max_prompt_length, args.dtype, args.shard_size,
                               args.model_type, staged_text=args.stage == "all", template_name=args.template)


if __name__ == "__main__":
    main()

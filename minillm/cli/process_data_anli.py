"""Process ANLI (or any data in its layouts) into normalised text and memory-mapped token shards.

    minillm-process-anli --raw-dir data/anli --out-dir processed_data/anli/flan-label \
        --tokenizer google/flan-t5-base [--template flan] [--target label] [--max-prompt-length 512] \
        [--stage all|text|shards] [--dtype auto|uint16|int32] [--shard-size 0] [--model-type auto|seq2seq|causal]

Usually called through t5-scripts/tools/process_data_anli.sh, which maps environment overrides onto these flags.
Bad input ends with one line on stderr and exit status 1; see minillm/data/process.py for the output layout.
"""

import argparse
from pathlib import Path

from minillm.cli import add_shard_options
from minillm.data.anli import DataError, detect_layout, download_anli
from minillm.data.process import MODEL_TYPES, build_shards, build_text, log, output_kept_whole, staged_text_dir
from minillm.data.templates import TARGET_KINDS, TEMPLATES


def parse_args(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("--raw-dir", type=Path, help="raw ANLI folder (either layout); default: --download-dir, "
                   "downloading facebook/anli there if it holds no data")
    p.add_argument("--download-dir", type=Path, help="where to download facebook/anli when --raw-dir is not given")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--tokenizer", default="google/flan-t5-base", help="hub name or local tokenizer folder")
    p.add_argument("--template", default="flan", choices=sorted(TEMPLATES))
    p.add_argument("--target", default="label", choices=TARGET_KINDS)
    p.add_argument("--max-prompt-length", type=int, default=512)
    p.add_argument("--stage", default="all", choices=("all", "text", "shards"))
    add_shard_options(p)
    p.add_argument("--model-type", default="auto", choices=("auto", *MODEL_TYPES),
                   help="seq2seq: prompts end in EOS; causal: they do not, and end in the answer cue; auto: seq2seq "
                   "when the tokenizer appends EOS to every text (T5), else causal")
    args = p.parse_args(argv)
    if args.raw_dir is None and args.download_dir is None and args.stage != "shards":
        p.error("give --raw-dir, or --download-dir to download facebook/anli")
    return args


def resolve_raw_dir(args) -> Path:
    if args.raw_dir is not None:
        return args.raw_dir
    try:
        detect_layout(args.download_dir)
        return args.download_dir
    except DataError:
        log(f"no raw ANLI data in {args.download_dir}: downloading facebook/anli")
        return download_anli(args.download_dir)


def main(argv=None) -> None:
    args = parse_args(argv)
    with output_kept_whole("process_data_anli", args.out_dir, [staged_text_dir(args.out_dir)]):
        # STAGE=all keeps the new text staged until the shards built from it are done, then publishes both.
        if args.stage in ("all", "text"):
            raw_dir = resolve_raw_dir(args)
            counts = build_text(raw_dir, args.out_dir, args.template, args.target, publish=args.stage == "text")
            log(f"text stage: {sum(counts.values())} examples from {raw_dir} in {len(counts)} round/split files")
        if args.stage in ("all", "shards"):
            build_shards(args.out_dir, args.tokenizer, args.max_prompt_length, args.dtype, args.shard_size,
                         args.template, args.target, staged_text=args.stage == "all", model_type=args.model_type)


if __name__ == "__main__":
    main()

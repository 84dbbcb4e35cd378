"""Process a plain-text corpus into fixed-length chunks in the (prompt, target) shard format, for the LM term.

    minillm-process-pretrain --corpus-dir data/openwebtext --out-dir processed_data/pretrain/gpt2 \
        --tokenizer gpt2 [--model-type auto|seq2seq|causal] [--max-length 512] [--dev-num 10000] [--train-num 0] \
        [--noise-density 0.15] [--mean-noise-span-length 3] [--seed 42] [--dtype auto] [--shard-size 100000]
    minillm-process-pretrain --hf-dataset openwebtext ...   (online: streams the dataset)

Causal models get prompt = first token, target = the rest; seq2seq (T5) models get span corruption. Usually called
through scripts/{gpt2,opt,llama}/tools/process_data_pretrain.sh or t5-scripts/tools/process_data_pretrain.sh. Bad
input ends with one line on stderr and exit status 1; see minillm/data/pretrain.py for the formats.
"""

import argparse
from pathlib import Path

from minillm.data.pretrain import build_pretrain, iter_corpus_documents, iter_hf_documents
from minillm.data.process import MODEL_TYPES, output_kept_whole


def parse_args(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--corpus-dir", type=Path, help="folder of .txt (a document per line) and .jsonl (text) files")
    source.add_argument("--hf-dataset", help="Hugging Face dataset with a text column, streamed (e.g. openwebtext)")
    p.add_argument("--out-dir", type=Path, required=True)
    p.add_argument("--tokenizer", required=True, help="hub name or local tokenizer folder")
    p.add_argument("--model-type", default="auto", choices=("auto", *MODEL_TYPES),
                   help="causal: prompt = first token, target = the rest; seq2seq: T5 span corruption; auto: seq2seq "
                   "when the tokenizer appends EOS to every text (T5), else causal")
    p.add_argument("--max-length", type=int, default=512, help="tokens per chunk (MiniLLM's scripts: 512)")
    p.add_argument("--dev-num", type=int, default=10000, help="first chunks held out as dev (MiniLLM: 10000)")
    p.add_argument("--train-num", type=int, default=0, help="train chunks, then stop reading (0: all)")
    p.add_argument("--noise-density", type=float, default=0.15, help="span corruption: share of noise tokens")
    p.add_argument("--mean-noise-span-length", type=float, default=3.0, help="span corruption: mean span length")
    p.add_argument("--seed", type=int, default=42, help="span corruption: seed of the span draws")
    p.add_argument("--dtype", default="auto", help="auto (uint16 when the vocabulary fits, else int32), uint16, int32")
    p.add_argument("--shard-size", type=int, default=100000, help="chunks per shard")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.corpus_dir is not None:
        documents, source = iter_corpus_documents(args.corpus_dir), str(args.corpus_dir)
    else:
        documents, source = iter_hf_documents(args.hf_dataset), f"hf:{args.hf_dataset}"
    with output_kept_whole("process_data_pretrain", args.out_dir, [args.out_dir / ".shards.tmp"]):
        build_pretrain(args.out_dir, args.tokenizer, documents, source, args.max_length, args.dev_num,
                       args.train_num, args.model_type, args.noise_density, args.mean_noise_span_length, args.seed,
                       args.dtype, args.shard_size)


if __name__ == "__main__":
    main()

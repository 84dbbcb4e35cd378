#!/usr/bin/env bash
# The plain-text corpus of the LM term for Flan-T5: MiniLLM's recipe (each document followed by EOS, all cut into
# 512-token chunks, the first 10,000 dev, the next 10M train) with T5's span corruption as the items: 15 % of each
# chunk's tokens, in spans of mean length 3, replaced by sentinels <extra_id_k> in the prompt (ending in EOS); the
# target lists each sentinel and its span (ending in EOS). See minillm/data/pretrain.py and docs/data.md.
#   bash t5-scripts/tools/process_data_pretrain.sh [BASE]
# Output: BASE/processed_data/pretrain/flan-t5/ (full/pretrain/, prompt/pretrain/, meta.json); BASE defaults to the
# checkout.
# Environment overrides (defaults in brackets):
#   CORPUS_DIR         folder of .txt (a document per line, as MiniLLM's data.txt) and .jsonl (text) files
#                      [BASE/data/openwebtext if it exists, else HF_DATASET streamed from the hub]
#   HF_DATASET         [openwebtext]
#   TOKENIZER          hub name or local folder with the <extra_id_k> sentinels [google/flan-t5-base]
#   MAX_LENGTH [512]   DEV_NUM [10000]   TRAIN_NUM chunks, 0 = all [10000000]
#   NOISE_DENSITY [0.15]   MEAN_NOISE_SPAN_LENGTH [3]   SEED of the span draws [42]
#   DTYPE auto|uint16|int32 [auto]   SHARD_SIZE chunks per shard [100000]
#   OUT_DIR [BASE/processed_data/pretrain/flan-t5]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"

: "${TOKENIZER:=google/flan-t5-base}" "${MAX_LENGTH:=512}" "${DEV_NUM:=10000}" "${TRAIN_NUM:=10000000}" "${DTYPE:=auto}"
: "${NOISE_DENSITY:=0.15}" "${MEAN_NOISE_SPAN_LENGTH:=3}" "${SEED:=42}" "${SHARD_SIZE:=100000}"
: "${OUT_DIR:=$BASE/processed_data/pretrain/flan-t5}"
if [[ -z "${CORPUS_DIR:-}" && -d "$BASE/data/openwebtext" ]]; then CORPUS_DIR="$BASE/data/openwebtext"; fi
source_args=(--hf-dataset "${HF_DATASET:-openwebtext}")
if [[ -n "${CORPUS_DIR:-}" ]]; then source_args=(--corpus-dir "$CORPUS_DIR"); fi

run_python -m minillm.cli.process_data_pretrain "${source_args[@]}" --out-dir "$OUT_DIR" --tokenizer "$TOKENIZER" \
  --model-type seq2seq --max-length "$MAX_LENGTH" --dev-num "$DEV_NUM" --train-num "$TRAIN_NUM" \
  --noise-density "$NOISE_DENSITY" --mean-noise-span-length "$MEAN_NOISE_SPAN_LENGTH" --seed "$SEED" --dtype "$DTYPE" \
  --shard-size "$SHARD_SIZE"

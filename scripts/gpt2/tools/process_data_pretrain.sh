#!/usr/bin/env bash
# The plain-text corpus of the LM term for GPT-2, as MiniLLM's scripts/gpt2/tools/process_data_pretrain.sh: OpenWebText,
# each document followed by EOS, all cut into 512-token chunks, the first 10,000 dev (MiniLLM's valid), the next
# 10M train. A chunk is stored as prompt = its first token, target = the other 511 (the LM loss covers all but the
# first token, as in MiniLLM).
#   bash scripts/gpt2/tools/process_data_pretrain.sh [BASE]
# Output: BASE/processed_data/pretrain/gpt2/ (full/pretrain/, prompt/pretrain/, meta.json); BASE defaults to the
# checkout.
# Environment overrides (defaults in brackets):
#   CORPUS_DIR         folder of .txt (a document per line, as MiniLLM's data.txt) and .jsonl (text) files
#                      [BASE/data/openwebtext if it exists, else HF_DATASET streamed from the hub]
#   HF_DATASET         [openwebtext]
#   TOKENIZER          hub name or local folder [gpt2;
#                      MiniLLM used gpt2-large's, the same vocabulary]
#   MAX_LENGTH [512]   DEV_NUM [10000]   TRAIN_NUM chunks, 0 = all [10000000]
#   DTYPE auto|uint16|int32 [auto]   SHARD_SIZE chunks per shard [100000]
#   OUT_DIR [BASE/processed_data/pretrain/gpt2]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"

: "${TOKENIZER:=gpt2}" "${MAX_LENGTH:=512}" "${DEV_NUM:=10000}" "${TRAIN_NUM:=10000000}" "${DTYPE:=auto}"
: "${SHARD_SIZE:=100000}" "${OUT_DIR:=$BASE/processed_data/pretrain/gpt2}"
if [[ -z "${CORPUS_DIR:-}" && -d "$BASE/data/openwebtext" ]]; then CORPUS_DIR="$BASE/data/openwebtext"; fi
source_args=(--hf-dataset "${HF_DATASET:-openwebtext}")
if [[ -n "${CORPUS_DIR:-}" ]]; then source_args=(--corpus-dir "$CORPUS_DIR"); fi

run_python -m minillm.cli.process_data_pretrain "${source_args[@]}" --out-dir "$OUT_DIR" --tokenizer "$TOKENIZER" \
  --model-type causal --max-length "$MAX_LENGTH" --dev-num "$DEV_NUM" --train-num "$TRAIN_NUM" --dtype "$DTYPE" \
  --shard-size "$SHARD_SIZE"

#!/usr/bin/env bash
# The plain-text corpus of the LM term for LLaMA, as MiniLLM's scripts/llama/tools/process_data_pretrain.sh: the
# RoBERTa corpus, each document followed by EOS, all cut into 512-token chunks, the first 10,000 dev (MiniLLM's valid),
# the next 20M train. A chunk is stored as prompt = its first token, target = the other 511 (the LM loss covers all but
# the first token, as in MiniLLM).
#   bash scripts/llama/tools/process_data_pretrain.sh [BASE]
# Output: BASE/processed_data/pretrain/llama/ (full/pretrain/, prompt/pretrain/, meta.json); BASE defaults to the
# checkout.
# Environment overrides (defaults in brackets):
#   CORPUS_DIR         folder of .txt (a document per line, as MiniLLM's data.txt) and .jsonl (text) files
#                      [BASE/data/roberta: the RoBERTa corpus (wiki, books, cc_news, openwebtext), assembled
#                      by the user]
#   HF_DATASET         a Hugging Face dataset with a text column, streamed, instead of CORPUS_DIR [unset]
#   TOKENIZER          hub name or local folder [huggyllama/llama-7b;
#                      MiniLLM used llama-7B's, the same vocabulary]
#   MAX_LENGTH [512]   DEV_NUM [10000]   TRAIN_NUM chunks, 0 = all [20000000]
#   DTYPE auto|uint16|int32 [auto]   SHARD_SIZE chunks per shard [100000]
#   OUT_DIR [BASE/processed_data/pretrain/llama]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"

: "${TOKENIZER:=huggyllama/llama-7b}" "${MAX_LENGTH:=512}" "${DEV_NUM:=10000}" "${TRAIN_NUM:=20000000}" "${DTYPE:=auto}"
: "${SHARD_SIZE:=100000}" "${OUT_DIR:=$BASE/processed_data/pretrain/llama}"
source_args=(--corpus-dir "${CORPUS_DIR:-$BASE/data/roberta}")
if [[ -n "${HF_DATASET:-}" ]]; then source_args=(--hf-dataset "$HF_DATASET"); fi

run_python -m minillm.cli.process_data_pretrain "${source_args[@]}" --out-dir "$OUT_DIR" --tokenizer "$TOKENIZER" \
  --model-type causal --max-length "$MAX_LENGTH" --dev-num "$DEV_NUM" --train-num "$TRAIN_NUM" --dtype "$DTYPE" \
  --shard-size "$SHARD_SIZE"

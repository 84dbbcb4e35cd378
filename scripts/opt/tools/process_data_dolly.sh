#!/usr/bin/env bash
# Dolly for OPT, as MiniLLM's scripts/opt/tools/process_data_dolly.sh: MiniLLM's (Alpaca's) template, examples
# whose prompt is over 256 tokens dropped, the first 1000 rows dev (MiniLLM's valid), the next 500 test, the rest train;
# causal prompts (no EOS), responses ending in EOS. One run writes both kinds MiniLLM writes in two (full/ and prompt/).
#   bash scripts/opt/tools/process_data_dolly.sh [BASE]
# Output: BASE/processed_data/dolly/opt/ (text/, full/dolly/, prompt/dolly/, meta.json); BASE defaults to the
# checkout.
# Environment overrides (defaults in brackets):
#   RAW_FILE           Dolly JSON lines [BASE/data/dolly/raw.jsonl (MiniLLM's), else databricks-dolly-15k.jsonl there,
#                      else databricks/databricks-dolly-15k downloaded there]
#   TOKENIZER          hub name or local folder [facebook/opt-1.3b;
#                      MiniLLM used opt-1.3B's, the same vocabulary]
#   MAX_PROMPT_LENGTH  [256]   DEV_NUM [1000]   TEST_NUM [500]   TEMPLATE [alpaca]
#   STAGE all|text|shards [all]   DTYPE auto|uint16|int32 [auto]   SHARD_SIZE items per shard, 0 = one [0]
#   OUT_DIR            [BASE/processed_data/dolly/opt]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"

: "${TOKENIZER:=facebook/opt-1.3b}" "${MAX_PROMPT_LENGTH:=256}"
: "${DEV_NUM:=1000}" "${TEST_NUM:=500}" "${TEMPLATE:=alpaca}"
: "${STAGE:=all}" "${DTYPE:=auto}" "${SHARD_SIZE:=0}" "${OUT_DIR:=$BASE/processed_data/dolly/opt}"
raw_args=(--download-dir "$BASE/data/dolly")
if [[ -n "${RAW_FILE:-}" ]]; then raw_args=(--raw-file "$RAW_FILE"); fi

run_python -m minillm.cli.process_data_dolly "${raw_args[@]}" --out-dir "$OUT_DIR" --tokenizer "$TOKENIZER" \
  --model-type causal --template "$TEMPLATE" --max-prompt-length "$MAX_PROMPT_LENGTH" --dev-num "$DEV_NUM" \
  --test-num "$TEST_NUM" --stage "$STAGE" --dtype "$DTYPE" --shard-size "$SHARD_SIZE"

#!/usr/bin/env bash
# Process ANLI into text files and memory-mapped token shards.
#   bash t5-scripts/tools/process_data_anli.sh /PATH/TO/REPO
# Environment overrides (defaults in brackets):
#   RAW_DIR            raw ANLI, Hugging Face or original layout [BASE/data/anli; downloaded there if empty]
#   TOKENIZER          hub name or local folder [google/flan-t5-base]
#   TEMPLATE           prompt template: flan | nli_labels [flan]
#   TARGET             label | label_reason [label]
#   MAX_PROMPT_LENGTH  prompt tokens; longer premises are cut [512]
#   STAGE              all | text | shards [all]
#   DTYPE              auto | uint16 | int32 [auto]
#   SHARD_SIZE         items per shard, 0 = one shard [0]
#   OUT_DIR            [BASE/processed_data/anli/${TEMPLATE}-${TARGET}]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="${1:?usage: $0 /PATH/TO/REPO}"

TEMPLATE="${TEMPLATE:-flan}"
TARGET="${TARGET:-label}"
OUT_DIR="${OUT_DIR:-$BASE/processed_data/anli/${TEMPLATE}-${TARGET}}"
if [[ -n "${RAW_DIR:-}" ]]; then RAW_ARGS=(--raw-dir "$RAW_DIR"); else RAW_ARGS=(--download-dir "$BASE/data/anli"); fi

run_python -m minillm.cli.process_data_anli "${RAW_ARGS[@]}" \
  --out-dir "$OUT_DIR" \
  --tokenizer "${TOKENIZER:-google/flan-t5-base}" \
  --template "$TEMPLATE" --target "$TARGET" \
  --max-prompt-length "${MAX_PROMPT_LENGTH:-512}" \
  --stage "${STAGE:-all}" --dtype "${DTYPE:-auto}" --shard-size "${SHARD_SIZE:-0}"

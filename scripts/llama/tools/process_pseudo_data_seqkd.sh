#!/usr/bin/env bash
# SeqKD data for LLaMA, as MiniLLM's scripts/llama/tools/process_pseudo_data_seqkd.sh: the 13B
# teacher's sampled answers (scripts/llama/tools/generate_data_seqkd.sh) become the training targets, token
# for token; the prompts, dev and test are the gold Dolly data's (tools/process_pseudo_data_seqkd.py,
# docs/data.md).
#   bash scripts/llama/tools/process_pseudo_data_seqkd.sh [BASE]
# Output: BASE/processed_data/dolly/seqkd-llama-13B/, the seqkd recipes' DATA_DIR; BASE defaults to the checkout.
# Environment overrides (defaults in brackets):
#   GEN_DIR   output of generate_data_seqkd.sh [BASE/results/llama/seqkd_gen/13B]
#   DATA_DIR  the processed Dolly data it generated from [BASE/processed_data/dolly/llama]
#   OUT_DIR   [BASE/processed_data/dolly/seqkd-llama-13B]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"

: "${GEN_DIR:=$BASE/results/llama/seqkd_gen/13B}" "${DATA_DIR:=$BASE/processed_data/dolly/llama}"
: "${OUT_DIR:=$BASE/processed_data/dolly/seqkd-llama-13B}"
run_python -m minillm.cli.process_pseudo_data_seqkd --generated-dir "$GEN_DIR" --gold-dir "$DATA_DIR" \
  --out-dir "$OUT_DIR"

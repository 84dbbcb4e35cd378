#!/usr/bin/env bash
# SeqKD data for GPT-2, as MiniLLM's scripts/gpt2/tools/process_pseudo_data_seqkd.sh: the xlarge
# teacher's sampled answers (scripts/gpt2/tools/generate_data_seqkd.sh) become the training targets, token
# for token; the prompts, dev and test are the gold Dolly data's (tools/process_pseudo_data_seqkd.py,
# docs/data.md).
#   bash scripts/gpt2/tools/process_pseudo_data_seqkd.sh [BASE]
# Output: BASE/processed_data/dolly/seqkd-gpt2-xlarge/, the seqkd recipes' DATA_DIR; BASE defaults to the checkout.
# Environment overrides (defaults in brackets):
#   GEN_DIR   output of generate_data_seqkd.sh [BASE/results/gpt2/seqkd_gen/xlarge]
#   DATA_DIR  the processed Dolly data it generated from [BASE/processed_data/dolly/gpt2]
#   OUT_DIR   [BASE/processed_data/dolly/seqkd-gpt2-xlarge]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"

: "${GEN_DIR:=$BASE/results/gpt2/seqkd_gen/xlarge}" "${DATA_DIR:=$BASE/processed_data/dolly/gpt2}"
: "${OUT_DIR:=$BASE/processed_data/dolly/seqkd-gpt2-xlarge}"
run_python -m minillm.cli.process_pseudo_data_seqkd --generated-dir "$GEN_DIR" --gold-dir "$DATA_DIR" \
  --out-dir "$OUT_DIR"

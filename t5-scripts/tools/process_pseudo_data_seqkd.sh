#!/usr/bin/env bash
# SeqKD shards: training targets = the teacher's outputs (from generate_data_seqkd.sh), dev and test = gold.
#   bash t5-scripts/tools/process_pseudo_data_seqkd.sh /PATH/TO/REPO
# Environment overrides (defaults in brackets):
#   GEN_DIR   output of generate_data_seqkd.sh [BASE/results/anli/seqkd_gen/xl]
#   DATA_DIR  the processed gold data it generated from; its tokenizer, template and prompt length are reused
#             [BASE/processed_data/anli/flan-label]
#   OUT_DIR   [BASE/processed_data/anli/seqkd-xl]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="${1:?usage: $0 /PATH/TO/REPO}"

run_python -m minillm.cli.process_pseudo_data_seqkd \
  --generated-dir "${GEN_DIR:-$BASE/results/anli/seqkd_gen/xl}" \
  --gold-dir "${DATA_DIR:-$BASE/processed_data/anli/flan-label}" \
  --out-dir "${OUT_DIR:-$BASE/processed_data/anli/seqkd-xl}"

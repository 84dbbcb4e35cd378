#!/usr/bin/env bash
# MiniLLM of Flan-T5-SMALL from the Flan-T5-XL teacher without the LM term (train_small_xl.sh with LM_DATA_DIR empty).
#   bash t5-scripts/minillm/train_small_xl_no_lm.sh BASE [NUM_GPUS]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
LM_DATA_DIR="" SAVE_DIR="${SAVE_DIR:-$BASE/results/anli/minillm/small_xl_no_lm}" \
  exec bash "$REPO/t5-scripts/minillm/train_small_xl.sh" "$BASE" "${2:-${NUM_GPUS:-$(default_num_gpus)}}"

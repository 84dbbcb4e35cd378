#!/usr/bin/env bash
# SFT of Flan-T5-LARGE on ANLI (student). best/ is selected by the rule every compared student uses (SELECT_BY
# auto: dev accuracy for label targets); best_loss/, by dev loss, initialises MiniLLM as MiniLLM prescribes.
# Recipe for 8x V100-32GB-class GPUs per node.
#   bash t5-scripts/sft/sft_large.sh BASE [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

: "${CKPT:=google/flan-t5-large}" "${BATCH_SIZE:=4}" "${GRAD_ACC:=4}" "${LR:=1e-4}" "${EPOCHS:=3}" "${ZERO_STAGE:=2}"
: "${SELECT_BY:=auto}" "${ALSO_SELECT_BY:=loss}" "${SAVE_DIR:=$BASE/results/anli/sft/large}"
launch_training --type sft --select-by "$SELECT_BY" --also-select-by "$ALSO_SELECT_BY" --warmup-steps "${WARMUP_STEPS:-100}"

#!/usr/bin/env bash
# SFT of Flan-T5-XXL on ANLI (teacher). Recipe for 8x V100-32GB-class GPUs per node.
#   bash t5-scripts/sft/sft_xxl.sh BASE [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

: "${CKPT:=google/flan-t5-xxl}" "${BATCH_SIZE:=2}" "${GRAD_ACC:=8}" "${LR:=3e-5}" "${EPOCHS:=2}" "${ZERO_STAGE:=3_offload}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/anli/sft/xxl}"
launch_training --type sft --select-by "$SELECT_BY" --warmup-steps "${WARMUP_STEPS:-100}"

#!/usr/bin/env bash
# SFT of Flan-T5-XL on ANLI (teacher). Recipe for 8x V100-32GB-class GPUs per node.
#   bash t5-scripts/sft/sft_xl.sh BASE [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

: "${CKPT:=google/flan-t5-xl}" "${BATCH_SIZE:=2}" "${GRAD_ACC:=8}" "${LR:=5e-5}" "${EPOCHS:=3}" "${ZERO_STAGE:=3}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/anli/sft/xl}"
launch_training --type sft --select-by "$SELECT_BY" --warmup-steps "${WARMUP_STEPS:-100}"

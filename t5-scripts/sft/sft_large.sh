#!/usr/bin/env bash
# SFT of Flan-T5-LARGE on ANLI (student; --select-by loss: it initialises MiniLLM). Recipe for 8x V100-32GB-class GPUs per node.
#   bash t5-scripts/sft/sft_large.sh BASE [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_training in t5-scripts/common.sh.
set -euo pipefail
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-8}}"
source "$BASE/t5-scripts/common.sh"

: "${CKPT:=google/flan-t5-large}" "${BATCH_SIZE:=8}" "${GRAD_ACC:=2}" "${LR:=1e-4}" "${EPOCHS:=3}" "${ZERO_STAGE:=2}"
: "${SELECT_BY:=loss}" "${SAVE_DIR:=$BASE/results/anli/sft/large}"
launch_training --type sft --select-by "$SELECT_BY" --warmup-steps "${WARMUP_STEPS:-100}"

#!/usr/bin/env bash
# Word-level KD of GPT-2 medium from the SFT'd GPT-2 xlarge teacher on Dolly: (1 - KD_RATIO) CE + KD_RATIO D(teacher ||
# student) on the gold answers, D the forward KL (KD_LOSS fkl) and KD_RATIO 0.5, as in MiniLLM's
# scripts/gpt2/kd/kd_medium.sh: 16 GPUs x 2 per process, lr 1e-4 cosine, 20 epochs, ZeRO-1.
#   bash scripts/gpt2/kd/kd_medium.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=gpt2

: "${CKPT:=gpt2-medium}" "${TEACHER_CKPT:=$BASE/results/gpt2/sft/xlarge/best}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=1e-4}" "${EPOCHS:=20}" "${ZERO_STAGE:=1}"
: "${KD_RATIO:=0.5}" "${KD_LOSS:=fkl}" "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/gpt2/kd/medium}"
launch_dolly_training launch_training --type kd --teacher-model-path "$TEACHER_CKPT" --kd-ratio "$KD_RATIO" \
  --kd-loss "$KD_LOSS" --select-by "$SELECT_BY"

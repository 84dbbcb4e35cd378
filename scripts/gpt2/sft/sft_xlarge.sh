#!/usr/bin/env bash
# SFT of GPT-2 xlarge on Dolly (teacher); best/ is picked by dev Rouge-L (SELECT_BY auto). MiniLLM's recipe (its
# scripts/gpt2/sft/sft_xlarge.sh): 16 GPUs x 2 per process, lr 5e-5 cosine, 10 epochs, ZeRO-1.
#   bash scripts/gpt2/sft/sft_xlarge.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=gpt2

: "${CKPT:=gpt2-xl}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=5e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=1}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/gpt2/sft/xlarge}"
launch_dolly_training launch_training --type sft --select-by "$SELECT_BY"

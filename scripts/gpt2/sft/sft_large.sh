#!/usr/bin/env bash
# SFT of GPT-2 large on Dolly (student); best/ is picked by dev Rouge-L (SELECT_BY auto). best_loss/, by dev loss,
# initialises MiniLLM (scripts/gpt2/minillm/train_large_xl.sh), as MiniLLM prescribes. MiniLLM's recipe (its
# scripts/gpt2/sft/sft_large.sh): 16 GPUs x 2 per process, lr 1e-4 cosine, 10 epochs, ZeRO-1.
#   bash scripts/gpt2/sft/sft_large.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=gpt2

: "${CKPT:=gpt2-large}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=1e-4}" "${EPOCHS:=10}" "${ZERO_STAGE:=1}"
: "${SELECT_BY:=auto}" "${ALSO_SELECT_BY:=loss}" "${SAVE_DIR:=$BASE/results/gpt2/sft/large}"
launch_dolly_training launch_training --type sft --select-by "$SELECT_BY" --also-select-by "$ALSO_SELECT_BY"

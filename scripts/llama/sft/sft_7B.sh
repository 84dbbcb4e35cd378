#!/usr/bin/env bash
# SFT of LLaMA 7B on Dolly (student); best/ is picked by dev Rouge-L (SELECT_BY auto). best_loss/, by dev loss,
# initialises MiniLLM (scripts/llama/minillm/train_7B_13B.sh), as MiniLLM prescribes. MiniLLM's recipe (its
# scripts/llama/sft/sft_7B.sh): 16 GPUs x 1 per process x 2 accumulated, lr 1e-5 cosine, 10 epochs, ZeRO-2 in fp16.
# ZeRO-3 because in fp32 (V100 has no bf16) the model does not fit one 32 GB GPU whole.
#   bash scripts/llama/sft/sft_7B.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=llama

: "${CKPT:=$BASE/checkpoints/llama-7B}"
: "${BATCH_SIZE:=1}" "${GRAD_ACC:=2}" "${LR:=1e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=3}"
: "${SELECT_BY:=auto}" "${ALSO_SELECT_BY:=loss}" "${SAVE_DIR:=$BASE/results/llama/sft/7B}"
launch_dolly_training launch_training --type sft --select-by "$SELECT_BY" --also-select-by "$ALSO_SELECT_BY"

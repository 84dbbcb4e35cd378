#!/usr/bin/env bash
# SFT of OPT 2.7B on Dolly (student); best/ is picked by dev Rouge-L (SELECT_BY auto). best_loss/, by dev loss,
# initialises MiniLLM (scripts/opt/minillm/train_2.7B_13B.sh), as MiniLLM prescribes. MiniLLM's recipe (its
# scripts/opt/sft/sft_2.7B.sh): 16 GPUs x 2 per process, lr 5e-5 cosine, 10 epochs, ZeRO-1.
#   bash scripts/opt/sft/sft_2.7B.sh [BASE] [NUM_GPUS]
# Memory: ZeRO-3 here, not ZeRO-1, so that it fits 8 x V100-32GB in fp32 (tools/plan_memory.py, docs/memory.md).
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=opt

: "${CKPT:=facebook/opt-2.7b}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=5e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=3}"
: "${SELECT_BY:=auto}" "${ALSO_SELECT_BY:=loss}" "${SAVE_DIR:=$BASE/results/opt/sft/2.7B}"
launch_dolly_training launch_training --type sft --select-by "$SELECT_BY" --also-select-by "$ALSO_SELECT_BY"

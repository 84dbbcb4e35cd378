#!/usr/bin/env bash
# SFT of OPT 6.7B on Dolly (student); best/ is picked by dev Rouge-L (SELECT_BY auto). best_loss/, by dev loss,
# initialises MiniLLM (scripts/opt/minillm/train_6.7B_13B.sh), as MiniLLM prescribes. MiniLLM's recipe (its
# scripts/opt/sft/sft_6.7B.sh): 16 GPUs x 8 per model-parallel group of 4, lr 1e-5 cosine, 10 epochs. MiniLLM splits the
# model 4 ways (--model-parallel-size 4); here ZeRO-3 shards it over every process instead, with MiniLLM's per-process
# batch divided by 4 (the same global batch; t5-scripts/common.sh).
#   bash scripts/opt/sft/sft_6.7B.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=opt

: "${CKPT:=facebook/opt-6.7b}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=1e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=3}"
: "${MODEL_PARALLEL_SIZE=4}"  # empty: no --model-parallel
: "${SELECT_BY:=auto}" "${ALSO_SELECT_BY:=loss}" "${SAVE_DIR:=$BASE/results/opt/sft/6.7B}"
launch_dolly_training launch_training --type sft --select-by "$SELECT_BY" --also-select-by "$ALSO_SELECT_BY"

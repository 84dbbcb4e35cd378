#!/usr/bin/env bash
# SFT of LLaMA 13B on Dolly (teacher); best/ is picked by dev Rouge-L (SELECT_BY auto). MiniLLM's recipe (its
# scripts/llama/sft/sft_13B.sh): 16 GPUs x 2 per model-parallel group of 4 x 4 accumulated, lr 1e-5 cosine, 10 epochs.
# MiniLLM splits the model 4 ways (--model-parallel-size 4); here ZeRO-3 shards it over every process instead, with
# MiniLLM's per-process batch divided by 4 (the same global batch; t5-scripts/common.sh). ZeRO-3 with CPU offload: in
# fp32 (V100 has no bf16) the run does not fit 32 GB GPUs without it.
#   bash scripts/llama/sft/sft_13B.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=llama

: "${CKPT:=$BASE/checkpoints/llama-13B}"
: "${BATCH_SIZE:=1}" "${GRAD_ACC:=2}" "${LR:=1e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=3_offload}"
: "${MODEL_PARALLEL_SIZE=4}"  # empty: no --model-parallel
: "${EVAL_BATCH_SIZE:=2}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/llama/sft/13B}"
launch_dolly_training launch_training --type sft --select-by "$SELECT_BY"

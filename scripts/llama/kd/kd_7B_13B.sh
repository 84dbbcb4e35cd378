#!/usr/bin/env bash
# Word-level KD of LLaMA 7B from the SFT'd LLaMA 13B teacher on Dolly: (1 - KD_RATIO) CE + KD_RATIO D(teacher ||
# student) on the gold answers, D the forward KL (KD_LOSS fkl) and KD_RATIO 0.5, as in MiniLLM's
# scripts/llama/kd/kd_7B_13B.sh: 16 GPUs x 8 per model-parallel group of 4, lr 1e-5 cosine, 10 epochs. MiniLLM splits
# the model 4 ways (--model-parallel-size 4); here ZeRO-3 shards it over every process instead, with MiniLLM's
# per-process batch divided by 4 (the same global batch; t5-scripts/common.sh).
#   bash scripts/llama/kd/kd_7B_13B.sh [BASE] [NUM_GPUS]
# Memory: ZeRO-3 with CPU offload of the optimizer, so that it fits 8 x V100-32GB in fp32 (tools/plan_memory.py, docs/memory.md).
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=llama

: "${CKPT:=$BASE/checkpoints/llama-7B}" "${TEACHER_CKPT:=$BASE/results/llama/sft/13B/best}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=1e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=3_offload}"
: "${MODEL_PARALLEL_SIZE=4}"  # empty: no --model-parallel
: "${KD_RATIO:=0.5}" "${KD_LOSS:=fkl}" "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/llama/kd/7B}"
launch_dolly_training launch_training --type kd --teacher-model-path "$TEACHER_CKPT" --kd-ratio "$KD_RATIO" \
  --kd-loss "$KD_LOSS" --select-by "$SELECT_BY"

#!/usr/bin/env bash
# SeqKD of LLaMA 7B from the SFT'd LLaMA 13B teacher on Dolly: SFT on the teacher's sampled answers
# (scripts/llama/tools/generate_data_seqkd.sh, then sharded into DATA_DIR; dev and test stay gold). KD_RATIO 0 is SeqKD
# as the paper defines it; MiniLLM's own seqkd scripts add word-level KD on those answers (KD_RATIO=0.5). Otherwise
# MiniLLM's scripts/llama/seqkd/seqkd_7B_13B.sh: 16 GPUs x 8 per model-parallel group of 4, lr 1e-5 cosine, 10 epochs.
# MiniLLM splits the model 4 ways (--model-parallel-size 4); here ZeRO-3 shards it over every process instead, with
# MiniLLM's per-process batch divided by 4 (the same global batch; t5-scripts/common.sh).
#   bash scripts/llama/seqkd/seqkd_7B_13B.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=llama

: "${CKPT:=$BASE/checkpoints/llama-7B}" "${TEACHER_CKPT:=$BASE/results/llama/sft/13B/best}"
: "${DATA_DIR:=$BASE/processed_data/dolly/seqkd-llama-13B}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=1e-5}" "${EPOCHS:=10}" "${ZERO_STAGE:=3}"
: "${MODEL_PARALLEL_SIZE=4}"  # empty: no --model-parallel
: "${KD_RATIO:=0}" "${KD_LOSS:=fkl}" "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/llama/seqkd/7B}"
launch_dolly_training launch_training --type seqkd --teacher-model-path "$TEACHER_CKPT" \
  --kd-ratio "$KD_RATIO" --kd-loss "$KD_LOSS" --select-by "$SELECT_BY"

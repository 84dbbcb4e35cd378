#!/usr/bin/env bash
# SeqKD of GPT-2 large from the SFT'd GPT-2 xlarge teacher on Dolly: SFT on the teacher's sampled answers
# (scripts/gpt2/tools/generate_data_seqkd.sh, then sharded into DATA_DIR; dev and test stay gold). KD_RATIO 0 is SeqKD
# as the paper defines it; MiniLLM's own seqkd scripts add word-level KD on those answers (KD_RATIO=0.5). Otherwise
# MiniLLM's scripts/gpt2/seqkd/seqkd_large.sh: 16 GPUs x 2 per process, lr 1e-4 cosine, 10 epochs, ZeRO-1.
#   bash scripts/gpt2/seqkd/seqkd_large.sh [BASE] [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_dolly_training and
# launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=gpt2

: "${CKPT:=gpt2-large}" "${TEACHER_CKPT:=$BASE/results/gpt2/sft/xlarge/best}"
: "${DATA_DIR:=$BASE/processed_data/dolly/seqkd-gpt2-xlarge}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=1}" "${LR:=1e-4}" "${EPOCHS:=10}" "${ZERO_STAGE:=1}"
: "${KD_RATIO:=0}" "${KD_LOSS:=fkl}" "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/gpt2/seqkd/large}"
launch_dolly_training launch_training --type seqkd --teacher-model-path "$TEACHER_CKPT" \
  --kd-ratio "$KD_RATIO" --kd-loss "$KD_LOSS" --select-by "$SELECT_BY"

#!/usr/bin/env bash
# MiniLLM of GPT-2 medium from the SFT'd GPT-2 xlarge teacher on Dolly: reverse-KL policy gradient on the student's own
# (teacher-mixed) samples, single-step term, length normalisation, PPO clipping, and the LM term on OpenWebText
# (LM_DATA_DIR; empty: none). The student starts from its SFT checkpoint with the lowest dev loss (best_loss/ of
# scripts/gpt2/sft/sft_medium.sh); best/ is picked by dev Rouge-L. MiniLLM's scripts/gpt2/minillm/train_medium_xl.sh: 16
# GPUs x 2 per process x 2 accumulated, chunks of 8, ZeRO-1; lr 5e-6 constant after 100 warmup steps, 5000 steps, 256
# rollouts per collection, 4 PPO epochs, teacher mix 0.2.
#   bash scripts/gpt2/minillm/train_medium_xl.sh [BASE] [NUM_GPUS]
# Environment, besides launch_dolly_training's and launch_minillm's (t5-scripts/common.sh): TEACHER_CKPT,
# PROMPT_DATA_DIR, LM_DATA_DIR, NUM_ROLLOUTS, CHUNK_SIZE, PPO_EPOCHS, ALPHA (teacher-mixed), GAMMA, LM_COEF,
# MAX_NEW_TOKENS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=gpt2

: "${CKPT:=$BASE/results/gpt2/sft/medium/best_loss}" "${TEACHER_CKPT:=$BASE/results/gpt2/sft/xlarge/best}"
: "${PROMPT_DATA_DIR:=$BASE/processed_data/dolly/gpt2}" "${LM_DATA_DIR=$BASE/processed_data/pretrain/gpt2}"
: "${BATCH_SIZE:=2}" "${GRAD_ACC:=2}" "${LR:=5e-6}" "${EPOCHS:=10}" "${ZERO_STAGE:=1}"
: "${CHUNK_SIZE:=8}" "${MAX_STEPS:=5000}" "${EVAL_INTERVAL:=100}" "${SAVE_INTERVAL:=500}"
: "${NUM_ROLLOUTS:=256}" "${PPO_EPOCHS:=4}" "${ALPHA:=0.2}" "${GAMMA:=0.95}" "${LM_COEF:=1.0}" "${MAX_NEW_TOKENS:=256}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/gpt2/minillm/medium}"
launch_dolly_training launch_minillm

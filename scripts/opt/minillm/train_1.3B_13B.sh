#!/usr/bin/env bash
# MiniLLM of OPT 1.3B from the SFT'd OPT 13B teacher on Dolly: reverse-KL policy gradient on the student's own
# (teacher-mixed) samples, single-step term, length normalisation, PPO clipping, and the LM term on the RoBERTa corpus
# (LM_DATA_DIR; empty: none). The student starts from its SFT checkpoint with the lowest dev loss (best_loss/ of
# scripts/opt/sft/sft_1.3B.sh); best/ is picked by dev Rouge-L. MiniLLM's scripts/opt/minillm/train_1.3B_13B.sh: 16 GPUs
# x 16 per model-parallel group of 4 x 1 accumulated, chunks of 16; lr 5e-6 constant after 100 warmup steps, 5000 steps,
# 256 rollouts per collection, 4 PPO epochs, teacher mix 0.2. MiniLLM splits the model 4 ways (--model-parallel-size 4);
# here ZeRO-3 shards it over every process instead, with MiniLLM's per-process batch divided by 4 (the same global
# batch; t5-scripts/common.sh).
#   bash scripts/opt/minillm/train_1.3B_13B.sh [BASE] [NUM_GPUS]
# Environment, besides launch_dolly_training's and launch_minillm's (t5-scripts/common.sh): TEACHER_CKPT,
# PROMPT_DATA_DIR, LM_DATA_DIR, NUM_ROLLOUTS, CHUNK_SIZE, PPO_EPOCHS, ALPHA (teacher-mixed), GAMMA, LM_COEF,
# MAX_NEW_TOKENS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=opt

: "${CKPT:=$BASE/results/opt/sft/1.3B/best_loss}" "${TEACHER_CKPT:=$BASE/results/opt/sft/13B/best}"
: "${PROMPT_DATA_DIR:=$BASE/processed_data/dolly/opt}" "${LM_DATA_DIR=$BASE/processed_data/pretrain/opt}"
: "${BATCH_SIZE:=4}" "${GRAD_ACC:=1}" "${LR:=5e-6}" "${EPOCHS:=10}" "${ZERO_STAGE:=3}"
: "${MODEL_PARALLEL_SIZE=4}"  # empty: no --model-parallel
: "${CHUNK_SIZE:=4}" "${MAX_STEPS:=5000}" "${EVAL_INTERVAL:=100}" "${SAVE_INTERVAL:=500}"
: "${NUM_ROLLOUTS:=256}" "${PPO_EPOCHS:=4}" "${ALPHA:=0.2}" "${GAMMA:=0.95}" "${LM_COEF:=1.0}" "${MAX_NEW_TOKENS:=256}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/opt/minillm/1.3B}"
launch_dolly_training launch_minillm

#!/usr/bin/env bash
# MiniLLM of Flan-T5-SMALL from the SFT'd Flan-T5-XL teacher on ANLI: reverse-KL policy gradient on the student's own
# (teacher-mixed) samples, single-step term, length normalisation, PPO clipping, and an LM term on gold pairs.
# The student starts from its SFT checkpoint selected by dev loss (best_loss/ of t5-scripts/sft/sft_small.sh).
# Recipe for 8x V100-32GB-class GPUs per node; MiniLLM's own defaults (docs/commands.md) where they apply.
#   bash t5-scripts/minillm/train_small_xl.sh BASE [NUM_GPUS]
# Environment, besides launch_training's (t5-scripts/common.sh; the launch is launch_minillm there): TEACHER_CKPT, PROMPT_DATA_DIR (processed folder whose
# prompt/ shards are sampled from; required, as in MiniLLM), LM_DATA_DIR (gold pairs for the LM term; default
# DATA_DIR, the data evaluated on; set and empty: no LM term), NUM_ROLLOUTS, CHUNK_SIZE, PPO_EPOCHS, ALPHA
# (teacher-mixed), GAMMA, LM_COEF, MAX_NEW_TOKENS.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

: "${CKPT:=$BASE/results/anli/sft/small/best_loss}" "${TEACHER_CKPT:=$BASE/results/anli/sft/xl/best}"
: "${PROMPT_DATA_DIR:?set PROMPT_DATA_DIR to a processed folder (its prompt/ shards are sampled from)}"
: "${DATA_DIR:=$BASE/processed_data/anli/flan-label}" "${LM_DATA_DIR=$DATA_DIR}"
: "${BATCH_SIZE:=16}" "${GRAD_ACC:=1}" "${CHUNK_SIZE:=16}"
: "${LR:=5e-6}" "${EPOCHS:=1}" "${MAX_STEPS:=5000}" "${EVAL_INTERVAL:=100}" "${SAVE_INTERVAL:=500}" "${ZERO_STAGE:=1}"
: "${NUM_ROLLOUTS:=256}" "${PPO_EPOCHS:=4}" "${ALPHA:=0.2}" "${GAMMA:=0.95}" "${LM_COEF:=1.0}" "${MAX_NEW_TOKENS:=64}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/anli/minillm/small_xl}"
launch_minillm

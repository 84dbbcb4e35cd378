#!/usr/bin/env bash
# SeqKD of Flan-T5-LARGE from the SFT'd Flan-T5-XL teacher on ANLI: SFT on the teacher's generated targets (made by
# t5-scripts/tools/generate_data_seqkd.sh, sharded by process_pseudo_data_seqkd.sh; dev and test stay gold).
# KD_RATIO > 0 adds word-level KD (KD_LOSS) on those targets. Recipe for 8x V100-32GB-class GPUs per node.
#   bash t5-scripts/seqkd/seqkd_large.sh BASE [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_training in t5-scripts/common.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

: "${CKPT:=google/flan-t5-large}" "${DATA_DIR:=$BASE/processed_data/anli/seqkd-xl}" "${BATCH_SIZE:=4}" "${GRAD_ACC:=4}"
: "${LR:=1e-4}" "${EPOCHS:=3}" "${ZERO_STAGE:=2}" "${KD_RATIO:=0}" "${KD_LOSS:=fkl}" "${TEACHER_CKPT:=$BASE/results/anli/sft/xl/best}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/anli/seqkd/large}"
launch_training --type seqkd --kd-ratio "$KD_RATIO" --kd-loss "$KD_LOSS" --teacher-model-path "$TEACHER_CKPT" \
  --select-by "$SELECT_BY" --warmup-steps "${WARMUP_STEPS:-100}"

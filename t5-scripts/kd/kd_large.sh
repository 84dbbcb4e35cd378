#!/usr/bin/env bash
# Word-level KD of Flan-T5-LARGE from the SFT'd Flan-T5-XL teacher on ANLI: (1 - KD_RATIO) CE + KD_RATIO D(teacher || student)
# on the gold target. Recipe for 8x V100-32GB-class GPUs per node.
# Memory: ZeRO-3 (which also shards the teacher), micro-batch 4 x 4 accumulation, so that it fits 8 x V100-32GB in fp32 (tools/plan_memory.py, docs/memory.md).
#   bash t5-scripts/kd/kd_large.sh BASE [NUM_GPUS]
# Every recipe variable below can be overridden from the environment; see launch_training in t5-scripts/common.sh.
# KD_LOSS: fkl rkl jsd sfkl srkl tvd akl (minillm/divergences.py); JSD_BETA and SKEW_ALPHA weight jsd / sfkl, srkl.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 BASE [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

: "${CKPT:=google/flan-t5-large}" "${TEACHER_CKPT:=$BASE/results/anli/sft/xl/best}" "${BATCH_SIZE:=4}" "${GRAD_ACC:=4}"
: "${LR:=1e-4}" "${EPOCHS:=3}" "${ZERO_STAGE:=3}" "${KD_RATIO:=0.5}" "${KD_LOSS:=fkl}" "${JSD_BETA:=0.5}" "${SKEW_ALPHA:=0.1}"
: "${SELECT_BY:=auto}" "${SAVE_DIR:=$BASE/results/anli/kd/large}"
launch_training --type kd --teacher-model-path "$TEACHER_CKPT" --kd-ratio "$KD_RATIO" --kd-loss "$KD_LOSS" \
  --jsd-beta "$JSD_BETA" --skew-alpha "$SKEW_ALPHA" --select-by "$SELECT_BY" --warmup-steps "${WARMUP_STEPS:-100}"

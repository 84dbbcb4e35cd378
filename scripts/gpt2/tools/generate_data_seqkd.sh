#!/usr/bin/env bash
# SeqKD answers: the SFT'd GPT-2 xlarge teacher samples one answer per Dolly training prompt, data-parallel over all
# processes, as MiniLLM's scripts/gpt2/tools/generate_data_seqkd.sh (temperature 1, no top-k or top-p cut, up to 256 new
# tokens). The seqkd recipes read them, sharded, from BASE/processed_data/dolly/seqkd-gpt2-xlarge.
#   bash scripts/gpt2/tools/generate_data_seqkd.sh [BASE] [NUM_GPUS]
# Environment: TEACHER_CKPT [BASE/results/gpt2/sft/xlarge/best], GEN_DIR [BASE/results/gpt2/seqkd_gen/xlarge], and
# launch_dolly_seqkd_generation's (t5-scripts/common.sh: DATA_DIR, BATCH_SIZE, DTYPE, SEED, EXTRA_ARGS).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=gpt2

: "${TEACHER_CKPT:=$BASE/results/gpt2/sft/xlarge/best}" "${GEN_DIR:=$BASE/results/gpt2/seqkd_gen/xlarge}"
: "${BATCH_SIZE:=16}"
launch_dolly_seqkd_generation

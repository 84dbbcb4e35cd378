#!/usr/bin/env bash
# SeqKD answers: the SFT'd LLaMA 13B teacher samples one answer per Dolly training prompt, data-parallel over all
# processes, as MiniLLM's scripts/llama/tools/generate_data_seqkd.sh (temperature 1, no top-k or top-p cut, up to 256
# new tokens). The seqkd recipes read them, sharded, from BASE/processed_data/dolly/seqkd-llama-13B. Each process holds
# the whole 13B teacher (MiniLLM splits it 4 ways): bf16 on a 40 GB+ GPU.
#   bash scripts/llama/tools/generate_data_seqkd.sh [BASE] [NUM_GPUS]
# Environment: TEACHER_CKPT [BASE/results/llama/sft/13B/best], GEN_DIR [BASE/results/llama/seqkd_gen/13B], and
# launch_dolly_seqkd_generation's (t5-scripts/common.sh: DATA_DIR, BATCH_SIZE, DTYPE, SEED, EXTRA_ARGS).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
FAMILY=llama

: "${TEACHER_CKPT:=$BASE/results/llama/sft/13B/best}" "${GEN_DIR:=$BASE/results/llama/seqkd_gen/13B}"
: "${BATCH_SIZE:=16}"
launch_dolly_seqkd_generation

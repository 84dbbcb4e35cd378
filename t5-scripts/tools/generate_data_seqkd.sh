#!/usr/bin/env bash
# SeqKD targets: the teacher generates an output for every training prompt, batched and data-parallel over all
# processes (each holds the whole teacher: Flan-T5-XL fits a 32 GB GPU in fp32, XXL needs bf16 on a 40 GB+ GPU).
# ZERO_STAGE=3 (or 3_offload; or DS_CONFIG, a file of configs/deepspeed/) shards the teacher over the processes
# instead (ZeRO-3 inference, --deepspeed-config configs/deepspeed/zero${ZERO_STAGE}_${PRECISION}.json; DTYPE auto is
# then PRECISION [bf16 if the GPU has it, else fp32]): XXL in fp32 over 8 32 GB GPUs; greedy outputs are unchanged.
#   bash t5-scripts/tools/generate_data_seqkd.sh /PATH/TO/REPO [NUM_GPUS]
# Environment overrides (defaults in brackets); multi-node and launcher settings as in launch_module (common.sh):
#   TEACHER_CKPT    [BASE/results/anli/sft/xl/best]      DATA_DIR  processed gold data [BASE/processed_data/anli/flan-label]
#   GEN_DIR         output folder [BASE/results/anli/seqkd_gen/xl]   ROUNDS ["r1 r2 r3"]   SPLIT [train]
#   BATCH_SIZE [64] prompts per process and call   MAX_NEW_TOKENS [64]   DTYPE auto | bf16 | fp32 [auto]   SEED [42]
#   DECODING greedy | sample [greedy]; sampling: TEMPERATURE [1.0] TOP_K [0] TOP_P [1.0] NUM_SAMPLES [1]
#   EXTRA_ARGS      more flags for python -m minillm.generate_seqkd
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:?usage: $0 /PATH/TO/REPO [NUM_GPUS]}" && pwd)"
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"

read -ra rounds <<< "${ROUNDS:-r1 r2 r3}"
read -ra extra <<< "${EXTRA_ARGS:-}"
sharding=()
if [[ -n "${DS_CONFIG:-}" || "${ZERO_STAGE:-}" == 3* ]]; then
  DS_CONFIG="${DS_CONFIG:-$REPO/configs/deepspeed/zero${ZERO_STAGE}_${PRECISION:-$(default_precision)}.json}"
  if [[ ! -f "$DS_CONFIG" ]]; then
    echo "generate_data_seqkd.sh: DS_CONFIG=$DS_CONFIG not found; pick a file in $REPO/configs/deepspeed/" >&2
    exit 2
  fi
  sharding=(--deepspeed-config "$DS_CONFIG")
fi
launch_module minillm.generate_seqkd \
  --model-path "${TEACHER_CKPT:-$BASE/results/anli/sft/xl/best}" \
  --data-dir "${DATA_DIR:-$BASE/processed_data/anli/flan-label}" \
  --out-dir "${GEN_DIR:-$BASE/results/anli/seqkd_gen/xl}" --rounds "${rounds[@]}" --split "${SPLIT:-train}" \
  --batch-size "${BATCH_SIZE:-64}" --max-new-tokens "${MAX_NEW_TOKENS:-64}" --dtype "${DTYPE:-auto}" \
  --decoding "${DECODING:-greedy}" --temperature "${TEMPERATURE:-1.0}" --top-k "${TOP_K:-0}" \
  --top-p "${TOP_P:-1.0}" --num-samples "${NUM_SAMPLES:-1}" --seed "${SEED:-42}" "${sharding[@]}" "${extra[@]}"

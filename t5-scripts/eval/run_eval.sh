#!/usr/bin/env bash
# Evaluate checkpoints on ANLI (rank classification, greedy generation, Rouge-L, loss, calibration (ECE), gold option
# NLL, off-option mass and, with a teacher, the option KLs; per round and overall; docs/metrics.md).
#   CKPTS="CKPT1 CKPT2 ..." bash t5-scripts/eval/run_eval.sh [BASE]
# Environment: CKPTS (required; checkpoint folders separated by spaces, or one per line for paths with spaces),
# DATA_DIR [BASE/processed_data/anli/flan-label], SPLIT [test], BATCH_SIZE [32], MAX_NEW_TOKENS [16], EXTRA_ARGS
# (more flags for python -m minillm.evaluate, e.g. "--dtype bf16 --max-examples 200"), TEACHER_CKPT [empty: none]
# (a teacher sharing the checkpoints' tokenizer, passed as --teacher-model-path: adds option_rev_kl and
# option_fwd_kl, each checkpoint's KL to it over the three answer options).
# One process scores the checkpoints in turn; each one's results.json and predictions.jsonl go to CKPT/eval/SPLIT/,
# and a summary line per checkpoint ends the output.
# Sharded, for a model larger than one GPU (an XXL teacher): ZERO_STAGE=3 (or 3_offload; or DS_CONFIG, a file of
# configs/deepspeed/) runs NUM_GPUS [1] processes through launch_module with --deepspeed-config
# configs/deepspeed/zero${ZERO_STAGE}_${PRECISION}.json (PRECISION [bf16 if the GPU has it, else fp32] is then the
# models' dtype): every model is split over the processes by ZeRO-3 and the examples are dealt out to them; the
# figures are those of one process.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
if [[ -z "${CKPTS:-}" ]]; then
  echo "run_eval.sh: set CKPTS to the checkpoint folders to evaluate, space-separated (CKPTS=\"ckpt_a ckpt_b\")" >&2
  exit 2
fi

DATA_DIR="${DATA_DIR:-$BASE/processed_data/anli/flan-label}"
SPLIT="${SPLIT:-test}"
CHECKPOINTS=()
if [[ "$CKPTS" == *$'\n'* ]]; then  # one per line: paths may hold spaces
  while IFS= read -r line; do [[ -n "$line" ]] && CHECKPOINTS+=("$line"); done <<< "$CKPTS"
else
  read -ra CHECKPOINTS <<< "$CKPTS"
fi
read -ra EXTRA <<< "${EXTRA_ARGS:-}"
TEACHER=()
if [[ -n "${TEACHER_CKPT:-}" ]]; then
  TEACHER=(--teacher-model-path "$TEACHER_CKPT")
fi

LAUNCH=(run_python -m minillm.evaluate)
if [[ -n "${DS_CONFIG:-}" || "${ZERO_STAGE:-}" == 3* ]]; then
  DS_CONFIG="${DS_CONFIG:-$REPO/configs/deepspeed/zero${ZERO_STAGE}_${PRECISION:-$(default_precision)}.json}"
  if [[ ! -f "$DS_CONFIG" ]]; then
    echo "run_eval.sh: DS_CONFIG=$DS_CONFIG not found; pick a file in $REPO/configs/deepspeed/" >&2
    exit 2
  fi
  LAUNCH=(launch_module minillm.evaluate --deepspeed-config "$DS_CONFIG")
fi

"${LAUNCH[@]}" --model-path "${CHECKPOINTS[@]}" --data-dir "$DATA_DIR" --split "$SPLIT" \
  --batch-size "${BATCH_SIZE:-32}" --max-new-tokens "${MAX_NEW_TOKENS:-16}" "${TEACHER[@]}" "${EXTRA[@]}"

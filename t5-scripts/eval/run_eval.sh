#!/usr/bin/env bash
# Evaluate checkpoints on ANLI (rank classification, greedy generation, Rouge-L, loss; per round and overall).
#   CKPTS="CKPT1 CKPT2 ..." bash t5-scripts/eval/run_eval.sh [BASE]
# Environment: CKPTS (required; space-separated checkpoint folders), DATA_DIR [BASE/processed_data/anli/flan-label],
# SPLIT [test], BATCH_SIZE [32], MAX_NEW_TOKENS [16], EXTRA_ARGS (more flags for python -m minillm.evaluate,
# e.g. "--dtype bf16 --max-examples 200").
# Each checkpoint's results.json and predictions.jsonl go to CKPT/eval/SPLIT/; a summary line per checkpoint ends it.
set -euo pipefail
BASE="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
BASE="$(cd "$BASE" && pwd)"
if [[ -z "${CKPTS:-}" ]]; then
  echo "run_eval.sh: set CKPTS to the checkpoint folders to evaluate, space-separated (CKPTS=\"ckpt_a ckpt_b\")" >&2
  exit 2
fi
source "$BASE/t5-scripts/common.sh"

DATA_DIR="${DATA_DIR:-$BASE/processed_data/anli/flan-label}"
SPLIT="${SPLIT:-test}"
read -ra CHECKPOINTS <<< "$CKPTS"
read -ra EXTRA <<< "${EXTRA_ARGS:-}"

for ckpt in "${CHECKPOINTS[@]}"; do
  printf '\n== %s\n' "$ckpt"
  run_python -m minillm.evaluate --model-path "$ckpt" --data-dir "$DATA_DIR" --split "$SPLIT" \
    --batch-size "${BATCH_SIZE:-32}" --max-new-tokens "${MAX_NEW_TOKENS:-16}" "${EXTRA[@]}" \
    --out-dir "$ckpt/eval/$SPLIT"
done

printf '\n== summary: accuracy (rank classification) on %s\n' "$SPLIT"
run_python - "$SPLIT" "${CHECKPOINTS[@]}" <<'PY'
import json, sys
split, checkpoints = sys.argv[1], sys.argv[2:]
for ckpt in checkpoints:
    result = json.load(open(f"{ckpt}/eval/{split}/results.json"))
    rounds = "  ".join(f"{name} {r['accuracy_rank']:.2f}" for name, r in result["rounds"].items())
    print(f"{ckpt}: overall {result['overall']['accuracy_rank']:.2f}  ({rounds})")
PY

#!/usr/bin/env bash
# The embedded default (t5-scripts/run_default.sh) once per seed, then the methods compared across the runs
# (tools/compare_runs.py: mean and sample standard deviation per method and round, the step of each best/ and the
# last/ score beside it, and each student's difference from the SFT student within a seed with its 95 % interval).
# A seed fixes the synthetic data, the tokenizer, the initial weights, the data order and dropout, so the spread is
# that of the whole pipeline.
#   bash t5-scripts/run_default_seeds.sh [BASE]
# Environment: SEEDS ["0 1 2"], WORK_ROOT [BASE/runs] (run s goes to WORK_ROOT/default_seed<s>), METRIC
# [accuracy_rank] (or accuracy_generate, rougeL, exact_match, loss; on the test split); every run_default.sh
# override (TRAIN_ROUND, TEACHER_STEPS, ...) passes through. A run whose results exist is not repeated: delete its
# folder to train it again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exit_with_usage_if_asked "$@"
BASE="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
BASE="$(cd "$BASE" && pwd)"
read -ra SEED_LIST <<< "${SEEDS:-0 1 2}"
if [[ ${#SEED_LIST[@]} == 0 ]]; then
  echo "run_default_seeds.sh: SEEDS is empty; give one or more whole numbers (SEEDS=\"0 1 2\")" >&2
  exit 2
fi
for seed in "${SEED_LIST[@]}"; do
  if [[ ! "$seed" =~ ^[0-9]+$ ]]; then
    echo "run_default_seeds.sh: SEEDS holds \"$seed\"; give whole numbers >= 0 (SEEDS=\"0 1 2\")" >&2
    exit 2
  fi
done
WORK_ROOT="${WORK_ROOT:-$BASE/runs}"
RUNS=()
for seed in "${SEED_LIST[@]}"; do
  work="$WORK_ROOT/default_seed$seed"
  RUNS+=("$work")
  if [[ -f "$work/results/minillm/student/last/eval/test/results.json" ]]; then  # the main job's last evaluation
    printf '\n== seed %s: results in %s (kept; delete the folder to train again)\n' "$seed" "$work"
    continue
  fi
  printf '\n== seed %s -> %s\n' "$seed" "$work"
  SEED="$seed" WORK="$work" bash "$BASE/t5-scripts/run_default.sh" "$BASE"
done
source "$BASE/t5-scripts/common.sh"  # again: activates the .venv the first run_default.sh may have made
printf '\n== the methods across %d seed(s)\n' "${#RUNS[@]}"
run_python "$BASE/tools/compare_runs.py" "${RUNS[@]}" --metric "${METRIC:-accuracy_rank}"
printf '\n== report of the %d seed(s): plots and report.md (tools/report.py); its path last\n' "${#RUNS[@]}"
run_python "$BASE/tools/report.py" "${RUNS[@]}" --out "$WORK_ROOT/report"

#!/usr/bin/env bash
# The embedded default, end to end, offline on CPU: a synthetic ANLI-style data set -> normalised text -> a
# tokenizer trained on that text -> tiny teacher and student checkpoints -> memory-mapped token shards.
#   bash t5-scripts/run_default.sh [BASE]
# Environment overrides: WORK (output folder) [BASE/runs/default], SEED [0], TRAIN_PER_ROUND [3000],
# EVAL_PER_ROUND [300] (dev and test each), VOCAB_SIZE [512].
set -euo pipefail
BASE="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
BASE="$(cd "$BASE" && pwd)"
bash "$BASE/install.sh"
source "$BASE/t5-scripts/common.sh"
export HF_HUB_OFFLINE=1

WORK="${WORK:-$BASE/runs/default}"
SEED="${SEED:-0}"
RAW_DIR="$WORK/data/synthetic_nli"
DATA_DIR="$WORK/processed_data/synthetic_nli"
MODELS="$WORK/models"

step() { printf '\n== %s\n' "$*"; }

step "1/4 synthetic NLI data (Hugging Face ANLI layout) -> $RAW_DIR"
run_python "$BASE/tools/make_synthetic_nli.py" --out "$RAW_DIR" --seed "$SEED" \
  --train-per-round "${TRAIN_PER_ROUND:-3000}" \
  --dev-per-round "${EVAL_PER_ROUND:-300}" --test-per-round "${EVAL_PER_ROUND:-300}"

step "2/4 normalised text -> $DATA_DIR/text"
RAW_DIR="$RAW_DIR" OUT_DIR="$DATA_DIR" STAGE=text bash "$BASE/t5-scripts/tools/process_data_anli.sh" "$BASE"

step "3/4 tokenizer trained on that text, tiny teacher and student -> $MODELS"
run_python "$BASE/tools/make_tiny_models.py" --out "$MODELS" --presets tiny-teacher tiny-student \
  --train-tokenizer-on "$DATA_DIR"/text/r*/train.jsonl --vocab-size "${VOCAB_SIZE:-512}" --seed "$SEED"

step "4/4 token shards -> $DATA_DIR/{full,prompt}"
OUT_DIR="$DATA_DIR" STAGE=shards TOKENIZER="$MODELS/tokenizer" \
  bash "$BASE/t5-scripts/tools/process_data_anli.sh" "$BASE"

step "done: data $DATA_DIR, teacher $MODELS/tiny-teacher, student $MODELS/tiny-student"

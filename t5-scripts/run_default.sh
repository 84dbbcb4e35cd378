#!/usr/bin/env bash
# The embedded default, end to end, offline on CPU: a synthetic ANLI-style data set -> normalised text -> a
# tokenizer trained on that text -> tiny teacher and student checkpoints -> memory-mapped token shards -> SFT of
# the teacher and the student through the real recipes (t5-scripts/sft/sft_xl.sh and sft_small.sh) -> word-level KD
# of the student from that teacher (t5-scripts/kd/kd_small.sh) -> SeqKD: the teacher's outputs for every training
# prompt (t5-scripts/tools/generate_data_seqkd.sh, process_pseudo_data_seqkd.sh) and the student trained on them
# (t5-scripts/seqkd/seqkd_small.sh) -> MiniLLM of the SFT student against the same teacher
# (t5-scripts/minillm/train_small_xl.sh) -> the five students' and the teacher's best/ and last/ scored on the test
# split per round (t5-scripts/eval/run_eval.sh) -> the comparison table (tools/compare_runs.py).
# Every model in the table is selected by one rule, dev accuracy (ties to the later step); the SFT student's
# best_loss/ (dev loss, MiniLLM's rule for its initialisation) is where MiniLLM starts.
#   bash t5-scripts/run_default.sh [BASE]
# Environment overrides: WORK (output folder) [BASE/runs/default], SEED [0], TRAIN_PER_ROUND [12000],
# EVAL_PER_ROUND [300] (dev and test each), VOCAB_SIZE [512], NUM_GPUS [1] (processes), TRAIN_ROUND [r1] (r1, r2,
# r3 or all: the training data, and the dev round(s) checkpoints are selected on; test covers every round),
# TEACHER_STEPS [2000; 3375 with TRAIN_ROUND=all], STUDENT_STEPS [500; 1500 with all] (SFT, KD, SeqKD),
# MINILLM_STEPS [256], SKIP_TRAINING [0] (1: stop after the shards).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
exit_with_usage_if_asked "$@"
BASE="${1:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
BASE="$(cd "$BASE" && pwd)"
TRAIN_ROUND="${TRAIN_ROUND:-r1}"
case "$TRAIN_ROUND" in
  r1 | r2 | r3 | all) ;;
  *) echo "run_default.sh: TRAIN_ROUND=$TRAIN_ROUND; use r1, r2, r3 or all" >&2; exit 2 ;;
esac
NUM_GPUS="${NUM_GPUS:-1}"
case "$NUM_GPUS" in  # the global batches (16 pairs, 64 rollouts) are split evenly over the processes
  1 | 2 | 4 | 8 | 16) ;;
  *) echo "run_default.sh: NUM_GPUS=$NUM_GPUS; use 1, 2, 4, 8 or 16 (processes that split a batch of 16)" >&2; exit 2 ;;
esac
bash "$BASE/install.sh"
source "$BASE/t5-scripts/common.sh"  # again: activates the .venv install.sh may just have made
export HF_HUB_OFFLINE=1

WORK="${WORK:-$BASE/runs/default}"
SEED="${SEED:-0}"
RAW_DIR="$WORK/data/synthetic_nli"
DATA_DIR="$WORK/processed_data/synthetic_nli"
MODELS="$WORK/models"

step() { printf '\n== %s  [%d:%02d]\n' "$*" $((SECONDS / 60)) $((SECONDS % 60)); }  # with the time since the start

step "1/12 synthetic NLI data (Hugging Face ANLI layout) -> $RAW_DIR"
run_python "$BASE/tools/make_synthetic_nli.py" --out "$RAW_DIR" --seed "$SEED" \
  --train-per-round "${TRAIN_PER_ROUND:-12000}" \
  --dev-per-round "${EVAL_PER_ROUND:-300}" --test-per-round "${EVAL_PER_ROUND:-300}"

step "2/12 normalised text -> $DATA_DIR/text"
RAW_DIR="$RAW_DIR" OUT_DIR="$DATA_DIR" STAGE=text bash "$BASE/t5-scripts/tools/process_data_anli.sh" "$BASE"

step "3/12 tokenizer trained on that text, tiny teacher and student -> $MODELS"
run_python "$BASE/tools/make_tiny_models.py" --out "$MODELS" --presets tiny-teacher tiny-student \
  --train-tokenizer-on "$DATA_DIR"/text/r*/train.jsonl --vocab-size "${VOCAB_SIZE:-512}" --seed "$SEED"

step "4/12 token shards -> $DATA_DIR/{full,prompt}"
OUT_DIR="$DATA_DIR" STAGE=shards TOKENIZER="$MODELS/tokenizer" \
  bash "$BASE/t5-scripts/tools/process_data_anli.sh" "$BASE"

if [[ "${SKIP_TRAINING:-0}" == "1" ]]; then
  step "done (SKIP_TRAINING=1): data $DATA_DIR, teacher $MODELS/tiny-teacher, student $MODELS/tiny-student"
  exit 0
fi

# The recipes' cluster settings, scaled down to a CPU: one process (NUM_GPUS of them share the global batch),
# ZeRO 0 in fp32, a cosine schedule over a fixed number of steps, evaluation on 300 dev examples of TRAIN_ROUND twice
# per run, rank classification only (generation is evaluated at the end, on test). Round 1 (one fact per premise,
# the shortest prompts) is what tiny models learn in minutes on two cores; all three rounds need a teacher trained
# longer on larger batches (below), a job of about half an hour here (docs/results.md, Three rounds).
TRAINED_ROUNDS="$TRAIN_ROUND"
if [[ "$TRAIN_ROUND" == all ]]; then TRAINED_ROUNDS="r1 r2 r3"; fi
TRAIN_ARGS="--train-round $TRAIN_ROUND --eval-rounds $TRAINED_ROUNDS --eval-max-examples 300 --no-eval-generate"
TRAIN_ARGS+=" --seed $SEED"
# train_tiny SCRIPT CHECKPOINT OUT STEPS LR WARMUP_STEPS [GLOBAL_BATCH (16)] (SCRIPT relative to t5-scripts/;
# DATA_DIR=... for one call)
train_tiny() {
  CKPT="$2" SAVE_DIR="$3" MAX_STEPS="$4" LR="$5" WARMUP_STEPS="$6" DATA_DIR="$DATA_DIR" \
    NUM_GPUS="$NUM_GPUS" BATCH_SIZE=$((${7:-16} / NUM_GPUS)) GRAD_ACC=1 \
    DS_CONFIG="$BASE/configs/deepspeed/zero0_fp32.json" EVAL_INTERVAL=$(($4 / 2)) SAVE_INTERVAL=0 \
    EXTRA_ARGS="$TRAIN_ARGS" bash "$BASE/t5-scripts/$1" "$BASE"
}
RESULTS="$WORK/results"
# The teacher (5x the student's parameters, one more layer each side) trains four times as long as the students, at
# a third of their rate with a longer warmup. On one round: at 1e-3 it reached 52-57 % on r1 dev in 1,500-3,000
# steps of 16, at 2e-3 it sat near chance for a thousand, at 7e-4 (warmup 100) 64-69 % in 2,000. On all three rounds
# those settings left it at 41.8 % on dev after 6,000 steps, no better than the student; 3 epochs of the 36,000
# examples in batches of 32 at 5e-4 (warmup 200) took it to 59.4-64.4 % (three runs: dropout streams, norm kernels).
if [[ "$TRAIN_ROUND" == all ]]; then
  TEACHER_BATCH=32 TEACHER_LR=5e-4 TEACHER_WARMUP=200
  TEACHER_STEPS="${TEACHER_STEPS:-3375}"
  STUDENT_STEPS="${STUDENT_STEPS:-1500}"
else
  TEACHER_BATCH=16 TEACHER_LR=7e-4 TEACHER_WARMUP=100
  TEACHER_STEPS="${TEACHER_STEPS:-2000}"
  STUDENT_STEPS="${STUDENT_STEPS:-500}"
fi

step "5/12 SFT of the tiny teacher with the teacher recipe (sft_xl.sh) -> $RESULTS/sft/teacher"
train_tiny sft/sft_xl.sh "$MODELS/tiny-teacher" "$RESULTS/sft/teacher" "$TEACHER_STEPS" "$TEACHER_LR" \
  "$TEACHER_WARMUP" "$TEACHER_BATCH"

step "6/12 SFT of the tiny student with the student recipe (sft_small.sh) -> $RESULTS/sft/student"
train_tiny sft/sft_small.sh "$MODELS/tiny-student" "$RESULTS/sft/student" "$STUDENT_STEPS" 2e-3 30

step "7/12 word-level KD of the tiny student from the SFT teacher (kd_small.sh, forward KL, ratio 0.5) -> $RESULTS/kd/student"
TEACHER_CKPT="$RESULTS/sft/teacher/best" \
  train_tiny kd/kd_small.sh "$MODELS/tiny-student" "$RESULTS/kd/student" "$STUDENT_STEPS" 2e-3 30

step "8/12 SeqKD data: the SFT teacher's greedy outputs for every training prompt of $TRAIN_ROUND -> $RESULTS/seqkd_gen, shards -> $WORK/processed_data/seqkd"
TEACHER_CKPT="$RESULTS/sft/teacher/best" DATA_DIR="$DATA_DIR" GEN_DIR="$RESULTS/seqkd_gen" ROUNDS="$TRAINED_ROUNDS" \
  BATCH_SIZE=256 MAX_NEW_TOKENS=16 bash "$BASE/t5-scripts/tools/generate_data_seqkd.sh" "$BASE" "$NUM_GPUS"
GEN_DIR="$RESULTS/seqkd_gen" DATA_DIR="$DATA_DIR" OUT_DIR="$WORK/processed_data/seqkd" \
  bash "$BASE/t5-scripts/tools/process_pseudo_data_seqkd.sh" "$BASE"

step "9/12 SeqKD of the tiny student on the teacher's outputs (seqkd_small.sh) -> $RESULTS/seqkd/student"
DATA_DIR="$WORK/processed_data/seqkd" \
  train_tiny seqkd/seqkd_small.sh "$MODELS/tiny-student" "$RESULTS/seqkd/student" "$STUDENT_STEPS" 2e-3 30

step "10/12 MiniLLM of the SFT student from the SFT teacher (train_small_xl.sh) -> $RESULTS/minillm/student"
# The recipe's algorithm (alpha 0.2, gamma 0.95, length norm, single-step term, clip 0.2, LM term on the gold pairs,
# constant rate after warmup) at a CPU's scale: 64 rollouts per collection, 4 PPO epochs of 4 micro-batches (16
# steps per collection), 8 sampled tokens at most (the longest answer has 7 with this vocabulary), the rate of a
# tiny model. It starts from the SFT student's best_loss/; step 0 is evaluated too: it is that student.
MINILLM_STEPS="${MINILLM_STEPS:-256}"
CKPT="$RESULTS/sft/student/best_loss" TEACHER_CKPT="$RESULTS/sft/teacher/best" PROMPT_DATA_DIR="$DATA_DIR" \
  LM_DATA_DIR="$DATA_DIR" DATA_DIR="$DATA_DIR" SAVE_DIR="$RESULTS/minillm/student" NUM_GPUS="$NUM_GPUS" \
  BATCH_SIZE=$((16 / NUM_GPUS)) GRAD_ACC=1 CHUNK_SIZE=$((64 / NUM_GPUS)) NUM_ROLLOUTS=64 PPO_EPOCHS=4 \
  MAX_NEW_TOKENS=8 LR=5e-4 WARMUP_STEPS=4 MAX_STEPS="$MINILLM_STEPS" EVAL_INTERVAL=$((MINILLM_STEPS / 2)) \
  SAVE_INTERVAL="$MINILLM_STEPS" DS_CONFIG="$BASE/configs/deepspeed/zero0_fp32.json" EXTRA_ARGS="$TRAIN_ARGS" \
  bash "$BASE/t5-scripts/minillm/train_small_xl.sh" "$BASE"

step "11/12 evaluation on test, per round: best/ and last/ of every model, option-level KLs against the teacher"
CKPTS="$(printf '%s\n' "$RESULTS"/{sft/teacher,sft/student,kd/student,seqkd/student,minillm/student}/{best,last})"
CKPTS="$CKPTS" DATA_DIR="$DATA_DIR" SPLIT=test TEACHER_CKPT="$RESULTS/sft/teacher/best" \
  bash "$BASE/t5-scripts/eval/run_eval.sh" "$BASE"

step "12/12 the comparison"
run_python "$BASE/tools/compare_runs.py" "$WORK"

step "done: data $DATA_DIR, checkpoints $RESULTS/{sft/teacher,sft/student,kd/student,seqkd/student,minillm/student}/{best,last}"

step "report: dev curves, MiniLLM's figures and the per-round test bars (tools/report.py); its path last"
run_python "$BASE/tools/report.py" "$WORK" --out "$WORK/report"

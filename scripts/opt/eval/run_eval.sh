#!/usr/bin/env bash
# Evaluate the OPT 1.3B students of the four methods (SFT, KD, SeqKD, MiniLLM) on Dolly's test split as MiniLLM's
# run_eval.sh does: answers sampled at temperature 1, once per seed 10 20 30 40 50, Rouge-L averaged over the seeds.
# MiniLLM also scores Self-Instruct, Vicuna, S-NI and UnNI; only Dolly is processed here. One process scores the
# checkpoints in turn.
#   bash scripts/opt/eval/run_eval.sh [BASE]
# Environment: SIZE [1.3B] (the students compared), CKPTS [the best/ of
# BASE/results/opt/{sft,kd,seqkd,minillm}/SIZE; space-separated], and evaluate_dolly's
# (t5-scripts/common.sh: DATA_DIR, SPLIT, SEEDS, BATCH_SIZE, NO_REPEAT_NGRAM_SIZE, EXTRA_ARGS).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../../../t5-scripts/common.sh"
exit_with_usage_if_asked "$@"
BASE="$(cd "${1:-$REPO}" && pwd)"
FAMILY=opt

evaluate_dolly "${SIZE:-1.3B}"

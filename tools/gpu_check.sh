#!/usr/bin/env bash
# GPU measurements in one call (issue 26): NCCL all_reduce, SFT throughput against Seq2SeqTrainer with MFU
# (flan-t5-large and flan-t5-base shapes), the MiniLLM step breakdown (flan-t5-large student, flan-t5-xl teacher)
# and peak memory against tools/plan_memory.py, each part time-boxed (460 s in all; see tools/gpu_check.py), in one
# JSON and one printed table with the issue's goals passed or failed. Offline: random weights built from shapes.
#
#   bash tools/gpu_check.sh [OUT.json] [gpu_check.py flags]    # default $OUT/gpu_check.json, else ./gpu_check.json
#   GPU_CHECK_SMOKE=1 bash tools/gpu_check.sh OUT.json         # tiny shapes on any device (the CPU test)
#
# Python: .venv when the checkout has one, else python3 (PYTHON overrides). On a node whose Python has a CUDA
# torch but not this repository's other packages (no DeepSpeed; an older transformers), give it the kit that
# `bash tools/offline_gpu_bench.sh pack offline_kit` makes (wheels for Python 3.12, ANLI R1 dev, the Flan-T5
# tokenizer; ~35 MB): GPU_CHECK_KIT=DIR, or ./offline_kit is used by itself when the Python cannot import
# deepspeed. Its wheels go to a temporary folder first on PYTHONPATH, its ANLI and tokenizer become --anli and
# --tokenizer. Without ANLI data the check runs on the synthetic NLI set (the JSON says so).
# A hard limit of 470 s (GPU_CHECK_LIMIT_S) stops the whole run short of 8 minutes; the JSON is rewritten after
# every part, so it holds what finished.
set -uo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" && -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; fi
PYTHON="${PYTHON:-python3}"
args=()
if [[ $# -gt 0 && "$1" != -* ]]; then args+=(--out "$1"); shift; fi
if [[ "${GPU_CHECK_SMOKE:-0}" == "1" ]]; then args+=(--smoke); fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

KIT="${GPU_CHECK_KIT:-}"
if [[ -z "$KIT" && -d "$REPO/offline_kit/wheels" ]] && ! "$PYTHON" -c "import deepspeed" >/dev/null 2>&1; then
  KIT="$REPO/offline_kit"
fi
SITE=""
if [[ -n "$KIT" ]]; then
  if [[ ! -d "$KIT/wheels" ]]; then echo "gpu_check.sh: $KIT/wheels not found (GPU_CHECK_KIT)" >&2; exit 2; fi
  SITE="$(mktemp -d)"
  trap 'rm -rf "$SITE"' EXIT
  "$PYTHON" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$KIT"/wheels/*.whl ||
    { echo "gpu_check.sh: installing $KIT/wheels failed" >&2; exit 2; }
  [[ -d "$KIT/anli" ]] && args+=(--anli "$KIT/anli")
  [[ -d "$KIT/tokenizer" ]] && args+=(--tokenizer "$KIT/tokenizer")
  echo "gpu_check.sh: packages from $KIT/wheels ($(ls "$KIT/wheels" | wc -l) wheels) first on PYTHONPATH"
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
# A Python that install.sh has not installed this checkout into (a node's own, with or without a kit; one holding
# another checkout) finds it on PYTHONPATH instead.
if ! (cd / && "$PYTHON" -c 'import os, sys, minillm; sys.exit(not os.path.samefile(minillm.__file__, sys.argv[1]))' \
      "$REPO/minillm/__init__.py" > /dev/null 2>&1); then
  export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
cd "$REPO"
timeout --kill-after=5 "${GPU_CHECK_LIMIT_S:-470}" "$PYTHON" "$REPO/tools/gpu_check.py" "${args[@]}" "$@"
rc=$?
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
  echo "gpu_check.sh: stopped at ${GPU_CHECK_LIMIT_S:-470} s; the JSON holds the parts that finished" >&2
fi
exit $rc

#!/usr/bin/env bash
# The test command: installs if needed (with the benchmark extras: the benchmarks' smoke tests run Hugging Face's
# Seq2SeqTrainer, which needs accelerate, and TRL's trainers), then runs the whole suite offline on CPU.
#   bash tests/run.sh [pytest args]
# TEST_WORKERS [2] pytest processes (pytest-xdist; each test file runs whole in one of them, so a module's fixtures
# are built once); OMP_NUM_THREADS [cores / TEST_WORKERS, at least 1] torch threads in each worker and in the
# processes the tests start (the workers share the cores).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
INSTALL_BENCH=1 bash "$REPO/install.sh"
if [[ "${USE_ACTIVE_ENV:-0}" != "1" ]]; then source "$REPO/.venv/bin/activate"; fi
WORKERS="${TEST_WORKERS:-2}"  # 0: no worker processes, the tests run in pytest's own process
CORES_EACH=$(( $(nproc) / (WORKERS > 1 ? WORKERS : 1) ))
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$(( CORES_EACH > 0 ? CORES_EACH : 1 ))}"
cd "$REPO"
exec python -m pytest tests -n "$WORKERS" --dist loadfile --no-loadscope-reorder "$@"

#!/usr/bin/env bash
# The test command: installs if needed, then runs the whole suite offline on CPU.
#   bash tests/run.sh [pytest args]
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$REPO/install.sh"
if [[ "${USE_ACTIVE_ENV:-0}" != "1" ]]; then source "$REPO/.venv/bin/activate"; fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=true
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
exec python -m pytest tests "$@"

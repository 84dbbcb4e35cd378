#!/usr/bin/env bash
# Install everything this repository needs into .venv (or into the active environment with USE_ACTIVE_ENV=1).
#   bash install.sh
# Idempotent: a second run on an installed machine only checks a stamp and exits.
# INSTALL_BENCH=1 also installs requirements-bench.txt (benchmark-only pins, e.g. for tools/bench_sft_throughput.py);
# an environment installed with them satisfies a later plain run.
# torch: the machine decides the build. With an NVIDIA GPU (nvidia-smi present) pip takes the CUDA build
# of torch==$TORCH_VERSION from PyPI; without one it asks for the same version, which resolves to the CPU
# wheel where one is available locally (point PIP_EXTRA_INDEX_URL at PyTorch's CPU index elsewhere to avoid
# downloading the CUDA build on CPU-only machines).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
INSTALL_BENCH="${INSTALL_BENCH:-0}"

if [[ "${USE_ACTIVE_ENV:-0}" == "1" ]]; then
  PY="$(command -v python)"
else
  if [[ ! -x "$REPO/.venv/bin/python" ]]; then
    "$PYTHON" -m venv "$REPO/.venv"
  fi
  PY="$REPO/.venv/bin/python"
fi

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then BUILD=cuda; else BUILD=cpu; fi
STAMP_DIR="$("$PY" -c 'import sys; print(sys.prefix)')"
STAMP="$STAMP_DIR/.minillm-seq2seq-installed"
WANT="$(cat "$REPO/requirements.txt" "$REPO/requirements-bench.txt" "$REPO/install.sh" | sha256sum | cut -c1-16)-torch$TORCH_VERSION-$BUILD"
REQUIREMENTS=(-r "$REPO/requirements.txt")
if [[ "$INSTALL_BENCH" == "1" ]]; then
  WANT="$WANT-bench"
  REQUIREMENTS+=(-r "$REPO/requirements-bench.txt")
fi
if [[ -f "$STAMP" && ( "$(cat "$STAMP")" == "$WANT" || "$(cat "$STAMP")" == "$WANT-bench" ) ]]; then
  echo "install.sh: already installed ($(cat "$STAMP")) in $STAMP_DIR"
  exit 0
fi

echo "install.sh: installing torch==$TORCH_VERSION ($BUILD) and ${REQUIREMENTS[*]//"$REPO/"/} into $STAMP_DIR"
# torch is named again on the second line so that no requirement can pull a different torch build.
"$PY" -m pip install --quiet "torch==$TORCH_VERSION"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" "${REQUIREMENTS[@]}"
"$PY" - <<'PY'
import torch, transformers, deepspeed, google.protobuf, sentencepiece
print(f"install.sh: torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, deepspeed {deepspeed.__version__}")
PY
echo "$WANT" > "$STAMP"

#!/usr/bin/env bash
# Install everything this repository needs into .venv (or into the active environment with USE_ACTIVE_ENV=1).
#   bash install.sh
# Idempotent: a second run on an installed machine only checks a stamp and exits.
# INSTALL_BENCH=1 also installs requirements-bench.txt (benchmark-only pins, e.g. for tools/bench_sft_throughput.py),
# INSTALL_DEV=1 requirements-dev.txt (development-only pins: mutmut for tools/mutation_test.sh); an environment
# installed with them satisfies a later plain run.
# torch: the machine decides the build. With an NVIDIA GPU (nvidia-smi present) pip takes the CUDA build
# of torch==$TORCH_VERSION from PyPI; without one it asks for the same version, which resolves to the CPU
# wheel where one is available locally (point PIP_EXTRA_INDEX_URL at PyTorch's CPU index elsewhere to avoid
# downloading the CUDA build on CPU-only machines).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
INSTALL_BENCH="${INSTALL_BENCH:-0}"
INSTALL_DEV="${INSTALL_DEV:-0}"

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
WANT="$(cat "$REPO"/requirements{,-bench,-dev}.txt "$REPO/install.sh" | sha256sum | cut -c1-16)-torch$TORCH_VERSION-$BUILD"
# The stamp is WANT then "+EXTRA" for each extra this environment holds (bench: requirements-bench.txt, dev:
# requirements-dev.txt): a run asking for fewer extras than are installed has nothing to do.
EXTRAS=()
if [[ "$INSTALL_BENCH" == "1" ]]; then EXTRAS+=(bench); fi
if [[ "$INSTALL_DEV" == "1" ]]; then EXTRAS+=(dev); fi
INSTALLED="$(cat "$STAMP" 2>/dev/null || true)"
if [[ -n "$INSTALLED" && "${INSTALLED%%+*}" == "$WANT" ]]; then
  missing=0
  for extra in "${EXTRAS[@]}"; do [[ "$INSTALLED+" == *"+$extra+"* ]] || missing=1; done
  if [[ "$missing" == 0 ]]; then
    echo "install.sh: already installed ($INSTALLED) in $STAMP_DIR"
    exit 0
  fi
  for extra in bench dev; do  # keep the extras already there in the new stamp
    if [[ "$INSTALLED+" == *"+$extra+"* && " ${EXTRAS[*]} " != *" $extra "* ]]; then EXTRAS+=("$extra"); fi
  done
fi
REQUIREMENTS=(-r "$REPO/requirements.txt")
for extra in "${EXTRAS[@]}"; do REQUIREMENTS+=(-r "$REPO/requirements-$extra.txt"); WANT="$WANT+$extra"; done

echo "install.sh: installing torch==$TORCH_VERSION ($BUILD) and ${REQUIREMENTS[*]//"$REPO/"/} into $STAMP_DIR"
# torch is named again on the second line so that no requirement can pull a different torch build.
"$PY" -m pip install --quiet "torch==$TORCH_VERSION"
"$PY" -m pip install --quiet "torch==$TORCH_VERSION" "${REQUIREMENTS[@]}"
"$PY" - <<'PY'
import torch, transformers, deepspeed, google.protobuf, sentencepiece
print(f"install.sh: torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, deepspeed {deepspeed.__version__}")
PY
echo "$WANT" > "$STAMP"

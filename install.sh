#!/usr/bin/env bash
# Install everything this repository needs into .venv (or into the active environment with USE_ACTIVE_ENV=1): the
# pinned requirements, then this checkout as an editable package (pyproject.toml: `import minillm` and the minillm-*
# commands from any folder, no PYTHONPATH).
#   bash install.sh
# Idempotent: a second run on an installed machine only checks a stamp and exits. The stamp covers the requirements,
# pyproject.toml, this script and the checkout's path (an environment installed from another checkout is redone).
# INSTALL_BENCH=1 also installs requirements-bench.txt (benchmark-only pins, e.g. for tools/bench_sft_throughput.py),
# INSTALL_DEV=1 requirements-dev.txt (development-only pins: mutmut for tools/mutation_test.sh); an environment
# installed with them satisfies a later plain run.
# torch: the machine decides the build (tools/choose_torch_build.py, run with the system python before the venv
# exists; docs/install.md has the support matrix). With an NVIDIA GPU it reads the driver's CUDA version and each
# GPU's compute capability from nvidia-smi and takes PyPI's CUDA 13 wheel where it runs, else the cu126 wheel from
# https://download.pytorch.org/whl/cu126 (V100: CUDA 13 builds have no sm_70; a driver older than CUDA 13), and refuses
# in one line (exit 3) where no build of torch==$TORCH_VERSION runs (a CUDA 11.x driver). Without a working nvidia-smi
# it asks PyPI for the same version, which resolves to the CPU wheel where one is available locally (point
# PIP_EXTRA_INDEX_URL at PyTorch's CPU index elsewhere to avoid downloading the CUDA build on CPU-only machines).
# TORCH_INDEX_URL=<pip index> overrides the choice (no check; e.g. with TORCH_VERSION for an older torch).
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
PYTHON="${PYTHON:-python3}"
INSTALL_BENCH="${INSTALL_BENCH:-0}"
INSTALL_DEV="${INSTALL_DEV:-0}"

# TAG: cpu, cu126, cu130 (or the override's); INDEX: pypi or a pip index URL; SPEC: the torch requirement; CUDA: what
# torch.version.cuda must start with ("-": not checked). A refusal has printed its line and exits non-zero here.
if [[ "${USE_ACTIVE_ENV:-0}" == "1" ]]; then CHOOSER_PY="$(command -v python)"; else CHOOSER_PY="$PYTHON"; fi
CHOICE="$(TORCH_VERSION="$TORCH_VERSION" "$CHOOSER_PY" "$REPO/tools/choose_torch_build.py")"
IFS=$'\t' read -r TAG INDEX SPEC CUDA SUMMARY <<< "$CHOICE"
echo "install.sh: torch build $TAG: $SPEC from ${INDEX/#pypi/PyPI} ($SUMMARY)"

if [[ "${USE_ACTIVE_ENV:-0}" == "1" ]]; then
  PY="$(command -v python)"
else
  if [[ ! -x "$REPO/.venv/bin/python" ]]; then
    "$PYTHON" -m venv "$REPO/.venv"
  fi
  PY="$REPO/.venv/bin/python"
fi

STAMP_DIR="$("$PY" -c 'import sys; print(sys.prefix)')"
STAMP="$STAMP_DIR/.minillm-seq2seq-installed"
WANT="$({ cat "$REPO"/requirements{,-bench,-dev}.txt "$REPO/pyproject.toml" "$REPO/install.sh"; echo "$REPO"; } |
        sha256sum | cut -c1-16)-torch$TORCH_VERSION-$TAG"
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

echo "install.sh: installing $SPEC ($TAG) and ${REQUIREMENTS[*]//"$REPO/"/} into $STAMP_DIR"
FIRST_INDEX=() EXTRA_INDEX=()
if [[ "$INDEX" != pypi ]]; then FIRST_INDEX=(--index-url "$INDEX"); EXTRA_INDEX=(--extra-index-url "$INDEX"); fi
# A CUDA build from PyPI has no +tag, so pip would keep an installed 2.13.0+cu126 (or +cpu) as satisfying it.
HAVE="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))' 2>/dev/null || true)"
if [[ "$TAG" != cpu && "$SPEC" != *+* && "$HAVE" == *+* ]]; then "$PY" -m pip uninstall --quiet --yes torch; fi
# torch is named again on the second line so that no requirement can pull a different torch build.
"$PY" -m pip install --quiet ${FIRST_INDEX[@]+"${FIRST_INDEX[@]}"} "$SPEC"
"$PY" -m pip install --quiet ${EXTRA_INDEX[@]+"${EXTRA_INDEX[@]}"} "$SPEC" "${REQUIREMENTS[@]}"
# The package itself, its requirements being installed above. The environment's setuptools builds it when it can
# (setuptools >= 64 builds editable wheels), so no build backend is downloaded; otherwise pip fetches one.
BUILD_ISOLATION=()
if "$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 64)' 2>/dev/null; then
  BUILD_ISOLATION=(--no-build-isolation)
fi
"$PY" -m pip install --quiet --no-deps ${BUILD_ISOLATION[@]+"${BUILD_ISOLATION[@]}"} --editable "$REPO"
# -I: neither the current folder nor PYTHONPATH on sys.path, so `import minillm` finds what the environment installed.
EXPECT_CUDA="$CUDA" REPO="$REPO" "$PY" -I - <<'PY'
import os, sys
from pathlib import Path
import torch, transformers, deepspeed, google.protobuf, sentencepiece
import minillm
print(f"install.sh: torch {torch.__version__} (cuda {torch.version.cuda}), transformers {transformers.__version__}, deepspeed {deepspeed.__version__}")
want, have = os.environ["EXPECT_CUDA"], torch.version.cuda or "none"
if want != "-" and have != want and not have.startswith(want + "."):
    sys.exit(f"install.sh: the installed torch {torch.__version__} is built for CUDA {have}, not the CUDA {want} chosen; "
             "a mirror or an earlier install served another build (pip uninstall torch, or set TORCH_INDEX_URL)")
package = Path(minillm.__file__).resolve().parent
if package != Path(os.environ["REPO"], "minillm").resolve():
    sys.exit(f"install.sh: the environment's minillm is {package}, not this checkout's; another copy is installed there "
             "(pip uninstall minillm-seq2seq, then rerun)")
PY
echo "$WANT" > "$STAMP"

#!/usr/bin/env bash
# The throughput benchmark (tools/bench_sft_throughput.py) on a GPU node that cannot reach a package index but whose
# Python already holds a CUDA build of torch (an air-gapped cluster node, a container image with PyTorch).
#
#   bash tools/offline_gpu_bench.sh pack KIT                 # on a machine with network and this repo installed
#   bash tools/offline_gpu_bench.sh run KIT [BENCH FLAGS]    # on the GPU node, e.g. --preset flan-t5-base
#
# pack fills KIT with what the benchmark needs beyond the node's PyTorch: wheels for the node's Python
# (TARGET_PYTHON, 3.12) on x86-64 Linux of DeepSpeed, transformers, accelerate, sentencepiece, protobuf (and
# EXTRA_PACKAGES) and of everything they require except torch's own requirements and numpy, each at the version
# this repository's environment runs (requirements*.txt's pins and what pip resolved for them; DeepSpeed, which
# publishes no wheel, built here from its source release: pure Python, it picks CUDA or CPU when it starts), the
# ANLI R1 dev split (ANLI, default ../shared/data/anli) and the Flan-T5 tokenizer (TOKENIZER, default
# ../shared/tokenizers/flan-t5). About 35 MB, written to KIT.tmp and renamed when complete.
# run checks that the node's Python (PYTHON, python3) has what the kit leaves out (torch, numpy, pyarrow,
# tensorboard), installs the wheels into a temporary folder put first on PYTHONPATH (the node's own packages stay
# as they are) and runs the benchmark on the kit's data.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTS=(deepspeed transformers accelerate sentencepiece protobuf)
NODE_PROVIDES=(torch numpy pyarrow tensorboard)  # imported by the benchmark, not carried by the kit

fail() {
  echo "offline_gpu_bench: $*" >&2
  exit 1
}

pack() {
  local kit="$1"
  local anli="${ANLI:-$REPO/../shared/data/anli}" tokenizer="${TOKENIZER:-$REPO/../shared/tokenizers/flan-t5}"
  local dev="$anli/plain_text/dev_r1-00000-of-00001.parquet"
  [[ -f "$dev" ]] || fail "$dev not found: set ANLI to the ANLI folder in the Hugging Face layout"
  [[ -f "$tokenizer/spiece.model" ]] || fail "$tokenizer/spiece.model not found: set TOKENIZER to the Flan-T5 tokenizer"
  [[ ! -e "$kit" ]] || fail "$kit exists: pack writes a new folder"

  local pins=() binary=() extra=() pin listed
  BASE="$REPO"
  source "$REPO/t5-scripts/common.sh"  # from here on `python` is this repository's environment
  read -ra extra <<< "${EXTRA_PACKAGES:-}"
  listed="$(python "$REPO/tools/pinned_closure.py" "${ROOTS[@]}" "${extra[@]}" \
    --exclude-closure-of torch --exclude numpy)" || exit 1  # it named the missing package
  mapfile -t pins <<< "$listed"
  for pin in "${pins[@]}"; do [[ "$pin" == deepspeed==* ]] || binary+=("$pin"); done

  local tmp="$kit.tmp"
  rm -rf "$tmp"
  mkdir -p "$tmp/wheels" "$tmp/anli/plain_text" "$tmp/tokenizer"
  python -m pip download --quiet --no-deps --only-binary=:all: --implementation cp \
    --python-version "${TARGET_PYTHON:-3.12}" --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --dest "$tmp/wheels" "${binary[@]}"
  # --no-build-isolation: DeepSpeed's setup.py imports torch, which an isolated build would download
  DS_BUILD_OPS=0 python -m pip wheel --quiet --no-deps --no-build-isolation \
    --wheel-dir "$tmp/wheels" "$(printf '%s\n' "${pins[@]}" | grep '^deepspeed==')"
  cp "$dev" "$tmp/anli/plain_text/"
  cp "$tokenizer"/* "$tmp/tokenizer/"
  mv "$tmp" "$kit"
  echo "offline_gpu_bench: $kit: $(ls "$kit/wheels" | wc -l) wheels ($(du -sh "$kit" | cut -f1)), ANLI R1 dev," \
       "tokenizer; the node must provide ${NODE_PROVIDES[*]}"
}

SITE=""
run() {
  local kit="$1"; shift
  local python="${PYTHON:-python3}" module hint
  [[ -d "$kit/wheels" && -d "$kit/anli" && -d "$kit/tokenizer" ]] || fail "$kit is not a folder made by 'pack'"
  for module in "${NODE_PROVIDES[@]}"; do
    hint=", or pack a kit with EXTRA_PACKAGES=$module"
    [[ "$module" != torch ]] || hint=" (a CUDA build)"
    "$python" -c "import $module" 2>/dev/null || fail "$python cannot import $module: install it on the node$hint"
  done
  SITE="$(mktemp -d)"
  trap 'rm -rf "$SITE"' EXIT
  "$python" -m pip install --quiet --no-index --no-deps --no-compile --target "$SITE" "$kit"/wheels/*.whl
  # The node has not run install.sh: the checkout goes on PYTHONPATH with the kit's packages.
  PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}" "$python" "$REPO/tools/bench_sft_throughput.py" \
    --anli "$kit/anli" --tokenizer "$kit/tokenizer" "$@"
}

case "${1:-}:${2:-}" in
  pack:?*) pack "$2" ;;
  run:?*) kit="$2"; shift 2; run "$kit" "$@" ;;
  *) echo "usage: bash tools/offline_gpu_bench.sh pack KIT | run KIT [bench_sft_throughput.py flags]" >&2; exit 2 ;;
esac

# Sourced by every script under t5-scripts/ and scripts/: one place for the Python environment.
# BASE must be set to the repository path before sourcing.

# Use the repository's .venv unless the caller runs inside an environment of its own (USE_ACTIVE_ENV=1).
if [[ "${USE_ACTIVE_ENV:-0}" != "1" && -z "${VIRTUAL_ENV:-}" && -x "$BASE/.venv/bin/python" ]]; then
  source "$BASE/.venv/bin/activate"
fi
export PYTHONPATH="$BASE${PYTHONPATH:+:$PYTHONPATH}"
export TOKENIZERS_PARALLELISM="${TOKENIZERS_PARALLELISM:-true}"

run_python() {
  python "$@"
}

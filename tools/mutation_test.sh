#!/usr/bin/env bash
# Mutation testing (mutmut, pinned in requirements-dev.txt) of minillm/divergences.py, objectives/minillm/rollouts.py,
# objectives/minillm/policy_gradient.py, objectives/minillm/objective.py and losses.py against their fast unit tests
# ([mutmut] in setup.cfg).
#   bash tools/mutation_test.sh
# Not part of CI or tests/run.sh. CPU budget: a full run (1239 to 1277 mutants) took 13.5 to 24 min wall time on 2
# shared cores (docs/mutation.md): about 20-25 minutes.
# Installs requirements-dev.txt into .venv when mutmut is missing (INSTALL_DEV=1 bash install.sh), starts from an empty
# mutants/ (KEEP_MUTANTS=1 keeps mutmut's results there and retests only what changed), runs one mutmut worker per
# core (MUTMUT_CHILDREN to change), prints the counts and the kill rate (killed, timeouts included, over all
# mutants) and lists the survivors (`.venv/bin/mutmut show NAME` prints one's diff). Exits 1 below 90 %.
# docs/mutation.md records the last run and why each survivor is left.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
if [[ ! -x .venv/bin/python ]]; then
  echo "mutation_test.sh: no .venv: run bash install.sh first" >&2
  exit 2
fi
if [[ ! -x .venv/bin/mutmut ]]; then
  INSTALL_DEV=1 bash install.sh
fi
# mutmut runs the tests inside mutants/ with the mutated package first on sys.path: nothing may point at the
# original one. One torch thread per worker: the workers share the cores.
unset PYTHONPATH
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 OMP_NUM_THREADS=1
if [[ "${KEEP_MUTANTS:-0}" != "1" ]]; then rm -rf mutants; fi
log="$(mktemp)"
start=$SECONDS
.venv/bin/mutmut run --max-children "${MUTMUT_CHILDREN:-$(nproc)}" > "$log" 2>&1 || {
  tail -c 4000 "$log" | tr '\r' '\n' >&2
  exit 2
}
mv "$log" mutants/run.log  # mutmut's progress output
echo "mutation_test.sh: mutmut ran in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
.venv/bin/mutmut results --all true > mutants/results.txt
.venv/bin/python - <<'PY'
import collections
import sys

status = dict(line.strip().rsplit(": ", 1) for line in open("mutants/results.txt") if line.strip())
counts = collections.Counter(status.values())
killed = counts["killed"] + counts["timeout"]
print("  ".join(f"{name} {counts[name]}" for name in ("killed", "survived", "timeout", "suspicious", "no tests"))
      + "".join(f"  {name} {n}" for name, n in sorted(counts.items())
                if name not in ("killed", "survived", "timeout", "suspicious", "no tests"))
      + f"  total {len(status)}")
rate = killed / len(status) if status else 0.0
print(f"kill rate (killed + timeout) / total = {killed}/{len(status)} = {100 * rate:.1f} %")
left = sorted((name for name, verdict in status.items() if verdict not in ("killed", "timeout")),
              key=lambda name: (name.rsplit("__mutmut_", 1)[0], int(name.rsplit("__mutmut_", 1)[1])))
print(f"not killed ({len(left)}):" if left else "not killed: none")
for name in left:
    print(f"  {name}: {status[name]}")
sys.exit(0 if rate >= 0.9 else 1)
PY

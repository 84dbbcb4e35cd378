"""``python tools/compare_runs.py ...`` is ``minillm-compare-runs ...``: the command line lives in the package
(minillm/cli/compare_runs.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.compare_runs import main

if __name__ == "__main__":
    raise SystemExit(main())

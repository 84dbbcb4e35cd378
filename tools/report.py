"""``python tools/report.py ...`` is ``minillm-report ...``: the command line lives in the package
(minillm/cli/report.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.report import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python tools/make_synthetic_nli.py ...`` is ``minillm-make-synthetic-nli ...``: the command line lives in the package
(minillm/cli/make_synthetic_nli.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.make_synthetic_nli import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python tools/make_dolly_sample.py ...`` is ``minillm-make-dolly-sample ...``: the command line lives in the package
(minillm/cli/make_dolly_sample.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.make_dolly_sample import main

if __name__ == "__main__":
    raise SystemExit(main())

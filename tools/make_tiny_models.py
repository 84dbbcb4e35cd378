"""``python tools/make_tiny_models.py ...`` is ``minillm-make-tiny-models ...``: the command line lives in the package
(minillm/cli/make_tiny_models.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.make_tiny_models import main

if __name__ == "__main__":
    raise SystemExit(main())

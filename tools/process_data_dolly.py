"""``python tools/process_data_dolly.py ...`` is ``minillm-process-dolly ...``: the command line lives in the package
(minillm/cli/process_data_dolly.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.process_data_dolly import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python tools/process_data_anli.py ...`` is ``minillm-process-anli ...``: the command line lives in the package
(minillm/cli/process_data_anli.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.process_data_anli import main

if __name__ == "__main__":
    raise SystemExit(main())

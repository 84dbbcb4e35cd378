"""``python tools/process_pseudo_data_seqkd.py ...`` is ``minillm-process-seqkd ...``: the command line lives in the package
(minillm/cli/process_pseudo_data_seqkd.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.process_pseudo_data_seqkd import main

if __name__ == "__main__":
    raise SystemExit(main())

"""``python tools/process_data_pretrain.py ...`` is ``minillm-process-pretrain ...``: the command line lives in the package
(minillm/cli/process_data_pretrain.py); this file keeps the path the recipes and the documentation use."""

from minillm.cli.process_data_pretrain import main

if __name__ == "__main__":
    raise SystemExit(main())

"""The DeepSpeed entrypoint: ``python -m minillm.finetune [flags]`` for one process, or under a launcher
(``torchrun [flags] --module minillm.finetune ...``, ``deepspeed [flags] --module minillm.finetune ...``).

The t5-scripts call it through ``launch_training`` in ``t5-scripts/common.sh``, which picks the launcher.
``--help`` lists every flag (see :mod:`minillm.engine.config`).

Exit status: 0 trained; 2 bad input (one line naming the flag or file); 3 stopped by ``--max-nonfinite-steps``
non-finite steps in a row (:mod:`minillm.engine.nonfinite`; last/ keeps the last periodic checkpoint); 4 a
collective failed because another rank was lost (the line names it: :mod:`minillm.engine.distributed`).
"""

from __future__ import annotations

import os
import sys

from .engine.config import parse_config
from .engine.distributed import barrier, lost_rank_report, stop_heartbeat
from .engine.nonfinite import NonFiniteSteps


def main(argv=None) -> int:
    config = parse_config(argv)
    group_broken = False
    try:
        config.validate()
        from .engine.trainer import train

        train(config)
        # Every rank has finished its last collective before any rank tears its connections down: a rank that
        # destroyed its group while a peer was still leaving the final checkpoint barrier was seen to abort the
        # peer at exit ("terminate called without an active exception", two-process ZeRO-3 under load).
        barrier()
    except (ValueError, FileNotFoundError) as e:
        print(f"finetune: error: {e}", file=sys.stderr)
        return 2
    except NonFiniteSteps as e:  # every rank stops at the same step; one says why
        if os.environ.get("RANK", "0") == "0":
            print(f"finetune: error: {e}", file=sys.stderr)
        return 3
    except RuntimeError as e:  # gloo's failed collectives are RuntimeErrors, NCCL's DistBackendError one too
        report = lost_rank_report(e)
        if report is None:
            raise
        print(f"finetune: error: {report}", file=sys.stderr)
        group_broken = True
        return 4
    finally:
        stop_heartbeat()
        # Shut the process group down before the interpreter exits, not in the exit-time destructors; a group
        # that lost a rank is left alone (tearing down its connections can wait on the lost peer). DeepSpeed, which
        # started it, also forgets the groups it derived from it, so that a later run in this process starts anew.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and not group_broken:
            import deepspeed.comm

            deepspeed.comm.destroy_process_group()
    return 0

if __name__ == "__main__":
    status = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Every output is written, renamed into place and the process group destroyed; what is left is the
        # interpreter's teardown, where a C++ communication or DeepSpeed thread still joinable at destruction has
        # aborted a finished two-process ZeRO-3 run ("terminate called without an active exception", SIGABRT,
        # rarely and only under load, even after the final barrier). Leave without those destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(status)
    sys.exit(status)

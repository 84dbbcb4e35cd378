"""Test-only fault injection: a real SIGKILL at a named point of a run, so that the fault tests
(``tests/faults/test_kill_resume.py``) kill a run exactly where they mean to instead of racing it.

``MINILLM_FAULT_KILL_AT=POINT:N`` makes the process send SIGKILL to its own process group (as ``kill -KILL -PGID``
would) the N-th time it reaches :func:`kill_point` ``(POINT)``: with one process, the launcher with it; under torchrun,
which starts each rank in a session of its own, that rank, after which torchrun ends the others and exits 1. Unset,
as it always is outside those tests, :func:`kill_point` does nothing. The points:

- ``step``: mid optimizer step, after a micro-batch's backward (N counts micro-batches), before the optimizer steps;
- ``save``: while ``last/`` is being written (its training state is in ``last.tmp``, not yet renamed);
- ``eval``: during an evaluation, after the shared figures and before the objective's own;
- ``collect``: during a MiniLLM rollout collection, after one sampling batch;
- ``seqkd``: during SeqKD generation, after a batch's outputs are recorded (``minillm.generate_seqkd``).
"""

from __future__ import annotations

import os
import signal

ENV = "MINILLM_FAULT_KILL_AT"
_reached: dict[str, int] = {}


def kill_point(name: str) -> None:
    """SIGKILL this process group if ``MINILLM_FAULT_KILL_AT`` names ``name`` and this is its N-th time here."""
    wanted = os.environ.get(ENV)
    if not wanted:
        return
    point, _, count = wanted.partition(":")
    if point != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == int(count or "1"):
        os.killpg(os.getpgrp(), signal.SIGKILL)

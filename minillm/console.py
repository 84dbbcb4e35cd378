"""What a run shows on its terminal or in its log: library noise left out unless ``VERBOSE=1``, and progress that
suits where stderr goes.

Noise (found by running a tiny job and reading its output), which every entrypoint drops with
:func:`quiet_libraries`:

- DeepSpeed's ``Setting accelerator to CPU. If you have GPU or other accelerator, we were unable to detect it.``,
  logged (on stdout) when ``deepspeed`` is imported on a machine without a GPU;
- transformers' ``The tied weights mapping and config for this model specifies to tie ...`` at every load of a
  model whose config says ``tie_word_embeddings`` but whose checkpoint holds two different matrices (every tiny
  model, see :mod:`minillm.models.tiny`: expected and harmless);
- transformers' ``Loading weights`` and ``Writing model shards`` bars at every load and save of a model.

The two messages are dropped by a logging filter on the logger that emits them, so every other warning of either
library still shows. ``VERBOSE=1`` (any value but empty or 0) in the environment keeps all of it; the bash recipes
pass it on (``t5-scripts/common.sh``).

Progress (:func:`progress`): a tqdm bar when stderr is a terminal; otherwise (a log file, a pipe)
:class:`LineProgress`, one plain line every ``every`` units and at the end, instead of a bar redrawn with carriage
returns. Both stay silent for the first ``delay`` seconds (tqdm's meaning), so a phase that ends quickly prints
nothing.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Iterable, Iterator

# (logger, start of the message it emits that is dropped)
NOISE = (("DeepSpeed", "Setting accelerator to CPU"),
         ("transformers.modeling_utils", "The tied weights mapping and config for this model specifies to tie"))


def verbose() -> bool:
    """Whether ``VERBOSE`` asks for the libraries' own output (set, and neither empty nor 0)."""
    return os.environ.get("VERBOSE", "0") not in ("", "0")


class _DropMessage(logging.Filter):
    def __init__(self, start: str):
        super().__init__()
        self.start = start

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.start)


_FILTERS = {name: _DropMessage(start) for name, start in NOISE}


def quiet_libraries() -> None:
    """Drop the noise listed in the module docstring, unless :func:`verbose`. Call it before ``deepspeed`` is
    imported (its accelerator message comes at import); calling it again changes nothing."""
    if verbose():
        return
    for name, drop in _FILTERS.items():
        logging.getLogger(name).addFilter(drop)  # a filter already there is not added twice
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()


def _clock_text(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class LineProgress:
    """A progress report for a stream that is not a terminal: one line (``desc: n/total unit (p%), elapsed, rate,
    time left, postfix``) each time the count passes a multiple of ``every``, and one at :meth:`close` unless the
    last line already showed the final count or nothing was counted; nothing before ``delay`` seconds have passed. The interface is the
    part of tqdm's that the callers use (``update``, ``set_postfix``, ``close``, a context manager)."""

    def __init__(self, total: int, desc: str, every: int, initial: int = 0, unit: str = "it", delay: float = 0.0,
                 stream=None, clock=time.monotonic):
        self.total, self.desc, self.every, self.n, self.unit = total, desc, max(1, every), initial, unit
        self.delay, self.stream, self.clock = delay, stream, clock
        self.start = clock()
        self.initial = initial
        self.printed = None  # the count the last line showed
        self.postfix = ""

    def update(self, n: int = 1) -> None:
        before, self.n = self.n, self.n + n
        if self.n // self.every > before // self.every:
            self._line()

    def set_postfix(self, **values) -> None:
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        if self.printed != self.n and self.n > self.initial:
            self._line()

    def _line(self) -> None:
        elapsed = self.clock() - self.start
        if elapsed < self.delay:
            return
        done = self.n - self.initial
        parts = [f"{self.desc}: {self.n}/{self.total} {self.unit} ({100 * self.n / max(self.total, 1):.0f}%)",
                 f"{_clock_text(elapsed)} elapsed"]
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            parts.append(f"{rate:.3g} {self.unit}/s")
            if self.n < self.total:
                parts.append(f"{_clock_text((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        print(", ".join(parts), file=self.stream or sys.stderr, flush=True)
        self.printed = self.n

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress:
    """What a process other than the one that reports gets: the same calls, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **values) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> "_NoProgress":
        return self

    def __exit__(self, *exc) -> None:
        pass


def progress(total: int, desc: str, enabled: bool = True, initial: int = 0, unit: str = "it",
             every: int | None = None, delay: float = 0.0, nested: bool = False, stream=None):
    """Progress over ``total`` units on ``stream`` (stderr): a tqdm bar if it is a terminal, else a
    :class:`LineProgress` with a line every ``every`` units (default a twentieth of the total). ``enabled`` False
    (a process that does not report): an object that does nothing. ``nested``: a bar shown inside another one
    (an evaluation during training), which tqdm clears when it ends."""
    if not enabled:
        return _NoProgress()
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc=desc, unit=unit, delay=delay, leave=not nested, file=stream,
                    dynamic_ncols=True)
    every = every or max(1, math.ceil(total / 20))
    return LineProgress(total, desc, every, initial=initial, unit=unit, delay=delay, stream=stream)


def with_progress(items: Iterable, report) -> Iterator:
    """``items`` one by one, counting each on ``report`` (a :func:`progress` object) once the caller has finished
    with it, and closing ``report`` after the last."""
    try:
        for item in items:
            yield item
            report.update(1)
    finally:
        report.close()

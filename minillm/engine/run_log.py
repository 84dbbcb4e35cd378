"""What a run reports: ``metrics.jsonl`` (one JSON object per line), TensorBoard events, and printed lines.

Only rank 0 writes. A checkpoint records how many lines ``metrics.jsonl`` held when it was saved (``log_lines``);
on resume the lines after those (written after the checkpoint by the interrupted run: metric lines of later steps, a
rollout collection logged at the checkpoint's own step) are dropped, and TensorBoard purges its events past the
resumed step, so that both read as one uninterrupted run.

TensorBoard gets every number of a record, nested dicts included: ``{"loss": ..}`` under ``prefix/loss``,
``{"label_share_rank": {"neutral": ..}}`` under ``prefix/label_share_rank/neutral``. A dict under a key of
:data:`GROUPING_KEYS` holds named groups and adds no level of its own: an evaluation record's
``{"rounds": {"r1": {"ece": ..}}}`` is ``eval/r1/ece``. Lists (confusion matrices), strings and None are not logged.
Each ``metrics.jsonl`` line says what it is under ``kind``, the prefix of its TensorBoard tags: ``train`` (a metric
line of the optimizer steps since the last one), ``eval`` (an evaluation on the dev split) or ``rollout`` (a
MiniLLM rollout collection).

The run's settings go to TensorBoard twice: as text (``config``) when it starts, so that a run that dies still
says how it was configured, and, when it ends, in the HParams tab with its final dev figures
(:meth:`RunLog.write_hparams`), so that runs can be compared there.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

GROUPING_KEYS = ("rounds",)


def hparam_value(value):
    """A setting as TensorBoard's HParams tab takes it (a bool, number or string): lists and None as JSON text."""
    return value if isinstance(value, (bool, int, float, str)) else json.dumps(value, default=str)


def scalar_tags(record: dict, prefix: str) -> Iterator[tuple[str, float]]:
    """``(tag, value)`` of every int, float or bool in ``record`` and its nested dicts (module docstring)."""
    for key, value in record.items():
        if isinstance(value, dict):
            yield from scalar_tags(value, prefix if key in GROUPING_KEYS else f"{prefix}/{key}")
        elif isinstance(value, (int, float)):
            yield f"{prefix}/{key}", value


class RunLog:
    def __init__(self, save_dir: Path, enabled: bool, resumed_step: int | None = None,
                 resumed_lines: int | None = None):
        """``resumed_step`` and ``resumed_lines``: the step and the ``metrics.jsonl`` line count of the checkpoint a
        resumed run starts from (``resumed_lines`` None for checkpoints that predate it: lines are then kept up to
        ``resumed_step``)."""
        self.enabled = enabled
        self.path = save_dir / "metrics.jsonl"
        self.writer = None
        self.lines = 0
        if not enabled:
            return
        if resumed_step is not None and self.path.is_file():
            lines = [line for line in self.path.read_text().splitlines() if line]
            kept = lines[:resumed_lines] if resumed_lines is not None else [
                line for line in lines if json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))
            self.lines = len(kept)
        from torch.utils.tensorboard import SummaryWriter

        purge = None if resumed_step is None else resumed_step + 1  # drops events of steps > resumed_step
        self.writer = SummaryWriter(str(save_dir / "tensorboard"), purge_step=purge)

    def write(self, record: dict, prefix: str) -> None:
        """Append ``record`` (which has a ``step``), with ``kind`` ``prefix``, to ``metrics.jsonl``, and its numbers,
        nested ones included, to TensorBoard under ``prefix/`` (:func:`scalar_tags`)."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"kind": prefix, **record}) + "\n")
        self.lines += 1
        step = record["step"]
        for tag, value in scalar_tags({k: v for k, v in record.items() if k != "step"}, prefix):
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def write_config(self, settings: dict, step: int) -> None:
        """The run's settings as a JSON block under the TensorBoard text tag ``config``."""
        if self.enabled:
            text = json.dumps(settings, indent=1, default=str)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "), step)  # indented: Markdown code
            self.writer.flush()

    def write_hparams(self, settings: dict, figures: dict, step: int) -> None:
        """``settings`` (each value through :func:`hparam_value`) and ``figures`` (name -> number, logged as
        ``hparams/<name>``) in TensorBoard's HParams tab, at ``step``."""
        if not self.enabled:
            return
        from torch.utils.tensorboard.summary import hparams

        metrics = {f"hparams/{name}": value for name, value in figures.items()}
        for summary in hparams({k: hparam_value(v) for k, v in settings.items()}, metrics):
            self.writer.file_writer.add_summary(summary, step)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, step)
        self.writer.flush()

    def print(self, line: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(line)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

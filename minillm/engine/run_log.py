"""What a run reports: ``metrics.jsonl`` (one JSON object per line), TensorBoard events, and printed lines.

Only rank 0 writes. A checkpoint records how many lines ``metrics.jsonl`` held when it was saved (``log_lines``);
on resume the lines after those (written after the checkpoint by the interrupted run: metric lines of later steps, a
rollout collection logged at the checkpoint's own step) are dropped, and TensorBoard purges its events past the
resumed step, so that both read as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path


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
        """Append ``record`` (which has a ``step``) and its scalar fields to TensorBoard under ``prefix/``."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.lines += 1
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and value is not None:
                self.writer.add_scalar(f"{prefix}/{key}", value, record["step"])
        self.writer.flush()

    def print(self, line: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(line)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

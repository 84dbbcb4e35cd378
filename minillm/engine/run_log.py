"""What a run reports: ``metrics.jsonl`` (one JSON object per line), TensorBoard events, and printed lines.

Only rank 0 writes. On resume, lines past the resumed step (written after the last checkpoint by the interrupted
run) are dropped so that ``metrics.jsonl`` reads as one uninterrupted run.
"""

from __future__ import annotations

import json
from pathlib import Path


class RunLog:
    def __init__(self, save_dir: Path, enabled: bool, resumed_step: int | None = None):
        self.enabled = enabled
        self.path = save_dir / "metrics.jsonl"
        self.writer = None
        if not enabled:
            return
        if resumed_step is not None and self.path.is_file():
            kept = [line for line in self.path.read_text().splitlines()
                    if line and json.loads(line)["step"] <= resumed_step]
            self.path.write_text("".join(line + "\n" for line in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(save_dir / "tensorboard"))

    def write(self, record: dict, prefix: str) -> None:
        """Append ``record`` (which has a ``step``) and its scalar fields to TensorBoard under ``prefix/``."""
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
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

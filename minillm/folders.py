"""Publishing a folder built under a temporary name, so that readers never see it half-written."""

from __future__ import annotations

import os
import shutil
from pathlib import Path


def replace_folder(staging: Path, final: Path) -> None:
    """Move the complete folder ``staging`` to ``final`` (same file system). The previous ``final`` is renamed to
    ``final.old`` first and removed last, so a crash at any point leaves a complete folder as ``final`` or
    ``final.old`` (:func:`minillm.engine.checkpoint.find_checkpoint` looks for both), never a half-written one."""
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)

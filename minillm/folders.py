"""Publishing a folder built under a temporary name, so that readers never see it half-written, and the manifest
that tells a whole folder from a torn one.

The manifest (``MANIFEST.json``) is written last, once every other file is in the folder: each file's relative path,
size in bytes and SHA-256. A folder is whole when its manifest is there and every file it lists has that size and
digest; a file missing, truncated, extended or with a flipped byte shows up as such (:func:`manifest_problem`).
Cost: one read of every file when the manifest is written and again when it is checked, SHA-256 at ~1.7 GB/s on a
CPU with SHA extensions (a 34 GB ``last/`` of flan-t5-xl with its optimizer state: ~20 s each way, plus the disk
read when the files are no longer in the page cache). The manifest guards against torn and corrupted files, not
against someone who can rewrite the folder: they can rewrite its manifest too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

MANIFEST = "MANIFEST.json"
MANIFEST_FORMAT = 1
_CHUNK = 16 << 20


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record every file under ``folder`` (size and SHA-256) in ``folder/MANIFEST.json``: call it when the folder is
    otherwise complete. The manifest itself appears whole or not at all (temporary name, then a rename)."""
    folder = Path(folder)
    files = {path.relative_to(folder).as_posix(): {"size": path.stat().st_size, "sha256": sha256_of(path)}
             for path in sorted(folder.rglob("*")) if path.is_file() and path.name != MANIFEST}
    staging = folder / f"{MANIFEST}.tmp"
    staging.write_text(json.dumps({"format": MANIFEST_FORMAT, "files": files}, indent=1) + "\n")
    os.replace(staging, folder / MANIFEST)


def has_manifest(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def manifest_problem(folder: Path, skip: tuple[str, ...] = ()) -> str | None:
    """Why ``folder`` is not whole, in a clause ("model.safetensors has 120 bytes, the manifest records 4096"), or
    None when it is. Files under the subfolders named in ``skip`` are not checked (a model loaded from ``last/``
    reads none of its ``training_state/``). Sizes are compared first, for every file, so that a torn folder is
    told apart without hashing it."""
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        return f"no {MANIFEST} (the folder was not written to the end)"
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{MANIFEST} cannot be read ({type(err).__name__}: {err})"
    checked = {name: entry for name, entry in files.items() if name.split("/")[0] not in skip}
    for name, entry in checked.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != entry["size"]:
            return f"{name} has {size} bytes, the manifest records {entry['size']}"
    for name, entry in checked.items():
        if sha256_of(folder / name) != entry["sha256"]:
            return f"{name} does not match its SHA-256 in the manifest (corrupted; same size)"
    return None


def replace_folder(staging: Path, final: Path, previous: Path | None = None) -> None:
    """Move the complete folder ``staging`` to ``final`` (same file system). The current ``final`` is renamed to
    ``final.old`` first and removed last, so a crash at any point leaves a complete folder as ``final`` or
    ``final.old`` (:func:`minillm.engine.checkpoint.find_checkpoint` looks for both), never a half-written one.

    With ``previous``, the current ``final`` is kept there instead of removed (an older ``previous`` is moved to
    ``previous.old`` first and removed last): the two newest complete folders are kept at every moment."""
    if previous is None:
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        os.replace(staging, final)
        shutil.rmtree(old, ignore_errors=True)
        return
    discarded = previous.with_name(previous.name + ".old")
    shutil.rmtree(discarded, ignore_errors=True)
    if previous.exists() and final.exists():
        previous.rename(discarded)
    if final.exists():
        final.rename(previous)
    os.replace(staging, final)
    shutil.rmtree(discarded, ignore_errors=True)

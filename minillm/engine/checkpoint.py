"""Checkpoint folders: complete Hugging Face folders, written atomically, with the training state inside ``last/``.

Layout of ``SAVE_DIR/{best,last}/``: ``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer files, ``args.json`` (the run configuration), ``metrics.json`` (the evaluation at that step, if any),
``trainer_state.json``; ``last/`` also holds ``training_state/`` (DeepSpeed's model, optimizer and scheduler
state, one RNG file per rank and, where the batch source needs one, one ``source_rank{rank}.pt`` file per rank:
MiniLLM's rollouts in use mid-collection), which is what ``--resume`` needs.

Atomicity: everything is written into ``NAME.tmp``, and ``MANIFEST.json`` (every file's size and SHA-256,
:mod:`minillm.folders`) last; then ``NAME`` becomes ``NAME.old``, ``NAME.tmp`` becomes ``NAME``, and ``NAME.old``
is removed. A crash at any point leaves either the previous complete folder (as ``NAME`` or ``NAME.old``) or the
new one, never a half-written ``NAME``. ``last/`` keeps the checkpoint it replaced as ``last.prev/`` (twice the disk
of one ``last/``): when ``last/`` is torn or corrupted afterwards (a file missing, truncated or with a flipped byte:
it no longer matches its manifest), :func:`find_checkpoint` says so and resumes from ``last.prev/``. A write that
fails for want of room (full disk, file-size limit) removes ``NAME.tmp`` and is one :class:`CheckpointError` line;
the earlier checkpoints stay as they were.

Nothing here unpickles code: the RNG files hold tensors and plain values and load with ``weights_only=True``, and
DeepSpeed's state files are loaded with ``weights_only=True`` too (:func:`_deepspeed_loads_weights_only`).
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import pickle
import random
import resource
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..faults import kill_point
from ..folders import manifest_problem, replace_folder, write_manifest
from .distributed import barrier

STATE_TAG = "state"


def _rng_state() -> dict:
    """Every generator's state as tensors, ints and tuples only, so that it loads with ``weights_only=True``
    (numpy's key array as an int64 tensor: a pickled ndarray would need numpy's reconstructor allowed)."""
    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached_gaussian)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    kind, keys, position, has_gauss, cached_gaussian = state["numpy"]
    random.setstate(state["python"])
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached_gaussian))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read as it is: one line for the user (the entrypoints report
    ValueErrors that way)."""


# errno of a write refused for want of room: no space, file-size limit (RLIMIT_FSIZE, with SIGXFSZ ignored), quota
_NO_ROOM = {errno.ENOSPC: "the disk is full", errno.EFBIG: "a file-size limit was hit",
            errno.EDQUOT: "the disk quota is used up"}
_FULL_DISK_BYTES = 1 << 20  # free space below this after a failed write: the write failed for want of it


def _no_room(err: BaseException, staging: Path) -> str | None:
    """Why a checkpoint write failed for want of room (a clause), or None when it did not. The errno, where the
    error keeps one (Python's own writes, safetensors' message); else what the failure left: torch.save's C++ writer
    reports only "iostream error", after it has written a file up to the size limit (RLIMIT_FSIZE) or filled the
    file system."""
    cause = err
    while cause is not None:
        for code, clause in _NO_ROOM.items():
            if (isinstance(cause, OSError) and cause.errno == code) or os.strerror(code) in str(cause):
                return clause
        cause = cause.__cause__ or cause.__context__
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY:
        full = next((p for p in staging.rglob("*") if p.is_file() and p.stat().st_size >= limit), None)
        if full is not None:
            return f"the file-size limit (RLIMIT_FSIZE, {limit} bytes) was hit by {full.relative_to(staging)}"
    free = shutil.disk_usage(staging.parent).free
    if free < _FULL_DISK_BYTES:
        return f"the disk is full ({free} bytes free)"
    return None


def _first_line(err: BaseException) -> str:
    return (str(err).strip() or type(err).__name__).splitlines()[0]


def save_checkpoint(engine, tokenizer, folder: Path, *, args: dict, trainer_state: dict, metrics: dict | None,
                    with_training_state: bool, source_state: dict | None = None) -> None:
    """Write ``folder`` atomically. A collective: every rank calls it. ``source_state``: this rank's tensors that
    its batch source needs to go on from this step (:func:`load_source_state`), kept with the training state."""
    rank = dist.get_rank()
    tmp = folder.with_name(folder.name + ".tmp")
    try:
        if rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        barrier()
        if with_training_state:
            engine.save_checkpoint(str(tmp / "training_state"), tag=STATE_TAG, save_latest=False)
            torch.save(_rng_state(), tmp / "training_state" / f"rng_rank{rank}.pt")
            if source_state is not None:
                torch.save(source_state, tmp / "training_state" / f"source_rank{rank}.pt")
            kill_point("save")
        if engine.zero_optimization_partition_weights():  # ZeRO-3: gather the shards (collective), rank 0 receives
            state_dict = engine._zero3_consolidated_16bit_state_dict()
        else:
            state_dict = engine.module.state_dict() if rank == 0 else None
        if rank == 0:
            engine.module.save_pretrained(tmp, state_dict=state_dict)
            tokenizer.save_pretrained(tmp)
            _write_json(tmp / "args.json", args)
            _write_json(tmp / "trainer_state.json", trainer_state)
            if metrics is not None:
                _write_json(tmp / "metrics.json", metrics)
        barrier()  # every rank's files (its RNG state) are in NAME.tmp before the manifest lists them
        if rank == 0:
            write_manifest(tmp)  # last: NAME.tmp is complete from here on
    except Exception as err:
        # A full disk or a file-size limit: NAME and NAME.prev are untouched, NAME.tmp goes. Any other error is
        # not ours to explain and keeps its traceback.
        no_room = _no_room(err, tmp)
        shutil.rmtree(tmp, ignore_errors=True)
        if no_room is None:
            raise
        kept = [str(c) for c in (folder, previous_of(folder)) if c.is_dir()]
        raise CheckpointError(f"checkpoint {folder}: writing {tmp} failed: {no_room} ({_first_line(err)}); "
                              f"{tmp.name} removed, "
                              f"{' and '.join(kept) + ' as they were' if kept else f'no earlier {folder.name}'}; "
                              "make room (or raise the limit), then run again with --resume") from None
    if rank == 0:
        # last/ keeps its predecessor as last.prev/, the complete checkpoint --resume falls back on
        replace_folder(tmp, folder, previous_of(folder) if with_training_state else None)
    barrier()


def previous_of(folder: Path) -> Path:
    """Where ``save_checkpoint`` keeps the checkpoint that ``folder`` (``last/``) replaced: ``last.prev/``."""
    return folder.with_name(folder.name + ".prev")


def find_checkpoint(folder: Path) -> Path | None:
    """The newest whole checkpoint among ``folder``, the ``.old`` copy a crash mid-swap leaves behind, and the
    previous checkpoint (:func:`previous_of`); None if there is none. Whole: its manifest is there and every file
    matches it (:func:`minillm.folders.manifest_problem`). Candidates skipped are said in one line on stderr, with
    why and what is resumed instead. A ``folder`` skipped for an older checkpoint is moved aside to
    ``NAME.skipped/`` (kept for inspection): left in place, the next save would keep it as the previous checkpoint
    and drop the whole one resumed from. Every rank gets rank 0's choice (rank 0 alone reads the files)."""
    choice = [None]
    if not dist.is_initialized() or dist.get_rank() == 0:
        skipped = []
        for candidate in (folder, folder.with_name(folder.name + ".old"), previous_of(folder)):
            if not candidate.is_dir():
                continue
            problem = manifest_problem(candidate)
            if problem is None:
                choice[0] = str(candidate)
                break
            skipped.append(f"{candidate} ({problem})")
        if skipped:
            outcome = f"resuming from {choice[0]}" if choice[0] else "no whole checkpoint is left"
            if choice[0] is not None and folder.is_dir():
                aside = folder.with_name(folder.name + ".skipped")
                shutil.rmtree(aside, ignore_errors=True)
                folder.rename(aside)
                outcome += f" ({folder.name}/ moved to {aside.name}/)"
            print(f"resume: skipped {'; '.join(skipped)}; {outcome}", file=sys.stderr, flush=True)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(choice, src=0)
    return None if choice[0] is None else Path(choice[0])


def load_training_state(engine, folder: Path, selections: dict[str, str]) -> dict:
    """Restore model, optimizer, scheduler and this rank's RNG from ``folder/training_state``; return the trainer
    state saved with them. A collective. Refuses another process count (the data split and RNG files differ) and
    other selections (``{folder: metric}``, e.g. ``{"best": "accuracy", "best_loss": "loss"}``: a saved best
    value would be compared with a different metric)."""
    trainer_state = json.loads((folder / "trainer_state.json").read_text())
    world_size = dist.get_world_size()
    if trainer_state["world_size"] != world_size:
        raise ValueError(f"--resume {folder}: saved with {trainer_state['world_size']} processes, now {world_size}; "
                         "resume with the same NUM_GPUS x NUM_NODES")
    # checkpoints written before best_<metric>/ existed record best/'s selection alone
    trainer_state.setdefault("selections", {"best": {"select_by": trainer_state["select_by"],
                                                     "metric": trainer_state["best_metric"],
                                                     "step": trainer_state["best_step"]}})
    saved = {name: selection["select_by"] for name, selection in trainer_state["selections"].items()}
    if saved["best"] != selections["best"]:
        raise ValueError(f"--resume {folder}: best/ was selected by {saved['best']}, now --select-by "
                         f"{selections['best']}; resume with --select-by {saved['best']} or start a new SAVE_DIR")
    if saved != selections:
        also = ", ".join(name for name in saved if name != "best") or "none"
        raise ValueError(f"--resume {folder}: saved with the extra selections {also}, now "
                         f"{', '.join(name for name in selections if name != 'best') or 'none'}; resume with the "
                         "same --also-select-by or start a new SAVE_DIR")
    state_dir = folder / "training_state"
    with _deepspeed_loads_weights_only(engine):
        loaded, _ = engine.load_checkpoint(str(state_dir), tag=STATE_TAG, load_module_strict=True,
                                           load_optimizer_states=True, load_lr_scheduler_states=True)
    if loaded is None:
        raise ValueError(f"--resume {folder}: {state_dir} holds no DeepSpeed state; it cannot be resumed")
    _set_rng_state(load_rng_state(state_dir / f"rng_rank{dist.get_rank()}.pt"))
    return trainer_state


def load_rng_state(path: Path) -> dict:
    """An RNG file of :func:`save_checkpoint`, loaded with ``weights_only=True``: a file holding anything but
    tensors and plain values is a :class:`CheckpointError`, and what it holds is never run."""
    try:
        return torch.load(path, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"--resume: {path} holds objects other than tensors and plain values (a file of an "
                              "older version, or not ours); it is not unpickled: start a new run") from None


# The classes DeepSpeed's own state files hold besides tensors and plain containers (ZeRO 0-3, fp32 and bf16;
# found by loading them with weights_only=True): plain data, whose unpickling runs no code of the file's choosing.
_DEEPSPEED_STATE_CLASSES = (
    ("deepspeed.runtime.fp16.loss_scaler", "LossScaler"),
    ("deepspeed.runtime.zero.config", "ZeroStageEnum"),
    ("deepspeed.utils.tensor_fragment", "fragment_address"),
)


@contextlib.contextmanager
def _deepspeed_loads_weights_only(engine):
    """DeepSpeed's checkpoint engine calls ``torch.load(..., weights_only=False)`` for every state file: for the
    duration of ``engine.load_checkpoint``, it loads with ``weights_only=True`` instead, allowing only
    :data:`_DEEPSPEED_STATE_CLASSES`; a file that holds anything else is refused (pickle.UnpicklingError), not run."""
    checkpoint_engine = getattr(engine, "checkpoint_engine", None)
    if checkpoint_engine is None:
        yield
        return
    allowed = [getattr(importlib.import_module(module), name) for module, name in _DEEPSPEED_STATE_CLASSES]

    def load(path, map_location=None):
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    checkpoint_engine.load = load
    try:
        yield
    finally:
        del checkpoint_engine.load  # the class's own method again


def load_source_state(folder: Path, device: torch.device) -> dict | None:
    """This rank's batch-source tensors saved in ``folder/training_state`` (``save_checkpoint``'s ``source_state``),
    on ``device``; None when the checkpoint holds none (a source whose batches follow from the step alone, or a
    step where nothing was in use)."""
    path = folder / "training_state" / f"source_rank{dist.get_rank()}.pt"
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None

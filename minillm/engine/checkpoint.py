"""Checkpoint folders: complete Hugging Face folders, written atomically, with the training state inside ``last/``.

Layout of ``SAVE_DIR/{best,last}/``: ``config.json``, ``model.safetensors``, ``generation_config.json``, the
tokenizer files, ``args.json`` (the run configuration), ``metrics.json`` (the evaluation at that step, if any),
``trainer_state.json``; ``last/`` also holds ``training_state/`` (DeepSpeed's model, optimizer and scheduler
state, one RNG file per rank and, where the batch source needs one, one ``source_rank{rank}.pt`` file per rank:
MiniLLM's rollouts in use mid-collection), which is what ``--resume`` needs.

Atomicity: everything is written into ``NAME.tmp``; then ``NAME`` becomes ``NAME.old``, ``NAME.tmp`` becomes
``NAME``, and ``NAME.old`` is removed. A crash at any point leaves either the previous complete folder (as
``NAME`` or ``NAME.old``) or the new one, never a half-written ``NAME``; :func:`find_checkpoint` knows this.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from ..faults import kill_point
from ..folders import replace_folder
from .distributed import barrier

STATE_TAG = "state"


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1) + "\n")


def save_checkpoint(engine, tokenizer, folder: Path, *, args: dict, trainer_state: dict, metrics: dict | None,
                    with_training_state: bool, source_state: dict | None = None) -> None:
    """Write ``folder`` atomically. A collective: every rank calls it. ``source_state``: this rank's tensors that
    its batch source needs to go on from this step (:func:`load_source_state`), kept with the training state."""
    rank = dist.get_rank()
    tmp = folder.with_name(folder.name + ".tmp")
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
    barrier()  # every rank's files (its RNG state) are in NAME.tmp before it is renamed
    if rank == 0:
        replace_folder(tmp, folder)
    barrier()


def find_checkpoint(folder: Path) -> Path | None:
    """``folder`` if complete, else the ``.old`` copy a crash mid-swap left behind, else None."""
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / "trainer_state.json").is_file():
            return candidate
    return None


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
    loaded, _ = engine.load_checkpoint(str(state_dir), tag=STATE_TAG, load_module_strict=True,
                                       load_optimizer_states=True, load_lr_scheduler_states=True)
    if loaded is None:
        raise ValueError(f"--resume {folder}: {state_dir} holds no DeepSpeed state; it cannot be resumed")
    _set_rng_state(torch.load(state_dir / f"rng_rank{dist.get_rank()}.pt", weights_only=False))
    return trainer_state


def load_source_state(folder: Path, device: torch.device) -> dict | None:
    """This rank's batch-source tensors saved in ``folder/training_state`` (``save_checkpoint``'s ``source_state``),
    on ``device``; None when the checkpoint holds none (a source whose batches follow from the step alone, or a
    step where nothing was in use)."""
    path = folder / "training_state" / f"source_rank{dist.get_rank()}.pt"
    return torch.load(path, map_location=device, weights_only=True) if path.is_file() else None

"""Process-group start-up and the few collectives the loop needs (NCCL on GPUs, gloo on CPU, same code)."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _skip_cpu_shared_memory_all_reduce() -> None:
    """Keep DeepSpeed from setting up its CPU shared-memory all-reduce when it starts the process group.

    DeepSpeed 0.19 creates one 69 MB ``/dev/shm/deepspeed_allreduce_buffer_*`` segment per process there and never
    unlinks it, so every CPU run leaves its segments behind until the machine reboots (hundreds of runs fill
    ``/dev/shm``, which is memory). The kernel serves only ``inference_all_reduce`` (tensor-parallel inference),
    which nothing here calls and which falls back to ``torch.distributed.all_reduce`` without it."""
    import importlib

    # by module path: the package deepspeed.comm has an attribute `torch` (the torch library) that would shadow it
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None


def init_distributed() -> tuple[int, int, int]:
    """Join the process group the launcher set up (``deepspeed``, ``torchrun``), or make a one-process group when
    the entrypoint runs as plain ``python``. Returns ``(rank, world_size, local_rank)``."""
    import deepspeed

    _skip_cpu_shared_memory_all_reduce()
    if "RANK" not in os.environ:  # plain `python -m minillm.finetune`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    deepspeed.init_distributed(verbose=False)
    return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0"))


def device_for(local_rank: int) -> torch.device:
    from deepspeed.accelerator import get_accelerator

    name = get_accelerator().device_name()
    return torch.device("cpu") if name == "cpu" else torch.device(name, local_rank)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sums over all ranks (float64, so token counts stay exact)."""
    return all_reduce_sum_(torch.tensor(values, dtype=torch.float64, device=device)).tolist()


def barrier() -> None:
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def all_reduce_sum_(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks, in place (a no-op in a world of one); returns it."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor

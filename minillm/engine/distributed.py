"""Process-group start-up and the few collectives the loop needs (NCCL on GPUs, gloo on CPU, same code), and how a
run notices that one of its processes is gone.

A lost rank. Every collective waits at most ``--collective-timeout`` seconds (the process group's timeout): with
gloo it then raises, and it raises at once when a peer's connection closes (a killed process); with NCCL, torch's
watchdog ends the process when a collective outlives the timeout (``TORCH_NCCL_ASYNC_ERROR_HANDLING``, whose default
since torch 2.2 tears the process down; it is left as it is). Either way the launcher sees a failed process and
exits non-zero. To name the rank that was lost, each process of a multi-process run bumps a counter of its own in
the rendezvous store every :data:`HEARTBEAT_INTERVAL_S` seconds from a daemon thread (:class:`Heartbeat`); a
process whose collective failed reads the counters (:meth:`Heartbeat.lost_ranks`): a peer whose counter stands still for
:data:`LOST_AFTER_S` seconds has died or stopped, while a peer merely blocked in the same collective (or in a long
computation) keeps counting. A run that fails for another reason, with every rank alive, is not reported as a lost
rank.
"""

from __future__ import annotations

import datetime
import os
import socket
import threading
import time

import torch
import torch.distributed as dist

HEARTBEAT_INTERVAL_S = 1.0
LOST_AFTER_S = 5.0  # a counter that stands still this long: its process died or stopped (no live thread is that late)


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


def init_distributed(collective_timeout: float = 600.0) -> tuple[int, int, int]:
    """Join the process group the launcher set up (``deepspeed``, ``torchrun``), or make a one-process group when
    the entrypoint runs as plain ``python``; every collective waits at most ``collective_timeout`` seconds, and in a
    multi-process run the :class:`Heartbeat` starts. Returns ``(rank, world_size, local_rank)``."""
    import deepspeed

    global _heartbeat
    _skip_cpu_shared_memory_all_reduce()
    if "RANK" not in os.environ:  # plain `python -m minillm.finetune`: a world of one
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=os.environ.get("MASTER_PORT", str(free_port())))
    timeout = datetime.timedelta(seconds=collective_timeout)
    # The groups DeepSpeed derives from the world later (its clone of the world group, which carries the gradient
    # all-reduce; ZeRO's partition groups) are made by new_group without a timeout, which falls back to these
    # module defaults (30 minutes for gloo, 10 for NCCL): they wait as long as the world group.
    import torch.distributed.distributed_c10d as c10d

    c10d.default_pg_timeout = c10d.default_pg_nccl_timeout = timeout
    deepspeed.init_distributed(verbose=False, timeout=timeout)
    rank, world_size = dist.get_rank(), dist.get_world_size()
    if world_size > 1 and _heartbeat is None:
        _heartbeat = Heartbeat(rank, world_size, os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    return rank, world_size, int(os.environ.get("LOCAL_RANK", "0"))


class Heartbeat:
    """A counter per rank in the rendezvous store (the launcher's, or rank 0's process's), bumped every
    :data:`HEARTBEAT_INTERVAL_S` seconds by a daemon thread, on a store connection of its own."""

    def __init__(self, rank: int, world_size: int, host: str, port: int):
        self.rank, self.world_size, self.address = rank, world_size, f"{host}:{port}"
        # store operations fail after LOST_AFTER_S instead of torch's 5 minutes where the store stops answering
        self.store = dist.TCPStore(host, port, is_master=False, timeout=datetime.timedelta(seconds=LOST_AFTER_S))
        self.stopped = threading.Event()
        self.store.add(self.key(rank), 1)
        self.thread = threading.Thread(target=self._beat, name="minillm-heartbeat", daemon=True)
        self.thread.start()

    @staticmethod
    def key(rank: int) -> str:
        return f"minillm/heartbeat/{rank}"

    def _beat(self) -> None:
        while not self.stopped.wait(HEARTBEAT_INTERVAL_S):
            try:
                self.store.add(self.key(self.rank), 1)
            except RuntimeError:  # the store is gone (its process ended): no one is left to read the counter
                return

    def counters(self) -> list[int]:
        return [self.store.add(self.key(rank), 0) for rank in range(self.world_size)]

    def lost_ranks(self) -> list[int]:
        """The other ranks whose counter does not move within :data:`LOST_AFTER_S` seconds (returns as soon as
        every one has moved). Raises RuntimeError when the store does not answer."""
        before = self.counters()
        deadline = time.monotonic() + LOST_AFTER_S
        while True:
            time.sleep(HEARTBEAT_INTERVAL_S / 2)
            still = [rank for rank, (was, now) in enumerate(zip(before, self.counters()))
                     if rank != self.rank and now == was]
            if not still or time.monotonic() >= deadline:
                return still

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join()


_heartbeat: Heartbeat | None = None  # this process's, in a multi-process run (the process group is per process too)


def lost_rank_report(error: BaseException) -> str | None:
    """One line naming the rank(s) this process lost, when ``error`` (a failed collective, typically) came with
    peers that stopped; None in a world of one or when every peer is still running (then ``error`` is something
    else and stands as it is)."""
    if _heartbeat is None:
        return None
    rank, world_size = _heartbeat.rank, _heartbeat.world_size
    cause = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    try:
        lost = _heartbeat.lost_ranks()
    except RuntimeError:
        return (f"rank {rank} of {world_size}: the rendezvous store at {_heartbeat.address} (kept by rank 0's "
                f"process, or by the first node's launcher) stopped answering: rank 0 or its node is lost; "
                f"the collective failed with: {cause}")
    if not lost:
        return None
    return (f"rank {rank} of {world_size}: lost rank {', '.join(map(str, lost))} (its process died or stopped "
            f"answering); the collective failed with: {cause}")


def stop_heartbeat() -> None:
    """Stop this process's heartbeat thread (at the end of a run, before the process group is destroyed)."""
    global _heartbeat
    if _heartbeat is not None:
        _heartbeat.stop()
        _heartbeat = None


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

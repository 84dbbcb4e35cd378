"""A dead rank (issue 28): when one of two training processes is killed (SIGKILL) or stops answering (SIGSTOP, as
a machine that drops off the network), the other stops within ``--collective-timeout`` plus the heartbeat's grace
(minillm/engine/distributed.py) with one line naming the lost rank, exit status 4, and its launcher exits non-zero,
instead of hanging.

The two processes are started the multi-node way, one torchrun per "node" on this machine (static rendezvous on one
master address and port), so each launcher watches only its own process and the survivor must notice the loss
itself: under a single torchrun the launcher would end the survivor first."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from minillm.engine.distributed import LOST_AFTER_S, free_port

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 4  # --collective-timeout of the test runs
MARGIN_S = 30  # start-up of nothing, but a loaded machine's slack in noticing and exiting


def start_nodes(setup: dict, save_dir: Path) -> list[subprocess.Popen]:
    """Two torchrun launchers, node ranks 0 and 1, one training process each, on the tiny student; far more steps
    than the test lets them run."""
    port = free_port()
    flags = ["--model-path", str(setup["models"] / "tiny-student"), "--data-dir", str(setup["data_dir"]),
             "--save-dir", str(save_dir), "--deepspeed-config", str(REPO / "configs" / "deepspeed" / "zero0_fp32.json"),
             "--batch-size", "4", "--max-steps", "100000", "--eval-interval", "100000", "--log-interval", "1",
             "--collective-timeout", str(TIMEOUT_S)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                              "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                              "--module", "minillm.finetune", *flags],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True) for rank in (0, 1)]


def wait_for_training(save_dir: Path, nodes: list[subprocess.Popen], step: int, within_s: float = 240) -> None:
    """Until rank 0 has logged the metric line of ``step`` (both processes are then in the training loop: every
    step all-reduces); fails early if a launcher exited."""
    deadline = time.monotonic() + within_s
    metrics = save_dir / "metrics.jsonl"
    while time.monotonic() < deadline:
        assert all(node.poll() is None for node in nodes), [node.communicate()[0][-3000:] for node in nodes]
        if metrics.is_file() and any(json.loads(line).get("step", 0) >= step and "padding" in json.loads(line)
                                     for line in metrics.read_text().splitlines()):
            return
        time.sleep(0.2)
    pytest.fail(f"no metric line of step {step} within {within_s} s")


def training_process(launcher: subprocess.Popen) -> psutil.Process:
    """The process a torchrun launcher started: ``python -u -m minillm.finetune ...`` (the launcher's own command
    line names torch.distributed.run)."""
    workers = [child for child in psutil.Process(launcher.pid).children(recursive=True)
               if "minillm.finetune" in child.cmdline() and "torch.distributed.run" not in child.cmdline()]
    assert len(workers) == 1, [child.cmdline() for child in workers]
    return workers[0]


@pytest.fixture
def nodes(tiny_setup, tmp_path):
    """``(launchers, save_dir)``; whatever is left of them is killed at the end."""
    save_dir = tmp_path / "run"
    launchers = start_nodes(tiny_setup, save_dir)
    yield launchers, save_dir
    for launcher in launchers:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()


@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_the_survivor_names_the_lost_rank_and_stops(nodes, fault):
    launchers, save_dir = nodes
    wait_for_training(save_dir, launchers, step=2)
    lost = training_process(launchers[1])
    lost.send_signal(fault)
    faulted = time.monotonic()
    output, _ = launchers[0].communicate(timeout=TIMEOUT_S + LOST_AFTER_S + MARGIN_S)
    took = time.monotonic() - faulted

    assert "finetune: error: rank 0 of 2: lost rank 1 (its process died or stopped answering); the collective " \
           "failed with:" in output, output[-3000:]
    assert launchers[0].returncode != 0 and "exitcode  : 4" in output, output[-3000:]
    assert took < TIMEOUT_S + LOST_AFTER_S + MARGIN_S
    if fault == signal.SIGSTOP:  # waited for the collective's timeout, at least, before giving up on rank 1
        assert took >= TIMEOUT_S
        assert "Timed out" in output, output[-3000:]
        lost.kill()
    assert launchers[1].wait(timeout=MARGIN_S) != 0  # the lost process's launcher reports its death too

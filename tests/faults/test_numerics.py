"""Numerical faults (issue 28): a NaN or inf in the loss or the gradient skips the optimizer step (weights, Adam
moments, step count and learning rate unchanged), is counted and logged, and ``--max-nonfinite-steps`` in a row stop
the run with one line, exit status 3 and last/ left at its last periodic save (minillm/engine/nonfinite.py).

The faults are real non-finite values in a real run of the trainer (``minillm.finetune.main`` in this process, the
tiny student on the tiny data): the run's objective is wrapped so that at chosen steps its loss gets a NaN added (a
constant: the gradient stays finite, only the loss check can catch it) or its gradient is multiplied by inf (the
loss stays finite, only the gradient check can catch it)."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSeq2SeqLM

from minillm import finetune
from minillm.engine import trainer
from minillm.engine.clipped_adamw import ClippedAdamW
from minillm.engine.distributed import free_port
from minillm.engine.nonfinite import last_backward_scale

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"


def train_records(save_dir: Path) -> list[dict]:
    """The metric lines of the training steps in ``save_dir``/metrics.jsonl."""
    lines = (save_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if "padding" in record]


def snapshot(engine) -> dict:
    """What a skipped step must leave as it was: the weights, the optimizer's state (Adam moments, step count, the
    learning rate of its groups; the fp32 masters and ZeRO's partitions where those hold the weights) and the
    learning-rate schedule. ZeRO's ``overflow``, the verdict on the last step rather than state, is left out."""
    optimizer = {key: value for key, value in engine.optimizer.state_dict().items() if key != "overflow"}
    return {"weights": {name: p.detach().clone() for name, p in engine.module.named_parameters()},
            "optimizer": copied(optimizer), "scheduler": copied(engine.lr_scheduler.state_dict())}


def copied(value):
    """A copy of ``value`` whose tensors (ZeRO's among them, views that deepcopy refuses) are detached clones."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {key: copied(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(copied(item) for item in value)
    return copy.deepcopy(value)


def assert_same(a, b, where="") -> None:
    """``a`` and ``b`` equal bit for bit, through nested dicts, lists, tuples and objects' attributes."""
    assert type(a) is type(b), where
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}/{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}/{i}")
    elif hasattr(a, "__dict__"):  # DeepSpeed's loss scaler: equal attributes
        assert_same(vars(a), vars(b), where)
    else:
        assert a == b, where


class Poisoned:
    """The run's objective with a non-finite value at chosen optimizer steps (0-based; one micro-batch per step):
    ``poison[step]`` is "nan-loss" (NaN added to the loss, a constant, so the gradient stays finite) or "inf-grad"
    (the loss as it is, its gradient times inf). Keeps a :func:`snapshot` of the engine before every step."""

    def __init__(self, objective, poison: dict[int, str]):
        self.objective, self.poison, self.before_step = objective, poison, []

    def __getattr__(self, name):
        return getattr(self.objective, name)

    def __call__(self, engine, batch):
        step = len(self.before_step)
        self.before_step.append(snapshot(engine))
        output = self.objective(engine, batch)
        kind = self.poison.get(step)
        if kind is None:
            return output
        if kind == "nan-loss":
            return dataclasses.replace(output, loss_sum=output.loss_sum + float("nan"))
        loss = output.loss_sum * 1.0
        loss.register_hook(lambda grad: grad * float("inf"))
        return dataclasses.replace(output, loss_sum=loss)


@pytest.fixture
def poisoned_run(tiny_setup, tmp_path, monkeypatch):
    """``run(poison, ds_config, *flags)``: ``minillm.finetune.main`` on the tiny student in this process, a world of
    one, with the objective :class:`Poisoned`; returns (exit status, the Poisoned objective, save folder)."""
    for name, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                            MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(name, value)  # the process group of this test only (finetune destroys it at the end)
    wrapped = []

    def build_poisoned(*args, **kwargs):
        wrapped.append(Poisoned(build_objective(*args, **kwargs), poison))
        return wrapped[-1]

    build_objective = trainer.build_objective
    monkeypatch.setattr(trainer, "build_objective", build_poisoned)
    poison = {}

    def run(steps: dict[int, str], ds_config: str, *flags: str):
        poison.update(steps)
        save_dir = tmp_path / "run"
        status = finetune.main(
            ["--model-path", str(tiny_setup["models"] / "tiny-student"), "--data-dir", str(tiny_setup["data_dir"]),
             "--save-dir", str(save_dir), "--deepspeed-config", str(CONFIGS / ds_config), "--batch-size", "4",
             "--lr", "1e-3", "--warmup-steps", "10", "--log-interval", "1", "--eval-interval", "100",
             "--eval-rounds", "r1", "--eval-max-examples", "4", "--no-eval-generate", *flags])
        return status, wrapped[0], save_dir

    return run


@pytest.mark.parametrize("ds_config, kind", [("zero0_fp32.json", "nan-loss"), ("zero0_fp32.json", "inf-grad"),
                                              ("zero0_bf16.json", "inf-grad"), ("zero1_fp32.json", "nan-loss")])
def test_a_nonfinite_step_is_skipped_counted_and_logged(poisoned_run, capsys, ds_config, kind):
    """Step 3 of 4 poisoned: weights, optimizer state and schedule after it are those before it, bit for bit; step 4
    updates again at the rate step 3 would have used; the metric lines, the printed lines and last/'s trainer state
    count the skipped step."""
    status, objective, save_dir = poisoned_run({2: kind}, ds_config, "--max-steps", "4")
    assert status == 0
    before = objective.before_step  # before steps 1, 2, 3, 4 (1-based)
    assert_same(before[2], before[3])  # step 3 skipped
    assert not torch.equal(before[1]["weights"]["lm_head.weight"], before[2]["weights"]["lm_head.weight"])
    after = load_file(str(save_dir / "last" / "model.safetensors"))
    assert not torch.equal(after["lm_head.weight"], before[3]["weights"]["lm_head.weight"].to(after["lm_head.weight"].dtype))

    records = train_records(save_dir)
    assert [(r["step"], r["skipped_steps"]) for r in records] == [(1, 0), (2, 0), (3, 1), (4, 0)]
    assert records[2]["loss"] is None and all(math.isfinite(records[i]["loss"]) for i in (0, 1, 3))
    # warmup over 10 steps: the rate rises by lr/10 per applied update and stands still over the skipped one
    assert [round(r["lr"] / 1e-4, 6) for r in records] == [1, 2, 3, 3]
    out = capsys.readouterr().out
    cause = "non-finite loss on 1 rank(s)" if kind == "nan-loss" else "non-finite gradient (norm "
    assert f"train: step 3: {cause}" in out and "1 in a row, 1 in all; 10 in a row stop the run" in out
    assert "train: 1 of 4 optimizer steps were skipped for a non-finite loss or gradient" in out
    assert json.loads((save_dir / "last" / "trainer_state.json").read_text())["skipped_steps"] == 1


def test_too_many_nonfinite_steps_in_a_row_stop_with_last_intact(poisoned_run, capsys):
    """--max-nonfinite-steps 2: steps 3 and 4 poisoned stop the run at step 4 with one line and status 3, before
    that step's checkpoint; last/ is the periodic save of step 2, loadable, and holds the weights the run had."""
    status, objective, save_dir = poisoned_run({2: "nan-loss", 3: "inf-grad"}, "zero0_fp32.json", "--max-steps", "8",
                                               "--save-interval", "2", "--max-nonfinite-steps", "2")
    assert status == 3
    err = capsys.readouterr().err
    assert (f"finetune: error: stopped at step 4: 2 optimizer steps in a row (steps 3-4) had a non-finite loss or "
            f"gradient and were skipped (--max-nonfinite-steps 2); {save_dir / 'last'} (step 2) is the last "
            "checkpoint, written after an applied update") in err
    assert len(objective.before_step) == 4  # nothing ran after step 4
    assert json.loads((save_dir / "last" / "trainer_state.json").read_text())["step"] == 2
    saved = AutoModelForSeq2SeqLM.from_pretrained(save_dir / "last")
    for name, value in saved.state_dict().items():
        if name in objective.before_step[2]["weights"]:
            assert torch.equal(value, objective.before_step[2]["weights"][name]), name
    records = train_records(save_dir)
    assert [(r["step"], r["skipped_steps"]) for r in records] == [(1, 0), (2, 0), (3, 1), (4, 1)]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_clipped_adamw_leaves_weights_and_moments_on_a_nonfinite_gradient(bad):
    """The fp32 optimizer alone: a gradient with one NaN or inf element leaves parameters and state bit for bit and
    sets ``overflow``; the next finite gradient updates again."""
    weight = torch.nn.Parameter(torch.arange(6, dtype=torch.float32).reshape(2, 3))
    optimizer = ClippedAdamW([{"params": [weight], "weight_decay": 0.0}], lr=0.1, betas=(0.9, 0.999), eps=1e-8,
                             max_grad_norm=1.0)
    weight.grad = torch.ones(2, 3)
    optimizer.step()
    kept_weight, kept_state = weight.detach().clone(), copied(optimizer.state_dict())
    weight.grad = torch.ones(2, 3)
    weight.grad[1, 2] = bad
    optimizer.step()
    assert optimizer.overflow and torch.equal(weight.detach(), kept_weight)
    assert_same(optimizer.state_dict(), kept_state)
    weight.grad = torch.ones(2, 3)
    optimizer.step()
    assert not optimizer.overflow and not torch.equal(weight.detach(), kept_weight)
    assert int(optimizer.state_dict()["state"][0]["step"]) == 2


def _last_backward_scale_on_two_ranks(rank, rendezvous, folder):
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=2)
    one_nan = last_backward_scale(torch.tensor(float("nan") if rank == 1 else 2.5), 0.5)  # rank 1's loss only
    all_finite = last_backward_scale(torch.tensor(2.5 + rank), 0.5)
    torch.save({"one_nan": one_nan, "all_finite": all_finite}, Path(folder) / f"rank{rank}.pt")
    torch.distributed.destroy_process_group()
    os._exit(0)  # as in test_engine: skip finalisation, where gloo's threads can abort the process


def test_a_nonfinite_loss_on_one_rank_turns_every_ranks_last_backward_to_nan(tmp_path):
    """Two gloo processes, rank 1's loss NaN and rank 0's finite: both scale their last backward by NaN (so both
    gradients are non-finite and both skip) and both count one rank; with finite losses both keep the scale."""
    torch.multiprocessing.spawn(_last_backward_scale_on_two_ranks, nprocs=2, args=(tmp_path / "rendezvous", tmp_path))
    for rank in (0, 1):
        result = torch.load(tmp_path / f"rank{rank}.pt")
        factor, nonfinite_ranks = result["one_nan"]
        assert math.isnan(float(factor)) and float(nonfinite_ranks) == 1.0, rank
        factor, nonfinite_ranks = result["all_finite"]
        assert float(factor) == 0.5 and float(nonfinite_ranks) == 0.0, rank

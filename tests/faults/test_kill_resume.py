"""Kill and resume, every objective (issue 28): a real SIGKILL of the run's whole process group at a named point
(``MINILLM_FAULT_KILL_AT=POINT:N``, :mod:`minillm.faults`: mid-step, while last/ is being written, during an
evaluation, during a MiniLLM rollout collection, during SeqKD generation), then the same recipe with ``--resume``
(SeqKD generation: the same command again) ends where the uninterrupted run of the same seed ends: bitwise equal
weights (last/ and best/), the same metric lines, byte-identical SeqKD output.

Each recipe runs uninterrupted once per launch (module-scoped); each kill costs two more runs. One process, and
two processes (MiniLLM with a rollout store per rank; SFT with ZeRO-3 partitions). Tiny models, CPU, gloo."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "deepspeed"
TIMING = {"steps_per_s", "examples_per_s", "tokens_per_s"}  # wall-clock figures: the only fields that may differ

# Two micro-batches per step (a kill between them is mid-step), dropout on (the resumed masks need the saved RNG);
# checkpoints at steps 2, 4, 6, evaluations at 3 and 6.
SUPERVISED = dict(BATCH_SIZE=4, GRAD_ACC=2, MAX_STEPS=6, EVAL_INTERVAL=3, SAVE_INTERVAL=2, LR=1e-3, WARMUP_STEPS=1,
                  EXTRA_ARGS="--eval-max-examples 6 --no-eval-generate --log-interval 1 --dropout 0.1")
RECIPES = {
    "sft": ("t5-scripts/sft/sft_small.sh", SUPERVISED),
    "kd": ("t5-scripts/kd/kd_small.sh", SUPERVISED),
    # 8 rollouts per collection sampled 4 at a time, in 2 micro-batches of 4, 2 PPO epochs: 4 steps per collection;
    # checkpoints at 2 (inside collection 0), 4 (a boundary), 6 (inside collection 1); evaluations at 0 and 8.
    "minillm": ("t5-scripts/minillm/train_small_xl.sh",
                dict(BATCH_SIZE=4, GRAD_ACC=1, NUM_ROLLOUTS=8, CHUNK_SIZE=4, PPO_EPOCHS=2, MAX_STEPS=8,
                     EVAL_INTERVAL=8, SAVE_INTERVAL=2, LR=1e-4, WARMUP_STEPS=1, MAX_NEW_TOKENS=6,
                     EXTRA_ARGS="--eval-max-examples 5 --no-eval-generate --log-interval 1")),
}


# How each recipe is launched: one process with ZeRO-0 (""), or two processes (gloo), each with its own data shard,
# RNG file and (MiniLLM) rollout store in the checkpoint.
LAUNCHES = {
    "": {},
    # 16 rollouts per collection are 8 per rank: a collection still spans 4 steps, and the checkpoints fall inside
    # and at the boundaries of collections as the comment above says
    "2proc": {"NUM_GPUS": "2", "NUM_ROLLOUTS": "16"},
    # ZeRO-3: weights and optimizer state partitioned over the ranks, each rank saving and loading its own partition
    "2proc-zero3": {"NUM_GPUS": "2", "DS_CONFIG": str(CONFIGS / "zero3_fp32.json")},
}


def recipe_env(setup, objective: str, save_dir: Path, launch: str = "", kill_at: str | None = None,
               resume: bool = False) -> dict:
    data, models = setup["data_dir"], setup["models"]
    env = dict(os.environ, CKPT=str(models / "tiny-student"), TEACHER_CKPT=str(models / "tiny-teacher"),
               DATA_DIR=str(data), PROMPT_DATA_DIR=str(data), LM_DATA_DIR=str(data), SAVE_DIR=str(save_dir),
               NUM_GPUS="1", DS_CONFIG=str(CONFIGS / "zero0_fp32.json"))
    env.update({k: str(v) for k, v in RECIPES[objective][1].items()})
    env.update(LAUNCHES[launch])
    env.pop("MINILLM_FAULT_KILL_AT", None)
    if kill_at is not None:
        env["MINILLM_FAULT_KILL_AT"] = kill_at
    if resume:
        env["EXTRA_ARGS"] += " --resume"
    return env


def run(command: list[str], env: dict) -> subprocess.CompletedProcess:
    """``command`` in a process group of its own (the kill takes the whole group, as ``kill -KILL -PGID`` would)."""
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=400, start_new_session=True)


def run_recipe(setup, objective: str, save_dir: Path, **kwargs) -> subprocess.CompletedProcess:
    return run(["bash", str(REPO / RECIPES[objective][0]), str(REPO)], recipe_env(setup, objective, save_dir, **kwargs))


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def assert_killed(done: subprocess.CompletedProcess, launch: str = "") -> None:
    """One process: the group's SIGKILL ends the script itself (-9). Several: torchrun starts each rank in a session
    of its own, so the SIGKILL takes the rank's session; torchrun outlives it, reports the rank's signal and exits
    1, as it would for a rank killed on a cluster node."""
    if LAUNCHES[launch].get("NUM_GPUS", "1") == "1":
        assert done.returncode == -9, f"not killed (exit {done.returncode}): " + done.stderr[-3000:]
    else:
        assert done.returncode == 1 and "Signal 9 (SIGKILL) received" in done.stderr, done.stderr[-3000:]


def metric_lines(save_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (save_dir / "metrics.jsonl").read_text().splitlines()]


def saved_step(save_dir: Path) -> int:
    return json.loads((save_dir / "last" / "trainer_state.json").read_text())["step"]


@pytest.fixture(scope="module")
def straight(tiny_setup, tmp_path_factory):
    """(objective, launch) -> the SAVE_DIR of its uninterrupted run (run on first use)."""
    runs = {}

    def get(objective: str, launch: str) -> Path:
        if (objective, launch) not in runs:
            save_dir = tmp_path_factory.mktemp(f"straight_{objective}_{launch}")
            assert_ok(run_recipe(tiny_setup, objective, save_dir, launch=launch))
            runs[objective, launch] = save_dir
        return runs[objective, launch]

    return get


def rollouts_of_every_rank(folder: Path, ranks: int) -> bool:
    return all((folder / "training_state" / f"source_rank{rank}.pt").is_file() for rank in range(ranks))


# (objective, launch, kill point, the step of last/ when killed, what shows that the run died where it was meant to)
KILLS = [
    # micro-batch 5 is the first of step 3: its backward done, the optimizer not stepped
    ("sft", "", "step:5", 2, lambda d, lines: max(r["step"] for r in lines if "padding" in r) == 2),
    # the second last/ (step 4): its training state written into last.tmp, not yet renamed
    ("sft", "", "save:2", 2, lambda d, lines: (d / "last.tmp" / "training_state" / "rng_rank0.pt").is_file()),
    # the first evaluation (step 3): no eval line, best/ not written
    ("kd", "", "eval:1", 2, lambda d, lines: not any("split" in r for r in lines) and not (d / "best").exists()),
    # step 3, inside collection 0: last/ (step 2) holds collection 0's rollouts
    ("minillm", "", "step:3", 2, lambda d, lines: rollouts_of_every_rank(d / "last", 1)),
    # collection 1 (step 4), after its first sampling batch: last/ is at the boundary, with no rollouts
    ("minillm", "", "collect:3", 4, lambda d, lines: [r["collection"] for r in lines if "collection" in r] == [0]
     and not (d / "last" / "training_state" / "source_rank0.pt").exists()),
    # last/ of step 6, inside collection 1: its rollouts written into last.tmp, not yet renamed; last/ is step 4's
    ("minillm", "", "save:3", 4, lambda d, lines: (d / "last.tmp" / "training_state" / "source_rank0.pt").is_file()),
    # the final evaluation (step 8, the first is at 0): last/ (step 6) holds collection 1's rollouts
    ("minillm", "", "eval:2", 6, lambda d, lines: [r["step"] for r in lines if "split" in r] == [0]
     and rollouts_of_every_rank(d / "last", 1)),
    # two ranks, step 3 inside collection 0: last/ (step 2) holds each rank's own rollouts, and each rank resumes
    # from its own
    ("minillm", "2proc", "step:3", 2, lambda d, lines: rollouts_of_every_rank(d / "last", 2)),
    # two ranks, ZeRO-3: mid step 3 (the first rank to reach its 5th micro-batch is killed, and torchrun ends the
    # other), and while the second last/ is written (the first rank done with its partition is killed: last.tmp is
    # partial)
    ("sft", "2proc-zero3", "step:5", 2, lambda d, lines: max(r["step"] for r in lines if "padding" in r) == 2),
    ("sft", "2proc-zero3", "save:2", 2, lambda d, lines: (d / "last.tmp").is_dir()),
]


@pytest.mark.parametrize("objective, launch, kill_at, resumed_at, died_there", KILLS,
                         ids=[f"{objective}-{kill_at}" + (f"-{launch}" if launch else "")
                              for objective, launch, kill_at, _, _ in KILLS])
def test_sigkill_then_resume_ends_bitwise_as_the_uninterrupted_run(tiny_setup, straight, tmp_path, objective, launch,
                                                                    kill_at, resumed_at, died_there):
    save_dir = tmp_path / "run"
    assert_killed(run_recipe(tiny_setup, objective, save_dir, launch=launch, kill_at=kill_at), launch)
    assert saved_step(save_dir) == resumed_at
    assert died_there(save_dir, metric_lines(save_dir))

    done = run_recipe(tiny_setup, objective, save_dir, launch=launch, resume=True)
    assert_ok(done)
    assert f"resumed at step {resumed_at}" in done.stdout + done.stderr
    reference = straight(objective, launch)
    for folder in ("last", "best"):
        expected, resumed = (load_file(str(d / folder / "model.safetensors")) for d in (reference, save_dir))
        assert expected.keys() == resumed.keys()
        assert all(torch.equal(expected[k], resumed[k]) for k in expected), f"{folder}/ differs"
    assert metric_lines(save_dir) == metric_lines(reference)
    assert not list(save_dir.glob("*.tmp")) and not list(save_dir.glob("*.old"))


def test_seqkd_generation_killed_midway_resumes_to_byte_identical_output(tiny_setup, tmp_path):
    """Sampled (2 outputs per prompt), 300 prompts in 10 batches of 32: killed after the 4th batch is recorded, the
    same command again takes the 4 recorded batches and generates the other 6 with their own seeds."""
    def generate(gen_dir: Path, kill_at: str | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, TEACHER_CKPT=str(tiny_setup["models"] / "tiny-teacher"),
                   DATA_DIR=str(tiny_setup["data_dir"]), GEN_DIR=str(gen_dir), NUM_GPUS="1", ROUNDS="r1",
                   BATCH_SIZE="32", MAX_NEW_TOKENS="6", DECODING="sample", NUM_SAMPLES="2", TEMPERATURE="1.5")
        env.pop("MINILLM_FAULT_KILL_AT", None)
        if kill_at is not None:
            env["MINILLM_FAULT_KILL_AT"] = kill_at
        return run(["bash", str(REPO / "t5-scripts" / "tools" / "generate_data_seqkd.sh"), str(REPO)], env)

    assert_ok(generate(tmp_path / "straight"))
    killed = tmp_path / "killed"
    record = tmp_path / ".killed.batches" / "rank0"
    assert_killed(generate(killed, kill_at="seqkd:4"))
    assert not killed.exists()
    assert sorted(p.name for p in record.iterdir()) == [f"{b:06d}.json" for b in range(4)] + ["settings.json"]

    done = generate(killed)
    assert_ok(done)
    assert "resuming: the first 4 batches of each process are recorded" in done.stdout
    for name in ("r1/train.jsonl", "meta.json"):
        assert (killed / name).read_bytes() == (tmp_path / "straight" / name).read_bytes(), name
    assert len((killed / "r1" / "train.jsonl").read_text().splitlines()) == 600
    assert not (tmp_path / ".killed.batches").exists() and not (tmp_path / ".straight.batches").exists()


def test_batch_record_resumes_only_complete_batches_of_the_same_settings(tmp_path):
    from minillm.generate_seqkd import BatchRecord

    settings = {"seed": 7, "batch_size": 32, "teacher_files": {"model.safetensors": [10, 1]}}
    record = BatchRecord(tmp_path / "batches", 0, settings)
    assert (record.finished, record.discarded) == (0, False)
    record.record(0, {3: [[5, 1]], 11: [[6, 6, 1]]})
    (record.folder / "000001.json.tmp").write_text('{"4": [[')  # killed while writing batch 1: not complete
    again = BatchRecord(tmp_path / "batches", 0, settings)
    assert (again.finished, again.resume_from, again.discarded) == (1, 1, False)
    assert again.outputs(0) == {3: [[5, 1]], 11: [[6, 6, 1]]} and again.outputs(1) is None
    assert again.batch_seed(1) == record.batch_seed(1) != again.batch_seed(2)
    assert BatchRecord(tmp_path / "batches", 1, settings).batch_seed(1) != record.batch_seed(1)  # another process

    retrained = BatchRecord(tmp_path / "batches", 0, {**settings, "teacher_files": {"model.safetensors": [10, 2]}})
    assert (retrained.finished, retrained.discarded) == (0, True)
    assert sorted(p.name for p in retrained.folder.iterdir()) == ["settings.json"]
    retrained.remove()
    BatchRecord(tmp_path / "batches", 1, settings).remove()
    assert not (tmp_path / "batches").exists()

"""Torn and corrupted files, and a full disk (issue 28), injected for real: files of a real training run's
checkpoints deleted, truncated or with one byte flipped; data shards cut short; a run whose file size is limited
(RLIMIT_FSIZE with SIGXFSZ ignored, so that a write past it fails with EFBIG as on a full disk).

One 4-step SFT run (checkpoints at steps 2 and 4: ``last.prev/`` and ``last/``) is shared by the module; each
test damages its own copy. ZeRO-1, so that the resume reads a ZeRO optimizer state (its loss scaler, stage and
fragment addresses) through the weights-only loader."""

import errno
import hashlib
import json
import os
import resource
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from minillm.data.indexed_dataset import IndexedDataset, ShardedIndexedDataset, write_indexed_dataset
from minillm.engine.checkpoint import _no_room, find_checkpoint, previous_of
from minillm.folders import MANIFEST, manifest_problem
from minillm.models import load_model

REPO = Path(__file__).resolve().parents[2]
STATE_FILE = "training_state/state/mp_rank_00_model_states.pt"  # DeepSpeed's model and scheduler state
OPTIMIZER_FILE = "training_state/state/zero_pp_rank_0_mp_rank_00_optim_states.pt"  # and ZeRO's optimizer state


def train(setup, save_dir: Path, max_steps: int, *extra: str, file_size_limit: int | None = None,
          save_interval: int = 2, tiny_file_system: tuple[Path, int] | None = None) -> subprocess.CompletedProcess:
    """t5-scripts/sft/sft_small.sh on the tiny setup, one process, ZeRO 1: ``max_steps`` steps, ``last/`` every
    ``save_interval`` steps, one evaluation at the end. ``tiny_file_system`` ``(copy_back_to, kib)``: ``save_dir``
    is copied onto a tmpfs of that size, mounted in a user and mount namespace of the run's own, and copied back
    when the run ends (the mount goes with the namespace)."""
    env = dict(os.environ, CKPT=str(setup["models"] / "tiny-student"), DATA_DIR=str(setup["data_dir"]),
               SAVE_DIR=str(save_dir), NUM_GPUS="1", BATCH_SIZE="8", GRAD_ACC="1", LR="1e-3", EPOCHS="1",
               MAX_STEPS=str(max_steps), EVAL_INTERVAL=str(max_steps), SAVE_INTERVAL=str(save_interval),
               WARMUP_STEPS="0", DS_CONFIG=str(REPO / "configs" / "deepspeed" / "zero1_fp32.json"),
               EXTRA_ARGS=" ".join(["--eval-max-examples 8 --no-eval-generate --log-interval 1", *extra]))

    def limit_file_size():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the writer instead of failing write()
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    command = ["bash", str(REPO / "t5-scripts" / "sft" / "sft_small.sh"), str(REPO)]
    if tiny_file_system is not None:
        copy_back_to, kib = tiny_file_system
        mount_point = save_dir.parent / "tiny_fs"
        mount_point.mkdir()
        env["SAVE_DIR"] = str(mount_point / save_dir.name)
        command = ["unshare", "-rm", "sh", "-c",
                   f'mount -t tmpfs -o size={kib}k tmpfs "{mount_point}" && cp -a "{save_dir}" "{env["SAVE_DIR"]}" '
                   f'&& {" ".join(command)}; status=$?; cp -a "{env["SAVE_DIR"]}" "{copy_back_to}"; exit $status']
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=limit_file_size if file_size_limit is not None else None)


def can_mount_a_tmpfs() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
                              capture_output=True, timeout=30).returncode == 0
    except FileNotFoundError:
        return False


def step_of(folder: Path) -> int:
    return json.loads((folder / "trainer_state.json").read_text())["step"]


@pytest.fixture(scope="module")
def run(tiny_setup, tmp_path_factory) -> Path:
    save_dir = tmp_path_factory.mktemp("faults") / "run"
    done = train(tiny_setup, save_dir, 4)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return save_dir


@pytest.fixture
def copy(run, tmp_path) -> Path:
    """A copy of the run's folder that a test may damage."""
    return Path(shutil.copytree(run, tmp_path / "run", symlinks=True))


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(size)


# ------------------------------------------------------------------------------------------- checkpoint manifest

def test_manifest_records_every_file_with_size_and_sha256(run):
    last = run / "last"
    recorded = json.loads((last / MANIFEST).read_text())["files"]
    on_disk = sorted(p.relative_to(last).as_posix() for p in last.rglob("*") if p.is_file() and p.name != MANIFEST)
    assert sorted(recorded) == on_disk
    assert {"model.safetensors", "trainer_state.json", STATE_FILE, OPTIMIZER_FILE,
            "training_state/rng_rank0.pt"} <= set(recorded)
    weights = (last / "model.safetensors").read_bytes()
    assert recorded["model.safetensors"] == {"size": len(weights), "sha256": hashlib.sha256(weights).hexdigest()}
    # last/ keeps the checkpoint it replaced: the two newest complete ones, nothing half-written beside them
    assert (step_of(last), step_of(previous_of(last))) == (4, 2)
    assert manifest_problem(last) is None and manifest_problem(previous_of(last)) is None
    assert sorted(p.name for p in run.iterdir() if p.name.startswith("last")) == ["last", "last.prev"]


@pytest.mark.parametrize("damage, name, problem", [
    ("delete", "model.safetensors", "model.safetensors is missing"),
    ("delete", MANIFEST, f"no {MANIFEST} (the folder was not written to the end)"),
    ("truncate", STATE_FILE, f"{STATE_FILE} has 1000 bytes, the manifest records {{size}}"),
    ("flip", "training_state/rng_rank0.pt", "training_state/rng_rank0.pt does not match its SHA-256 in the manifest "
                                            "(corrupted; same size)"),
    ("flip", "trainer_state.json", "trainer_state.json does not match its SHA-256"),
])
def test_a_torn_or_corrupted_last_is_skipped_for_the_previous_checkpoint(copy, capsys, damage, name, problem):
    last = copy / "last"
    target = last / name
    size = target.stat().st_size
    if damage == "delete":
        target.unlink()
    elif damage == "truncate":
        truncate(target, 1000)
    else:
        flip_byte(target, size // 2)
    assert find_checkpoint(last) == previous_of(last)
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"resume: skipped {last} ({problem.format(size=size)}")
    assert line.endswith(f"; resuming from {previous_of(last)} (last/ moved to last.skipped/)") and "\n" not in line
    # set aside whole, so that the next save keeps last.prev/ (the whole one) as the previous checkpoint
    assert not last.exists() and manifest_problem(copy / "last.skipped").startswith(problem.format(size=size))
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith("last")) == ["last.prev", "last.skipped"]


def test_with_every_checkpoint_damaged_nothing_is_resumed(copy, capsys):
    last = copy / "last"
    size = (last / "model.safetensors").stat().st_size
    truncate(last / "model.safetensors", 10)
    (previous_of(last) / STATE_FILE).unlink()
    assert find_checkpoint(last) is None
    assert capsys.readouterr().err.strip() == (
        f"resume: skipped {last} (model.safetensors has 10 bytes, the manifest records {size}); "
        f"{previous_of(last)} ({STATE_FILE} is missing); no whole checkpoint is left")


def test_a_checkpoint_that_is_half_renamed_resumes_from_its_old_copy(copy, capsys):
    """The crash window of the swap: last/ already renamed to last.old/, last.tmp/ not yet renamed to last/."""
    last = copy / "last"
    last.rename(last.with_name("last.old"))
    assert find_checkpoint(last) == last.with_name("last.old")
    assert capsys.readouterr().err == ""


def test_loading_a_corrupted_model_folder_is_refused_naming_the_file(copy, tiny_setup):
    best = copy / "best"
    load_model(best)  # whole: loads
    load_model(tiny_setup["models"] / "tiny-student")  # no manifest (a Hugging Face folder): loads as before
    flip_byte(copy / "last" / STATE_FILE, 100)
    load_model(copy / "last")  # the model of last/ is whole; its training state is not read here
    flip_byte(best / "model.safetensors", 5000)
    with pytest.raises(ValueError, match=f"^--model-path {best}: not a whole checkpoint: model.safetensors does not "
                                         "match its SHA-256 in the manifest"):
        load_model(best)


def test_resume_falls_back_to_the_previous_checkpoint_and_says_so(copy, tiny_setup):
    last = copy / "last"
    flip_byte(last / STATE_FILE, (last / STATE_FILE).stat().st_size // 2)
    done = train(tiny_setup, copy, 6, "--resume")
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert (f"resume: skipped {last} ({STATE_FILE} does not match its SHA-256 in the manifest (corrupted; same "
            f"size)); resuming from {previous_of(last)} (last/ moved to last.skipped/)") in output
    assert "resumed at step 2" in output
    # saves at steps 4 and 6: the whole checkpoints rotate, the damaged one stays aside
    assert (step_of(last), step_of(previous_of(last)), step_of(copy / "last.skipped")) == (6, 4, 4)
    assert manifest_problem(last) is None and manifest_problem(previous_of(last)) is None
    assert manifest_problem(copy / "last.skipped").startswith(f"{STATE_FILE} does not match")


# ------------------------------------------------------------------------------------------- full disk

def test_a_file_size_limit_during_a_save_fails_in_one_line_and_keeps_the_checkpoints(copy, tiny_setup):
    last = copy / "last"
    manifests = {folder: (folder / MANIFEST).read_bytes() for folder in (last, previous_of(last))}
    limit = (last / "model.safetensors").stat().st_size // 2  # DeepSpeed's state file (3x larger) cannot be written
    assert (copy / "metrics.jsonl").stat().st_size < limit // 10  # the run's logs stay far below the limit
    done = train(tiny_setup, copy, 6, "--resume", file_size_limit=limit, save_interval=1)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed at step 4" in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    # between the two: torch.save's own words ("[enforce fail at inline_container.cc:...] unexpected pos ...")
    assert errors[0].startswith(f"finetune: error: checkpoint {last}: writing {last}.tmp failed: the file-size limit "
                                f"(RLIMIT_FSIZE, {limit} bytes) was hit by {STATE_FILE} (")
    assert errors[0].endswith(f"); last.tmp removed, {last} and {previous_of(last)} as they were; make room (or "
                              "raise the limit), then run again with --resume")
    for folder, manifest in manifests.items():  # untouched, and still whole
        assert (folder / MANIFEST).read_bytes() == manifest and manifest_problem(folder) is None
    assert sorted(p.name for p in copy.iterdir() if p.name.startswith("last")) == ["last", "last.prev"]


def test_a_full_file_system_during_a_save_fails_in_one_line_and_keeps_the_checkpoints(copy, tiny_setup, tmp_path):
    """A real full disk: the run's folder on a tmpfs with 1 MiB to spare (a checkpoint needs several), so the save
    fails with ENOSPC."""
    if not can_mount_a_tmpfs():
        pytest.skip("unshare -rm (user and mount namespaces) cannot mount a tmpfs on this machine; the file-size-"
                    "limit test above covers a write refused for want of room")
    used_kib = sum(p.stat().st_size for p in copy.rglob("*") if p.is_file()) // 1024
    back = tmp_path / "back"
    done = train(tiny_setup, copy, 6, "--resume", save_interval=1, tiny_file_system=(back, used_kib + 1024))
    on_tmpfs = tmp_path / "tiny_fs" / "run"
    last, previous = on_tmpfs / "last", previous_of(on_tmpfs / "last")
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    assert "resumed at step 4" in done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and "Traceback" not in done.stderr, done.stderr[-3000:]
    assert errors[0].startswith(f"finetune: error: checkpoint {last}: writing {last}.tmp failed: the disk is full (")
    assert errors[0].endswith(f"); last.tmp removed, {last} and {previous} as they were; make room (or raise the "
                              "limit), then run again with --resume")
    for name in ("last", "last.prev"):  # as they were on the full file system, and still whole
        assert (back / name / MANIFEST).read_bytes() == (copy / name / MANIFEST).read_bytes()
        assert manifest_problem(back / name) is None
    assert sorted(p.name for p in back.iterdir() if p.name.startswith("last")) == ["last", "last.prev"]


def test_a_write_refused_for_want_of_room_is_told_from_other_errors(tmp_path):
    """The errno where the error keeps one: Python's own writes (OSError), safetensors' writer (its message only,
    as it raised it for RLIMIT_FSIZE above on best/); any other failure is not a room problem (None: re-raised)."""
    staging = tmp_path / "last.tmp"
    staging.mkdir()
    assert _no_room(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), staging) == "the disk is full"
    wrapped = RuntimeError("Error while serializing: I/O error: File too large (os error 27)")
    assert _no_room(wrapped, staging) == "a file-size limit was hit"
    try:
        try:
            raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))
        except OSError:
            raise RuntimeError("basic_ios::clear: iostream error")
    except RuntimeError as chained:
        assert _no_room(chained, staging) == "the disk quota is used up"
    assert _no_room(PermissionError(errno.EACCES, os.strerror(errno.EACCES)), staging) is None
    assert _no_room(KeyError("engine"), staging) is None


# ------------------------------------------------------------------------------------------- data shards

@pytest.fixture
def shard(tmp_path) -> Path:
    """Three items of 3, 2 and 4 uint16 tokens: 18 bytes of .bin; .idx 34 header + 3 x (4 + 8) + 8 = 78 bytes."""
    prefix = tmp_path / "train_0"
    write_indexed_dataset(prefix, np.arange(9, dtype=np.uint16), np.array([3, 2, 4]))
    assert (Path(f"{prefix}.bin").stat().st_size, Path(f"{prefix}.idx").stat().st_size) == (18, 78)
    return prefix


def test_a_whole_shard_opens(shard):
    assert [list(item) for item in ShardedIndexedDataset(shard.parent, "train")] == [[0, 1, 2], [3, 4], [5, 6, 7, 8]]


def test_a_truncated_bin_is_refused_when_opened_naming_the_sizes(shard):
    truncate(Path(f"{shard}.bin"), 15)
    with pytest.raises(ValueError, match=(
            rf"^{shard}\.bin: expected 18 bytes \(3 items in train_0\.idx\), found 15: the file is truncated; run "
            "the data processing script again$")):
        ShardedIndexedDataset(shard.parent, "train")


def test_a_bin_longer_than_its_index_is_refused(shard):
    with open(f"{shard}.bin", "ab") as f:
        f.write(b"\0\0")
    with pytest.raises(ValueError, match=rf"^{shard}\.bin: expected 18 bytes .*, found 20: the file is longer than "
                                         "its index"):
        IndexedDataset(shard)


def test_a_truncated_idx_is_refused_naming_the_sizes(shard):
    truncate(Path(f"{shard}.idx"), 70)
    with pytest.raises(ValueError, match=rf"^{shard}\.idx: 70 bytes, but its header \(3 items, 1 documents\) needs "
                                         "78: the file is torn or corrupted"):
        IndexedDataset(shard)


def test_a_flipped_size_in_the_idx_is_refused(shard):
    flip_byte(Path(f"{shard}.idx"), 34 + 4)  # the second item's size: 2 -> 3
    with pytest.raises(ValueError, match=rf"^{shard}\.idx: item sizes and offsets are inconsistent"):
        IndexedDataset(shard)

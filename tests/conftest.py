"""Shared fixtures. Tests run offline on CPU; `shared/` (real ANLI data, the real Flan-T5 tokenizer) sits beside the
checkout and is read-only."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


# The test files that take 100 s or more on 2 cores (108-228 s, 2026-12-07), longest first. run.sh hands whole
# files to pytest-xdist's workers in collection order (--dist loadfile --no-loadscope-reorder; xdist's own
# reordering puts the files with the most tests first, which left these few-test, long files running alone at the
# end of the suite).
LONG_FILES_FIRST = ("test_distillation_learns.py", "faults/test_kill_resume.py", "test_engine.py",
                    "test_default_job.py")


def pytest_collection_modifyitems(config, items):
    """The files of :data:`LONG_FILES_FIRST` first, in that order; every other test keeps its place (a stable sort)."""
    rank = {REPO / "tests" / name: position for position, name in enumerate(LONG_FILES_FIRST)}
    items.sort(key=lambda item: rank.get(Path(item.path).resolve(), len(rank)))


def _shared_path(relative: str) -> Path:
    path = SHARED / relative
    if not path.exists():
        pytest.skip(f"{path} is missing: these tests need the shared/ folder beside the checkout")
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def shared_anli() -> Path:
    """Real ANLI dev/test splits in both layouts: shared/data/anli."""
    return _shared_path("data/anli")


@pytest.fixture(scope="session")
def flan_t5_tokenizer_dir() -> Path:
    """The real Flan-T5 SentencePiece tokenizer: shared/tokenizers/flan-t5."""
    return _shared_path("tokenizers/flan-t5")


@pytest.fixture(scope="session")
def tiny_setup(tmp_path_factory) -> dict:
    """The embedded default's data and models at test size (300 train / 60 dev / 60 test per round, vocab 256),
    built once per session through t5-scripts/run_default.sh without its training stages. Treat as read-only."""
    import subprocess

    work = tmp_path_factory.mktemp("tiny_setup")
    env = dict(os.environ, WORK=str(work), TRAIN_PER_ROUND="300", EVAL_PER_ROUND="60", VOCAB_SIZE="256",
               SKIP_TRAINING="1")
    done = subprocess.run(["bash", str(REPO / "t5-scripts" / "run_default.sh"), str(REPO)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return {"work": work, "data_dir": work / "processed_data" / "synthetic_nli", "models": work / "models"}

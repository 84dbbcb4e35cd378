"""Shared fixtures. Tests run offline on CPU; `shared/` (real ANLI data, the real Flan-T5 tokenizer) sits beside the
checkout and is read-only."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


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

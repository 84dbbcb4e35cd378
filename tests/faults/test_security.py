"""Nothing the project loads runs code from data (issue 28): a pickle that creates a file when it is unpickled is
planted where the project reads weights, RNG state and DeepSpeed state, and the file must not appear. Plus two
checks of the source: every ``torch.load`` passes ``weights_only=True``; nothing sets ``trust_remote_code``."""

import ast
import pickle
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from minillm.engine.checkpoint import CheckpointError, _deepspeed_loads_weights_only, load_rng_state
from minillm.models import load_model
from minillm.models.tiny import build_model

REPO = Path(__file__).resolve().parents[2]
SOURCES = [path for folder in ("minillm", "tools") for path in sorted((REPO / folder).rglob("*.py"))]


class WritesAFile:
    """Unpickling this calls ``open(marker, "w")``: the marker appears if, and only if, the pickle was run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def plant(path: Path, marker: Path) -> Path:
    """A torch checkpoint file (torch.save's zip of pickles) holding a :class:`WritesAFile`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state": WritesAFile(marker)}, path)
    return path


def test_the_planted_pickle_does_write_its_file_when_unpickled(tmp_path):
    """The control: the planted file is a real threat, so the tests below that find no marker mean something."""
    marker = tmp_path / "ran"
    torch.load(plant(tmp_path / "evil.pt", marker), weights_only=False)
    assert marker.exists()


@pytest.fixture
def pickle_model(tmp_path) -> tuple[Path, Path]:
    """A model folder whose only weights are a planted pytorch_model.bin (config.json of a real tiny T5)."""
    folder = tmp_path / "model"
    build_model("tiny-student", 64).config.save_pretrained(folder)
    marker = tmp_path / "ran"
    plant(folder / "pytorch_model.bin", marker)
    return folder, marker


def test_pickle_weights_are_refused_without_the_flag(pickle_model):
    folder, marker = pickle_model
    with pytest.raises(ValueError, match=(
            rf"^--model-path {folder}: its weights are pickle files \(pytorch_model\.bin\) and there is no "
            r"\.safetensors: unpickling can run code stored in the file, so it is not loaded; .* or pass "
            "--allow-pickle-weights if you trust its source$")):
        load_model(folder)
    assert not marker.exists()


def test_with_the_flag_pickle_weights_are_still_loaded_weights_only(pickle_model):
    """--allow-pickle-weights lets the library read the .bin, which it does with torch.load(weights_only=True):
    the planted object is refused, not built."""
    folder, marker = pickle_model
    with pytest.raises(ValueError, match=rf"^--model-path {folder}: cannot load it \(its pickle weights hold "
                                         r"io\.open, which loading would run; they are read weights-only, even with "
                                         r"--allow-pickle-weights\)$"):
        load_model(folder, allow_pickle=True)
    assert not marker.exists()


def test_a_planted_rng_file_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    rng_file = plant(tmp_path / "last" / "training_state" / "rng_rank0.pt", marker)
    with pytest.raises(CheckpointError, match=rf"^--resume: {rng_file} holds objects other than tensors and plain "
                                              "values .* it is not unpickled"):
        load_rng_state(rng_file)
    assert not marker.exists()


def test_deepspeed_state_files_are_loaded_weights_only(tmp_path):
    """DeepSpeed's checkpoint engine loads its state files with weights_only=False; inside
    _deepspeed_loads_weights_only (around engine.load_checkpoint at --resume) it loads them weights_only."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine

    engine = SimpleNamespace(checkpoint_engine=TorchCheckpointEngine())
    marker = tmp_path / "ran"
    state_file = plant(tmp_path / "state" / "mp_rank_00_model_states.pt", marker)
    with _deepspeed_loads_weights_only(engine):
        with pytest.raises(pickle.UnpicklingError):
            engine.checkpoint_engine.load(str(state_file), map_location="cpu")
    assert not marker.exists()
    # outside, DeepSpeed's own load is back: the same file would run (the marker shows the wrapper is what refused)
    engine.checkpoint_engine.load(str(state_file), map_location="cpu")
    assert marker.exists()


def test_deepspeed_state_classes_are_allowed(tmp_path):
    """What DeepSpeed's ZeRO optimizer state holds besides tensors (its loss scaler, the ZeRO stage, fragment
    addresses) loads through the weights-only loader."""
    from deepspeed.runtime.checkpoint_engine import TorchCheckpointEngine
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    path = tmp_path / "optim_states.pt"
    torch.save({"loss_scaler": LossScaler(1.0), "zero_stage": ZeroStageEnum.gradients,
                "param_slice_mappings": [{"w": fragment_address(numel=4, start=0)}], "state": torch.ones(2)}, path)
    engine = SimpleNamespace(checkpoint_engine=TorchCheckpointEngine())
    with _deepspeed_loads_weights_only(engine):
        loaded = engine.checkpoint_engine.load(str(path), map_location="cpu")
    assert loaded["zero_stage"] is ZeroStageEnum.gradients and loaded["loss_scaler"].cur_scale == 1.0
    assert loaded["param_slice_mappings"][0]["w"] == fragment_address(numel=4, start=0)


def _calls(path: Path):
    return [node for node in ast.walk(ast.parse(path.read_text(), str(path))) if isinstance(node, ast.Call)]


def test_every_torch_load_in_the_project_is_weights_only():
    found, unsafe = 0, []
    for path in SOURCES:
        for call in _calls(path):
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "load" and getattr(func.value, "id", None) == "torch":
                found += 1
                keywords = {k.arg: k.value for k in call.keywords}
                value = keywords.get("weights_only")
                if not (isinstance(value, ast.Constant) and value.value is True):
                    unsafe.append(f"{path.relative_to(REPO)}:{call.lineno}")
    assert found >= 2 and unsafe == []  # the RNG and batch-source files of a checkpoint at least


def test_nothing_sets_trust_remote_code():
    setting = [f"{path.relative_to(REPO)}:{call.lineno}" for path in SOURCES for call in _calls(path)
               if any(k.arg == "trust_remote_code" for k in call.keywords)]
    scripts = [path for folder in ("t5-scripts", "scripts", "tools") for path in sorted((REPO / folder).rglob("*.sh"))]
    in_scripts = [str(path.relative_to(REPO)) for path in scripts
                  if re.search(r"trust[-_]remote[-_]code", path.read_text())]
    assert setting == [] and in_scripts == []

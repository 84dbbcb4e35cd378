"""Issue 27: a checkpoint folder whose tokenizer is missing or does not match the data / the model is refused
before training, in one line naming the folder and the field; a path-like model argument that does not exist says
"no such folder", not the hub's repo-id message."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from minillm.models import (TOKENIZER_FILES, check_local_path, check_tokenizer_matches, load_model, load_tokenizer,
                            looks_like_path)
from minillm.models.tiny import build_model, model_vocab_size, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def good(tmp_path_factory, flan_t5_tokenizer_dir):
    """A tiny student with the real Flan-T5 tokenizer, and the meta.json of data processed with that tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(flan_t5_tokenizer_dir)
    folder = save_checkpoint(build_model("tiny-student", model_vocab_size(tokenizer)), tokenizer,
                             tmp_path_factory.mktemp("ckpt") / "good")
    meta = {"tokenizer": str(flan_t5_tokenizer_dir), "vocab_size": len(tokenizer), "dtype": "uint16",
            "separator": 65535, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
            "model_type": "seq2seq", "task": "anli", "template": "anli", "target": "label"}
    return {"folder": folder, "meta": meta, "tokenizer_dir": flan_t5_tokenizer_dir}


@pytest.fixture(scope="module")
def no_tokenizer(good, tmp_path_factory):
    """The good checkpoint with its tokenizer files deleted (config.json + model.safetensors left)."""
    folder = tmp_path_factory.mktemp("ckpt") / "no_tokenizer"
    folder.mkdir()
    for name in os.listdir(good["folder"]):
        if name not in TOKENIZER_FILES and name != "special_tokens_map.json":
            (folder / name).write_bytes((good["folder"] / name).read_bytes())
    return folder


def check(folder, meta, data_dir="DATA", tokenizer_path=None):
    tokenizer = load_tokenizer(tokenizer_path or folder, "--tokenizer-path" if tokenizer_path else "--model-path")
    model = load_model(folder)
    check_tokenizer_matches(tokenizer, model, meta, tokenizer_flag="--model-path", tokenizer_path=folder,
                            model_flag="--model-path", model_path=folder, data_dir=data_dir)


def one_line(err) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_good_checkpoint_passes(good):
    check(good["folder"], good["meta"])
    check(good["folder"], {**good["meta"], "pad_token_id": None})  # GPT-2 / LLaMA data: no pad id recorded


def test_a_folder_without_tokenizer_files_is_refused(no_tokenizer, good):
    # transformers would build a 104-token fallback from config.json, in which "Yes" and "No" have the same ids
    with pytest.raises(ValueError) as err:
        check(no_tokenizer, good["meta"])
    text = one_line(err)
    assert str(no_tokenizer) in text and "no tokenizer files" in text and "--tokenizer-path" in text
    check(no_tokenizer, good["meta"], tokenizer_path=good["tokenizer_dir"])  # --tokenizer-path points elsewhere


@pytest.mark.parametrize("field, value", [("vocab_size", 32000), ("eos_token_id", 2), ("pad_token_id", 5)])
def test_a_tokenizer_that_does_not_match_the_data_is_refused(good, field, value):
    with pytest.raises(ValueError) as err:
        check(good["folder"], {**good["meta"], field: value}, data_dir="/data/anli")
    text = one_line(err)
    assert str(good["folder"]) in text and field in text and "/data/anli/meta.json" in text
    assert "--tokenizer-path" in text


def test_a_checkpoint_built_with_another_tokenizer_is_refused(good, tmp_path):
    """Embedding smaller than the data's ids: an 88-line IndexError in the first forward before."""
    small_tokenizer_dir = tmp_path / "small"
    small = save_checkpoint(build_model("tiny-student", 256), AutoTokenizer.from_pretrained(good["tokenizer_dir"]),
                            small_tokenizer_dir)
    with pytest.raises(ValueError) as err:
        check(small, good["meta"])
    text = one_line(err)
    assert str(small) in text and "embedding has 256 rows" in text and "vocab_size is 32100" in text
    with pytest.raises(ValueError) as err:  # no vocab_size in meta.json: the tokenizer against the embedding
        check(small, {})
    text = one_line(err)
    assert str(small) in text and "32100 tokens" in text and "256 embedding rows" in text


@pytest.mark.parametrize("path", ["runs/sft/best", "./best", "../best", "~/no_such_ckpt_27", "/no/such/ckpt"])
def test_a_missing_path_says_no_such_folder(path):
    assert looks_like_path(path)
    with pytest.raises(ValueError) as err:
        load_model(path, flag="--teacher-model-path")
    text = one_line(err)
    assert text.startswith(f"--teacher-model-path {path}: cannot load it (no such folder)")
    assert "repo id" not in text.lower()


def test_hub_names_are_left_to_the_hub(good):
    for name in ("google/flan-t5-base", "gpt2"):
        assert not looks_like_path(name) and check_local_path(name, "--model-path") == name
    assert check_local_path(good["folder"], "--model-path") == good["folder"]  # an existing folder


def test_finetune_refuses_in_one_line_before_training(no_tokenizer, good, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps(good["meta"]))
    save = tmp_path / "save"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    done = subprocess.run([sys.executable, "-m", "minillm.finetune", "--type", "sft", "--model-path", str(no_tokenizer),
                           "--data-dir", str(data), "--save-dir", str(save), "--deepspeed-config",
                           str(REPO / "configs" / "deepspeed" / "zero0_fp32.json")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("finetune: error:")]
    assert len(errors) == 1 and str(no_tokenizer) in errors[0] and "no tokenizer files" in errors[0]
    assert "Traceback" not in done.stderr
    assert not (save / "best").exists() and not (save / "last").exists()

"""MiniLLM's flags the engine accepts for its recipes: --model-parallel / --model-parallel-size (served by ZeRO-3)
and the Dolly round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minillm.engine.config import parse_config

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def flags(tmp_path):
    """Flags that pass validation: a hub model name, a data folder with its meta.json, a repository DeepSpeed file."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "meta.json").write_text(json.dumps({"target": "label"}))
    return ["--model-path", "gpt2", "--data-dir", str(data), "--save-dir", str(tmp_path / "run")]


def deepspeed_config(name: str) -> list[str]:
    return ["--deepspeed-config", str(REPO / "configs" / "deepspeed" / name)]


def test_model_parallel_runs_as_zero3_with_one_line(flags, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    config = parse_config(flags + deepspeed_config("zero3_bf16.json")
                          + ["--model-parallel", "--model-parallel-size", "4"])
    config.validate()
    assert (config.model_parallel, config.model_parallel_size) == (True, 4)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"--model-parallel-size 4: tensor parallelism is not used; the model is sharded with ZeRO-3 "
                     f"instead (--deepspeed-config {REPO}/configs/deepspeed/zero3_bf16.json)"]


def test_only_the_first_process_says_so(flags, capsys, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    parse_config(flags + deepspeed_config("zero3_offload_fp32.json") + ["--model-parallel"]).validate()
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("name", ["zero1_bf16.json", "zero2_offload_fp32.json"])
def test_model_parallel_below_zero3_is_refused(flags, name):
    config = parse_config(flags + deepspeed_config(name) + ["--model-parallel", "--model-parallel-size", "4"])
    with pytest.raises(ValueError, match=rf"--model-parallel is served by ZeRO-3 sharding, but --deepspeed-config "
                                         rf"\S+{name} has ZeRO stage [12]; use a configs/deepspeed/zero3_\*\.json"):
        config.validate()


def test_model_parallel_size_needs_the_switch(flags):
    config = parse_config(flags + deepspeed_config("zero3_bf16.json") + ["--model-parallel-size", "4"])
    with pytest.raises(ValueError, match="--model-parallel-size 4 needs --model-parallel"):
        config.validate()


def test_without_model_parallel_any_stage_goes_silently(flags, capsys):
    parse_config(flags + deepspeed_config("zero1_bf16.json")).validate()
    assert capsys.readouterr().err == ""


def test_dolly_is_a_round():
    config = parse_config(["--train-round", "dolly", "--eval-rounds", "dolly"])
    assert (config.train_round, config.eval_rounds) == ("dolly", ("dolly",))


@pytest.mark.parametrize("argv", [["--train-round", "r4"], ["--eval-rounds", "r1", "all"]])
def test_unknown_rounds_are_refused(argv, capsys):
    with pytest.raises(SystemExit):
        parse_config(argv)
    assert "invalid choice" in capsys.readouterr().err


def test_dolly_responses_are_selected_by_rouge_l(flags, tmp_path):
    """Dolly's meta.json says target "response": free text, judged by Rouge-L like ANLI rationales."""
    (tmp_path / "data" / "meta.json").write_text(json.dumps({"target": "response", "task": "dolly"}))
    assert parse_config(flags).selection_metric() == "rougeL"
    with pytest.raises(ValueError, match=r"--select-by rougeL \(auto: the data has free-text targets\)"):
        parse_config([*flags, "--no-eval-generate"]).validate()


def test_a_shortened_flag_is_refused(flags, capsys):
    """No argparse prefix matching: --max-step is an error, not --max-steps."""
    with pytest.raises(SystemExit):
        parse_config(flags + deepspeed_config("zero1_fp32.json") + ["--max-step", "5"])
    assert "--max-step" in capsys.readouterr().err
    assert parse_config(flags + deepspeed_config("zero1_fp32.json") + ["--max-steps", "5"]).max_steps == 5


def test_warmup_longer_than_the_run_warns(flags, capsys, monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    config = parse_config(flags + deepspeed_config("zero1_fp32.json") + ["--max-steps", "50", "--warmup-steps", "100"])
    config.validate()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and "--warmup-steps 100" in lines[0] and "--max-steps 50" in lines[0]
    parse_config(flags + deepspeed_config("zero1_fp32.json") + ["--max-steps", "500", "--warmup-steps", "100"]).validate()
    parse_config(flags + deepspeed_config("zero1_fp32.json") + ["--warmup-steps", "100"]).validate()  # epochs decide
    assert capsys.readouterr().err == ""

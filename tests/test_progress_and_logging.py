"""What a run shows and records (minillm/console.py): progress as plain lines in a log and a bar on a terminal,
library noise left out unless VERBOSE=1, the warmup warning of an epoch-limited run, data processed without a train
split (evaluated on, not trained on), and the MiniLLM recipes' LM data. A whole run's output in a log file, its
metrics.jsonl kinds and its TensorBoard config and hparams are checked on a run test_engine.py makes anyway
(assert_log_file_output)."""

import io
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minillm import console
from minillm.console import LineProgress, progress, quiet_libraries

REPO = Path(__file__).resolve().parents[1]


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_line_progress_prints_a_line_every_n_units_and_one_at_the_end():
    stream, clock = io.StringIO(), FakeClock()
    report = LineProgress(10, "train", every=3, unit="steps", stream=stream, clock=clock)
    for step in range(1, 11):
        clock.now = float(step)  # one step a second
        if step == 5:
            report.set_postfix(loss="0.5000")
        report.update(1)
    report.close()
    assert stream.getvalue().splitlines() == [
        "train: 3/10 steps (30%), 0:00:03 elapsed, 1 steps/s, 0:00:07 left",
        "train: 6/10 steps (60%), 0:00:06 elapsed, 1 steps/s, 0:00:04 left, loss=0.5000",
        "train: 9/10 steps (90%), 0:00:09 elapsed, 1 steps/s, 0:00:01 left, loss=0.5000",
        "train: 10/10 steps (100%), 0:00:10 elapsed, 1 steps/s, loss=0.5000"]


def test_line_progress_counts_from_a_resumed_step_and_waits_out_its_delay():
    stream, clock = io.StringIO(), FakeClock()
    # resumed at 40 of 100: the rate counts the steps done since; a line every 20, none in the first 5 s
    report = LineProgress(100, "train", every=20, initial=40, unit="steps", delay=5.0, stream=stream, clock=clock)
    clock.now = 4.0
    report.update(20)  # 60 at 4 s: still within the delay
    clock.now = 8.0
    report.update(7)  # 67: no multiple of 20 passed
    report.update(13)  # 80 at 8 s: 40 steps in 8 s
    clock.now = 10.0
    report.update(20)  # 100 at 10 s
    report.close()  # the last line already showed 100
    assert stream.getvalue().splitlines() == [
        "train: 80/100 steps (80%), 0:00:08 elapsed, 5 steps/s, 0:00:04 left",
        "train: 100/100 steps (100%), 0:00:10 elapsed, 6 steps/s"]
    quick = io.StringIO()
    with LineProgress(4, "eval dev", every=1, delay=5.0, stream=quick, clock=FakeClock()) as report:
        report.update(4)  # a phase that ends within its delay prints nothing
    with LineProgress(4, "eval dev", every=1, stream=quick, clock=FakeClock()):
        pass  # nor one that counted nothing (left by an error)
    assert quick.getvalue() == ""


def test_progress_is_a_bar_on_a_terminal_lines_elsewhere_and_nothing_on_other_processes():
    from tqdm import tqdm

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    bar = progress(5, "train", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    log = io.StringIO()
    lines = progress(40, "work", stream=log)  # every 40 // 20 = 2 units by default
    assert isinstance(lines, LineProgress) and lines.every == 2
    silent = io.StringIO()
    other = progress(5, "train", enabled=False, stream=silent)
    other.update(5)
    other.close()
    assert silent.getvalue() == ""


def test_progress_into_a_pipe_is_lines_without_carriage_returns():
    code = ("from minillm.console import progress, with_progress\n"
            "for _ in with_progress(range(100), progress(100, 'work', unit='items')): pass\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "\r" not in done.stderr
    lines = done.stderr.splitlines()
    assert [line.split(" items")[0] for line in lines] == [f"work: {n}/100" for n in range(5, 101, 5)]


@pytest.fixture
def restored_logging():
    """quiet_libraries changes process-wide settings (a training run in this process makes the same call): the
    test starts from the libraries' own and leaves them so."""
    from transformers.utils import logging as transformers_logging

    def restore():
        for name, drop in console._FILTERS.items():
            logging.getLogger(name).removeFilter(drop)
        transformers_logging.enable_progress_bar()

    restore()
    yield
    restore()


class Collect(logging.Handler):
    def __init__(self):
        super().__init__()
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.mark.parametrize("verbose", ["", "1"])
def test_quiet_libraries_drops_the_two_known_messages_and_the_bars_unless_verbose(verbose, monkeypatch,
                                                                                  restored_logging):
    from transformers.utils import logging as transformers_logging

    monkeypatch.setenv("VERBOSE", verbose)
    quiet_libraries()
    quiet_libraries()  # a second call adds nothing
    collected = {}
    for name, start in console.NOISE:
        logger, handler = logging.getLogger(name), Collect()
        logger.addHandler(handler)
        try:
            logger.warning(start + " ... (as the library words it)")
            logger.warning("another warning of the same library")
        finally:
            logger.removeHandler(handler)
        collected[name] = handler.messages
    if verbose:
        assert all(len(messages) == 2 for messages in collected.values())
        assert transformers_logging.is_progress_bar_enabled()
    else:
        assert all(messages == ["another warning of the same library"] for messages in collected.values())
        assert not transformers_logging.is_progress_bar_enabled()
        assert len(logging.getLogger("DeepSpeed").filters) == len(set(logging.getLogger("DeepSpeed").filters))


@pytest.mark.parametrize("verbose", ["", "1"])
def test_loading_a_tiny_model_is_quiet_unless_verbose(verbose, tiny_setup, monkeypatch, capfd, caplog,
                                                     restored_logging):
    """transformers' bar and tied-weights warning at a real load: there with VERBOSE=1 (so their absence is the
    filter's doing, not a library that went quiet or reworded by itself), gone without. DeepSpeed's message comes
    once per process, at its import, so its installed source is read for the wording filtered (the epoch run
    below checks a real import)."""
    import importlib.util

    from minillm.models import load_model

    monkeypatch.setenv("VERBOSE", verbose)
    quiet_libraries()
    capfd.readouterr()
    caplog.clear()
    load_model(str(tiny_setup["models"] / "tiny-student"), dtype=torch.float32)
    assert ("Loading weights" in capfd.readouterr().err) == bool(verbose)
    tied = [r for r in caplog.records if r.getMessage().startswith("The tied weights mapping")]
    assert len(tied) == (1 if verbose else 0)
    accelerator = Path(importlib.util.find_spec("deepspeed").origin).parent / "accelerator" / "real_accelerator.py"
    assert '"Setting accelerator to CPU. If you have GPU' in accelerator.read_text()


def test_evaluation_reports_its_batches(tiny_setup, monkeypatch, capsys):
    import minillm.evaluation
    from minillm.models import load_model, load_tokenizer

    student = str(tiny_setup["models"] / "tiny-student")
    model, tokenizer = load_model(student, dtype=torch.float32), load_tokenizer(student)
    monkeypatch.setattr(minillm.evaluation, "PROGRESS_DELAY", 0.0)
    capsys.readouterr()
    minillm.evaluation.evaluate(model, tokenizer, tiny_setup["data_dir"], "dev", ("r1",), batch_size=4,
                                generate=False, max_examples=20)
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" batches")[0] for line in lines] == [f"eval dev: {n}/5" for n in range(1, 6)]


def test_an_epoch_limited_run_warns_when_its_warmup_covers_it():
    from minillm.engine.config import parse_config
    from minillm.engine.trainer import warmup_warning

    def config(*flags):
        return parse_config(["--model-path", "m", "--data-dir", "d", "--save-dir", "s", "--epochs", "1", *flags])

    assert warmup_warning(config("--warmup-steps", "10"), 9, 9) == (
        "--warmup-steps 10 is not shorter than the run (--epochs 1 x 9 steps = 9 steps): the learning rate never "
        "reaches --lr")
    assert warmup_warning(config("--warmup-steps", "9"), 9, 9).endswith("the learning rate reaches --lr only at "
                                                                           "the last step")
    assert warmup_warning(config("--warmup-steps", "8"), 9, 9) is None
    # --max-steps sets the length: TrainConfig.validate has warned already, before anything loaded
    assert warmup_warning(config("--warmup-steps", "10", "--max-steps", "5"), 9, 5) is None


def test_a_folder_without_train_split_is_for_evaluation_only(tiny_setup, tmp_path, capsys):
    from minillm.data.process import build_shards, build_text
    from minillm.data.seq2seq import Seq2SeqExamples
    from minillm.engine.batches import Prompts

    raw = tmp_path / "raw"
    raw.mkdir()
    for path in (tiny_setup["work"] / "data" / "synthetic_nli" / "plain_text").glob("dev_r1-*"):
        shutil.copy(path, raw / path.name)
    out = tmp_path / "dev_only"
    build_text(raw, out, "flan", "label", publish=False)
    build_shards(out, str(tiny_setup["models"] / "tokenizer"), staged_text=True)
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == (f"[process_data_anli] {out} has no train split ({raw} has none): it can be evaluated on "
                    "(minillm.evaluate --split, or a run's --eval-split) but not trained on")
    refusal = (f"{out} has no train split (only all/dev, r1/dev): it was processed from raw data without training "
               "files, so it can be evaluated on but not trained on; train on a folder processed from raw data that "
               "has a train split")
    with pytest.raises(ValueError) as error:  # SFT, KD, SeqKD and MiniLLM's LM term read their pairs here
        Seq2SeqExamples(out, "r1", "train")
    assert str(error.value) == refusal
    with pytest.raises(ValueError) as error:  # MiniLLM's prompts
        Prompts(out, "r1", "train", 512)
    assert str(error.value) == refusal
    assert len(Seq2SeqExamples(out, "r1", "dev")) == 60


@pytest.mark.parametrize("recipe", ["train_small_xl.sh", "train_base_xl.sh", "train_large_xl.sh"])
def test_the_minillm_lm_term_reads_the_data_evaluated_on_unless_turned_off(recipe, tmp_path):
    """The T5 MiniLLM recipes: LM_DATA_DIR follows DATA_DIR (it read the default folder whatever DATA_DIR said);
    LM_DATA_DIR set and empty turns the LM term off. VERBOSE is a setting of every script (not reported as
    unknown)."""
    clean = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if name in os.environ}

    def command(**env) -> list[str]:
        done = subprocess.run(["bash", str(REPO / "t5-scripts" / "minillm" / recipe), str(tmp_path)],
                              env={**clean, "DRY_RUN": "1", "PROMPT_DATA_DIR": "prompts", "VERBOSE": "1",
                                   "DS_CONFIG": str(REPO / "configs" / "deepspeed" / "zero1_fp32.json"), **env},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0 and "VERBOSE" not in done.stderr, done.stderr
        return done.stdout.split()

    printed = command(DATA_DIR="elsewhere")
    assert printed[printed.index("--data-dir") + 1] == printed[printed.index("--lm-data-dir") + 1] == "elsewhere"
    default = command()
    assert default[default.index("--lm-data-dir") + 1] == str(tmp_path / "processed_data" / "anli" / "flan-label")
    off = command(LM_DATA_DIR="")
    assert "--lm-data-dir" not in off and "--lm-coef" not in off


def test_rollout_collection_reports_its_sampling_batches(monkeypatch, capsys):
    """RolloutBatches counts each sampling batch as the objective takes the next one (a stand-in objective that
    samples nothing: the counting is the source's)."""
    import contextlib
    from types import SimpleNamespace

    import numpy as np

    import minillm.objectives.minillm.batches as rollout_batches

    class Prompts(list):
        round_name = "r1"

    seen = []

    def collect(model, batches, generator, all_reduce_sum, all_done):
        for batch in batches:
            seen.append((len(batch["input_ids"]), capsys.readouterr().err.count("\n")))  # lines since the last
        return {}, {"sequences": 8.0, "tokens": 24.0}

    objective = SimpleNamespace(collect=collect, micro_batch=lambda store, rows, reduce: {},
                                adapter=SimpleNamespace(pad_token_id=0))
    processes = SimpleNamespace(rank=0, world_size=1, device=torch.device("cpu"),
                                sampling=SimpleNamespace(gathered=contextlib.nullcontext, all_done=None))
    config = SimpleNamespace(num_rollouts=8, batch_size=2, grad_acc=1, ppo_epochs=1, chunk_size=2, seed=1)
    prompts = Prompts(np.arange(1, 4, dtype=np.int64) for _ in range(8))
    monkeypatch.setattr(rollout_batches, "ROLLOUT_PROGRESS_DELAY", 0.0)
    source = rollout_batches.RolloutBatches(objective, None, prompts, None, config, processes)
    capsys.readouterr()
    source.micro_batches(0)
    # 8 prompts in sampling batches of 2: batch k is counted when the objective asks for batch k + 1, the last at
    # the end, with a line each (every max(1, 4 // 5) = 1)
    assert seen == [(2, 0), (2, 1), (2, 1), (2, 1)]
    assert [line.split(" batches")[0] for line in capsys.readouterr().err.splitlines()] == ["rollouts 0: 4/4"]

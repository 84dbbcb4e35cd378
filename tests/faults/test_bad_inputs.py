"""Bad inputs (issue 28): every entrypoint refuses them with one line that names the file, field or flag, a non-zero
exit status and nothing half-written.

One table, :data:`CASES`: how the bad input is made, the entrypoint it goes to (the data tools, ``minillm.finetune``,
``minillm.evaluate``, ``minillm.generate_seqkd``, a recipe's bash launch) and a fragment of the expected message.
Each case runs in a folder of its own (the bad input and the output folder the command was pointed at), and that
folder is compared file by file before and after: a refused command leaves it as it was, with no partial output and
no temporary file (the tiny setup's data and checkpoints, which cases read, are watched as well). Most cases call
the entrypoint's ``main(argv)`` in this process (a Python subprocess costs seconds of imports); one case of each
command (a data tool, the trainer, the evaluation, SeqKD generation, the bash launch) runs as the real command,
which proves its exit status and stderr end to end.

``--max-steps`` below ``--warmup-steps`` is not refused: the trainer warns in one line and trains (a short trial of a
recipe keeps the recipe's warmup); :func:`test_warmup_longer_than_the_run_warns_and_trains` holds it to that.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

REPO = Path(__file__).resolve().parents[2]
ZERO0 = str(REPO / "configs" / "deepspeed" / "zero0_fp32.json")
TOOLS = {"anli": "tools/process_data_anli.py", "dolly": "tools/process_data_dolly.py",
         "pretrain": "tools/process_data_pretrain.py"}
MODULES = {"finetune": "minillm.finetune", "evaluate": "minillm.evaluate", "generate": "minillm.generate_seqkd"}


@dataclass
class Bench:
    """What a case is built from: the tiny setup (read-only: data, student, teacher, tokenizer), a few bad
    checkpoints made once per module, and the case's own folder ``case`` (watched for leftovers)."""

    data: Path
    student: Path
    teacher: Path
    tokenizer: Path
    no_tokenizer: Path  # the student without its tokenizer files
    other_vocab: Path  # a student of 128 tokens (the data and the tiny students have 256)
    flan_tokenizer: Path  # the real Flan-T5 tokenizer: 32100 tokens
    case: Path

    def train(self, *flags: str, model: Path | str | None = None, save: str = "save") -> list[str]:
        """minillm.finetune's flags for one cheap run on the tiny data, and ``flags``."""
        return ["--model-path", str(model or self.student), "--data-dir", str(self.data),
                "--save-dir", str(self.case / save), "--deepspeed-config", ZERO0, "--batch-size", "4",
                "--train-round", "r1", "--eval-rounds", "r1", "--max-steps", "1", "--no-eval-generate",
                "--eval-max-examples", "4", *flags]

    def minillm(self, *flags: str) -> list[str]:
        return self.train("--type", "minillm", "--teacher-model-path", str(self.teacher), "--num-rollouts", "4",
                          "--chunk-size", "4", "--ppo-epochs", "1", "--rollout-max-new-tokens", "2", *flags)

    def write(self, relative: str, text: str) -> Path:
        path = self.case / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def raw_anli(self, line: str, lines_before: int = 0) -> Path:
        """An original-layout ANLI folder whose R1/train.jsonl ends with ``line``."""
        good = {"uid": "u0", "context": "A man sits.", "hypothesis": "A man is seated.", "label": "e"}
        rows = [json.dumps({**good, "uid": f"u{i}"}) for i in range(lines_before)]
        self.write("raw/R1/train.jsonl", "\n".join([*rows, line]) + "\n")
        return self.case / "raw"

    def dolly(self, line: str, lines_before: int = 0) -> Path:
        good = {"instruction": "Say hi.", "context": "", "response": "Hi."}
        rows = [json.dumps(good) for _ in range(lines_before)]
        return self.write("dolly.jsonl", "\n".join([*rows, line]) + "\n")


@dataclass
class Case:
    id: str
    entry: str  # a key of TOOLS or MODULES, or "launch" (a t5-scripts recipe)
    make: Callable[[Bench], list[str]]  # the bad input, made under bench.case; returns the argv
    expect: tuple[str, ...]  # fragments of the message line ("{case}" stands for the case's folder)
    subprocess: bool = False
    setup: Callable[[Bench, pytest.MonkeyPatch], None] | None = None  # in-process preparation (monkeypatches)


def _good_record(**fields) -> str:
    return json.dumps({"uid": "u9", "context": "A man sits.", "hypothesis": "A man is seated.", "label": "e", **fields})


def _read_only_save_dir(bench: Bench) -> list[str]:
    folder = bench.case / "save"
    folder.mkdir()
    make_read_only(folder)
    return bench.train(save="save")


def _save_dir_under_a_file(bench: Bench) -> list[str]:
    bench.write("run", "a file where a folder of the path should be")
    return bench.train(save="run/save")


def make_read_only(folder: Path) -> None:
    """No new entries in ``folder``, for root too (which ignores mode bits): mode 555 and, as root, the immutable
    attribute. Skips (with the reason) where neither holds, rather than let a writable folder pass."""
    folder.chmod(0o555)
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], capture_output=True)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip(f"{folder} cannot be made read-only here (root without chattr +i on this file system)")


def _undo_read_only(folder: Path) -> None:
    if folder.exists():
        if os.geteuid() == 0:
            subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o755)


def _two_processes(bench: Bench, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 of a world of two: the trainer's set-up sees two processes (no process group is needed before the
    check that refuses the case)."""
    import minillm.engine.trainer as trainer

    monkeypatch.setattr(trainer, "init_distributed", lambda *args, **kwargs: (0, 2, 0))


def _empty_prompt_folder(bench: Bench) -> Path:
    """A processed folder with the data's meta.json and an empty prompt/r1 (the shards never written)."""
    folder = bench.case / "prompts"
    (folder / "prompt" / "r1").mkdir(parents=True)
    shutil.copy(bench.data / "meta.json", folder / "meta.json")
    return folder


def _hostfile(bench: Bench) -> list[str]:
    bench.write("hostfile", "# two nodes, one mistyped\nlocalhost slots=1\nnode-h6-unknown.invalid slots=1\n")
    return []


CASES = [
    # ---------------------------------------------------------------- data processing: tools/process_data_*.py
    Case("anli-missing-raw-folder", "anli",
         lambda b: ["--raw-dir", str(b.case / "nope"), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer)],
         ("{case}/nope: raw data folder not found",), subprocess=True),
    Case("anli-empty-raw-folder", "anli",
         lambda b: ["--raw-dir", str(b.write("raw/R1/.keep", "").parent.parent), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer)],
         ("no original-layout split files",)),
    Case("anli-empty-split-file", "anli",
         lambda b: ["--raw-dir", str(b.write("raw/R1/train.jsonl", "\n").parent.parent), "--out-dir",
                    str(b.case / "out"), "--tokenizer", str(b.tokenizer)],
         ("{case}/raw/R1/train.jsonl: no examples",)),
    Case("anli-bad-json-line", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli('{"uid": "u3", "context": ', lines_before=2)),
                    "--out-dir", str(b.case / "out"), "--tokenizer", str(b.tokenizer)],
         ("{case}/raw/R1/train.jsonl:3: not valid JSON",)),
    Case("anli-missing-field", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(json.dumps({"uid": "u1", "context": "c", "label": "e"}))),
                    "--out-dir", str(b.case / "out"), "--tokenizer", str(b.tokenizer)],
         ("{case}/raw/R1/train.jsonl:1: missing field(s) hypothesis",)),
    Case("anli-unknown-label", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(_good_record(label="entailment"))), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer)],
         ("{case}/raw/R1/train.jsonl:1: field label is 'entailment', expected one of e, n, c",)),
    Case("anli-bad-max-prompt-length", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(_good_record())), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer), "--max-prompt-length", "2"],
         ("MAX_PROMPT_LENGTH=2: too small",)),
    Case("anli-out-dir-is-a-file", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(_good_record())), "--out-dir", str(b.write("out", "a file")),
                    "--tokenizer", str(b.tokenizer)],
         ("--out-dir {case}/out",)),
    Case("anli-missing-tokenizer", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(_good_record())), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.case / "no_tokenizer")],
         ("TOKENIZER={case}/no_tokenizer: cannot load it",)),
    Case("anli-bad-dtype", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(_good_record())), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer), "--dtype", "uint8"],
         ("DTYPE='uint8': choose auto, uint16 or int32",)),
    Case("anli-negative-shard-size", "anli",
         lambda b: ["--raw-dir", str(b.raw_anli(_good_record())), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer), "--shard-size", "-1"],
         ("error: argument --shard-size: invalid non-negative integer value: '-1'",)),
    Case("dolly-negative-shard-size", "dolly",
         lambda b: ["--raw-file", str(b.write("dolly.jsonl", "")), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer), "--shard-size", "-1"],
         ("error: argument --shard-size: invalid non-negative integer value: '-1'",)),
    Case("dolly-missing-file", "dolly",
         lambda b: ["--raw-file", str(b.case / "dolly.jsonl"), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer)],
         ("{case}/dolly.jsonl: Dolly file not found",)),
    Case("dolly-empty-file", "dolly",
         lambda b: ["--raw-file", str(b.write("dolly.jsonl", "")), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer)],
         ("{case}/dolly.jsonl: no examples",)),
    Case("dolly-bad-json-line", "dolly",
         lambda b: ["--raw-file", str(b.dolly("{not json", lines_before=4)), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer)],
         ("{case}/dolly.jsonl:5: not valid JSON",)),
    Case("dolly-missing-response", "dolly",
         lambda b: ["--raw-file", str(b.dolly(json.dumps({"instruction": "Say hi."}), lines_before=1)),
                    "--out-dir", str(b.case / "out"), "--tokenizer", str(b.tokenizer)],
         ("{case}/dolly.jsonl:2: missing field response (or output)",)),
    Case("dolly-dev-test-take-every-row", "dolly",
         lambda b: ["--raw-file", str(b.dolly(json.dumps({"instruction": "Say hi.", "response": "Hi."}),
                                              lines_before=2)),
                    "--out-dir", str(b.case / "out"), "--tokenizer", str(b.tokenizer), "--dev-num", "2",
                    "--test-num", "1"],
         ("3 examples leave none for train after DEV_NUM=2 and TEST_NUM=1",)),
    Case("pretrain-missing-corpus-folder", "pretrain",
         lambda b: ["--corpus-dir", str(b.case / "corpus"), "--out-dir", str(b.case / "out"),
                    "--tokenizer", str(b.tokenizer), "--model-type", "causal"],
         ("{case}/corpus: corpus folder not found",)),
    Case("pretrain-empty-corpus-folder", "pretrain",
         lambda b: ["--corpus-dir", str(b.write("corpus/notes.md", "not a corpus file").parent), "--out-dir",
                    str(b.case / "out"), "--tokenizer", str(b.tokenizer), "--model-type", "causal"],
         ("{case}/corpus: no .txt or .jsonl files",)),
    Case("pretrain-jsonl-without-text", "pretrain",
         lambda b: ["--corpus-dir", str(b.write("corpus/a.jsonl", '{"text": "one"}\n{"body": "two"}\n').parent),
                    "--out-dir", str(b.case / "out"), "--tokenizer", str(b.tokenizer), "--model-type", "causal"],
         ("{case}/corpus/a.jsonl:2: field text is missing",)),
    Case("pretrain-bad-max-length", "pretrain",
         lambda b: ["--corpus-dir", str(b.write("corpus/a.txt", "one two three\n").parent), "--out-dir",
                    str(b.case / "out"), "--tokenizer", str(b.tokenizer), "--model-type", "causal",
                    "--max-length", "1"],
         ("MAX_LENGTH=1: a chunk needs at least 2 tokens",)),
    # ---------------------------------------------------------------- training: python -m minillm.finetune
    Case("train-checkpoint-without-tokenizer", "finetune", lambda b: b.train(model=b.no_tokenizer),
         ("--model-path", "{no_tokenizer}", "no tokenizer files")),
    Case("train-tokenizer-not-the-datas", "finetune",
         lambda b: b.train("--tokenizer-path", str(b.flan_tokenizer)),
         ("--tokenizer-path", "tokenizer vocab_size 32100", "meta.json has 256")),
    Case("train-model-not-the-datas", "finetune", lambda b: b.train(model=b.other_vocab),
         ("--model-path {other_vocab}: embedding has 128 rows but the data's vocab_size is 256",)),
    Case("train-mistyped-relative-checkpoint", "finetune", lambda b: b.train(model="runs/sft/bset"),
         ("--model-path runs/sft/bset: cannot load it (no such folder)",), subprocess=True),
    Case("train-mistyped-dotted-checkpoint", "finetune", lambda b: b.train(model="./runs/sft/bset"),
         ("--model-path ./runs/sft/bset: no such folder",)),
    Case("train-teacher-of-another-vocabulary", "finetune",
         lambda b: b.train("--type", "kd", "--teacher-model-path", str(b.other_vocab)),
         ("--teacher-model-path {other_vocab}: vocabulary of 128 tokens but the student",)),
    Case("train-more-processes-than-examples", "finetune", lambda b: b.train("--batch-size", "200"),
         ("300 training examples", "2 processes"), setup=_two_processes),
    Case("train-minillm-empty-prompt-folder", "finetune",
         lambda b: b.minillm("--prompt-data-dir", str(_empty_prompt_folder(b))),
         ("{case}/prompts/prompt/r1/train_0.idx: missing",)),
    Case("train-minillm-rollouts-not-divisible", "finetune",
         lambda b: b.minillm("--num-rollouts", "3"), ("--num-rollouts 3 is not a multiple of the 2 processes",),
         setup=_two_processes),
    Case("train-read-only-save-dir", "finetune", _read_only_save_dir,
         ("--save-dir {case}/save: {case}/save is not writable",)),
    Case("train-save-dir-under-a-file", "finetune", _save_dir_under_a_file,
         ("--save-dir {case}/run/save: {case}/run is a file, not a folder",)),
    Case("train-missing-data-folder", "finetune",
         lambda b: [*b.train(), "--data-dir", str(b.case / "data")], ("--data-dir {case}/data: no meta.json",)),
    Case("train-missing-train-split", "finetune", lambda b: b.train("--train-round", "dolly"),
         ("full/dolly/train_0.idx: missing",)),
    Case("train-missing-eval-split", "finetune", lambda b: b.train("--eval-split", "validation"),
         ("full/r1/validation_0.idx: missing",)),
    Case("train-unknown-objective", "finetune", lambda b: b.train("--type", "ppo"),
         ("python -m minillm.finetune: error: argument --type: invalid choice: 'ppo'",)),
    Case("train-misspelt-flag", "finetune", lambda b: b.train("--max-step", "5"),
         ("python -m minillm.finetune: error: unrecognized arguments: --max-step 5",)),
    Case("train-bad-flag-values", "finetune", lambda b: b.train("--lr", "0", "--batch-size", "0"),
         ("--batch-size must be >= 1 (got 0)", "--lr must be > 0 (got 0.0)")),
    Case("train-kd-without-teacher", "finetune", lambda b: b.train("--type", "kd"),
         ("--type kd needs --teacher-model-path",)),
    Case("train-missing-deepspeed-config", "finetune",
         lambda b: [*b.train(), "--deepspeed-config", str(b.case / "ds.json")],
         ("--deepspeed-config {case}/ds.json: file not found",)),
    # ---------------------------------------------------------------- evaluation: python -m minillm.evaluate
    Case("eval-missing-checkpoint", "evaluate",
         lambda b: ["--model-path", str(b.case / "ckpt"), "--data-dir", str(b.data), "--out-dir", str(b.case / "out")],
         ("--model-path {case}/ckpt: no config.json there",), subprocess=True),
    Case("eval-unknown-round", "evaluate",
         lambda b: ["--model-path", str(b.student), "--data-dir", str(b.data), "--rounds", "r4",
                    "--out-dir", str(b.case / "out")],
         ("--rounds r4: --data-dir", "holds no such round")),
    Case("eval-missing-split", "evaluate",
         lambda b: ["--model-path", str(b.student), "--data-dir", str(b.data), "--split", "validation",
                    "--out-dir", str(b.case / "out")],
         ("full/r1/validation_0.idx: missing",)),
    Case("eval-sampling-without-seeds", "evaluate",
         lambda b: ["--model-path", str(b.student), "--data-dir", str(b.data), "--decoding", "sample",
                    "--out-dir", str(b.case / "out")],
         ("sampling needs seeds: give --seeds",)),
    Case("eval-temperature-with-greedy", "evaluate",
         lambda b: ["--model-path", str(b.student), "--data-dir", str(b.data), "--temperature", "0.7",
                    "--out-dir", str(b.case / "out")],
         ("--temperature applies to --decoding sample only",)),
    Case("eval-seeds-without-generation", "evaluate",
         lambda b: ["--model-path", str(b.student), "--data-dir", str(b.data), "--no-generate", "--seeds", "1",
                    "--out-dir", str(b.case / "out")],
         ("--seeds sets generation, which --no-generate skips",)),
    Case("eval-checkpoint-without-tokenizer", "evaluate",
         lambda b: ["--model-path", str(b.no_tokenizer), "--data-dir", str(b.data), "--out-dir", str(b.case / "out")],
         ("--model-path {no_tokenizer} holds no tokenizer; pass --tokenizer-path",)),
    Case("eval-teacher-of-another-vocabulary", "evaluate",
         lambda b: ["--model-path", str(b.student), "--data-dir", str(b.data), "--teacher-model-path",
                    str(b.other_vocab), "--out-dir", str(b.case / "out")],
         ("--teacher-model-path {other_vocab}: vocabulary of 128",)),
    # ---------------------------------------------------------------- generation: python -m minillm.generate_seqkd
    Case("seqkd-missing-data-folder", "generate",
         lambda b: ["--model-path", str(b.teacher), "--data-dir", str(b.case / "data"), "--out-dir",
                    str(b.case / "out")],
         ("{case}/data/meta.json: missing; --data-dir",), subprocess=True),
    Case("seqkd-unknown-round", "generate",
         lambda b: ["--model-path", str(b.teacher), "--data-dir", str(b.data), "--rounds", "r4", "--out-dir",
                    str(b.case / "out")],
         ("--rounds r4: not a round of --data-dir",)),
    Case("seqkd-samples-with-greedy", "generate",
         lambda b: ["--model-path", str(b.teacher), "--data-dir", str(b.data), "--num-samples", "2", "--out-dir",
                    str(b.case / "out")],
         ("python -m minillm.generate_seqkd: error: --num-samples 2 needs --decoding sample",)),
    Case("seqkd-out-dir-is-a-file", "generate",
         lambda b: ["--model-path", str(b.teacher), "--data-dir", str(b.data), "--out-dir", str(b.write("out", "x"))],
         ("--out-dir {case}/out: exists and is not a folder",)),
    Case("seqkd-teacher-of-another-vocabulary", "generate",
         lambda b: ["--model-path", str(b.other_vocab), "--data-dir", str(b.data), "--out-dir", str(b.case / "out")],
         ("--model-path {other_vocab}: vocabulary of 128 tokens, but --data-dir", "tokenised with 256")),
    # ---------------------------------------------------------------- the bash launch (t5-scripts/common.sh)
    Case("launch-hostfile-unknown-host", "launch", _hostfile,
         ("HOSTFILE={case}/hostfile", "node-h6-unknown.invalid"), subprocess=True),
    Case("launch-hostfile-missing", "launch", lambda b: [],
         ("HOSTFILE={case}/hostfile not found",), subprocess=True),
]


@pytest.fixture(scope="module")
def made(tiny_setup, flan_t5_tokenizer_dir, tmp_path_factory) -> dict:
    """The bad checkpoints every case may use, made once."""
    from transformers import AutoTokenizer

    from minillm.models import TOKENIZER_FILES
    from minillm.models.tiny import build_model, save_checkpoint

    root = tmp_path_factory.mktemp("bad_inputs")
    student = tiny_setup["models"] / "tiny-student"
    no_tokenizer = root / "no_tokenizer"
    no_tokenizer.mkdir()
    for path in student.iterdir():
        if path.name not in TOKENIZER_FILES and path.name != "spiece.model":
            shutil.copy(path, no_tokenizer / path.name)
    tokenizer = AutoTokenizer.from_pretrained(tiny_setup["models"] / "tokenizer")
    other_vocab = save_checkpoint(build_model("tiny-student", 128), tokenizer, root / "other_vocab")
    return {"data": tiny_setup["data_dir"], "student": student, "teacher": tiny_setup["models"] / "tiny-teacher",
            "tokenizer": tiny_setup["models"] / "tokenizer", "no_tokenizer": no_tokenizer,
            "other_vocab": other_vocab, "flan_tokenizer": flan_t5_tokenizer_dir}


def snapshot(bench: Bench) -> dict:
    """Every entry under the case's folder and the tiny setup's data and checkpoints: path -> (kind, size,
    modification time)."""
    folders = (bench.case, bench.data, bench.student.parent, bench.no_tokenizer, bench.other_vocab)
    return {str(p): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for folder in folders for p in sorted(folder.rglob("*"))}


def _tool_main(name: str):
    spec = importlib.util.spec_from_file_location(f"bad_inputs_{name}", REPO / TOOLS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_in_process(entry: str, argv: list[str], capsys) -> tuple[int, str]:
    """(exit status, stderr) of ``entry``'s ``main(argv)``, as the interpreter would end it: a returned status, a
    SystemExit's code, or a SystemExit message (printed, status 1)."""
    main = _tool_main(entry) if entry in TOOLS else importlib.import_module(MODULES[entry]).main
    capsys.readouterr()
    try:
        status = main(argv)
    except SystemExit as end:
        status = end.code
        if isinstance(status, str):
            print(status, file=sys.stderr)
            status = 1
    finally:
        import torch.distributed as dist

        if dist.is_initialized():  # generate_seqkd returns its refusals with its one-process group still up
            dist.destroy_process_group()
    return status or 0, capsys.readouterr().err


def run_subprocess(entry: str, argv: list[str], bench: Bench) -> tuple[int, str]:
    environment = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        environment.pop(name, None)
    if entry == "launch":  # a recipe, as a user starts it on two nodes
        environment.update(HOSTFILE=str(bench.case / "hostfile"), NUM_NODES="2", NUM_GPUS="1",
                           CKPT=str(bench.student), DATA_DIR=str(bench.data), SAVE_DIR=str(bench.case / "save"),
                           DS_CONFIG=ZERO0)
        command = ["bash", str(REPO / "t5-scripts" / "sft" / "sft_small.sh"), str(bench.case)]
    elif entry in TOOLS:
        command = [sys.executable, str(REPO / TOOLS[entry]), *argv]
    else:
        command = [sys.executable, "-m", MODULES[entry], *argv]
    done = subprocess.run(command, cwd=bench.case, env=environment, capture_output=True, text=True, timeout=180)
    return done.returncode, done.stderr


class EngineReached(Exception):
    """Raised in place of ``deepspeed.initialize``: the run got past every check of its input."""


def refuse_before_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    """In-process runs must be refused before the DeepSpeed engine is built: a refusal later is after the run has
    started (and an engine built here would leave DeepSpeed's process-group caches pointing at a destroyed group for
    every later run in this process)."""
    import deepspeed

    def initialize(*args, **kwargs):
        raise EngineReached("the run reached deepspeed.initialize")

    monkeypatch.setattr(deepspeed, "initialize", initialize)


@pytest.fixture
def restored_environment():
    """The process environment as it was: an in-process trainer sets RANK, WORLD_SIZE, MASTER_PORT, ..."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_is_refused_in_one_line(case: Case, made, tmp_path, capsys, monkeypatch, restored_environment):
    bench = Bench(**made, case=tmp_path / "case")
    bench.case.mkdir()
    monkeypatch.chdir(bench.case)
    try:
        argv = case.make(bench)
        if case.setup is not None:
            case.setup(bench, monkeypatch)
        if case.entry == "finetune" and not case.subprocess:
            refuse_before_the_engine(monkeypatch)
        before = snapshot(bench)
        if case.subprocess:
            status, stderr = run_subprocess(case.entry, argv, bench)
        else:
            status, stderr = run_in_process(case.entry, argv, capsys)
        after = snapshot(bench)
    finally:
        _undo_read_only(bench.case / "save")
    assert status != 0, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    message = lines[-1]
    names = {"case": bench.case, "no_tokenizer": bench.no_tokenizer, "other_vocab": bench.other_vocab,
             "flan_tokenizer": bench.flan_tokenizer}
    for fragment in case.expect:
        assert fragment.format(**names) in message, stderr[-3000:]
    assert after == before, f"left behind: {sorted(set(after) ^ set(before))} / changed"


def test_warmup_longer_than_the_run_warns_and_trains(made, tmp_path, capsys, monkeypatch, restored_environment):
    """--max-steps below --warmup-steps is a warning, not a refusal: the schedule is still defined (the rate climbs
    to max_steps / warmup_steps of --lr), and a short trial of a recipe keeps the recipe's warmup (MiniLLM's 100
    steps). One line says so, and the run goes on to build its engine."""
    from minillm.finetune import main

    bench = Bench(**made, case=tmp_path)
    refuse_before_the_engine(monkeypatch)
    capsys.readouterr()
    with pytest.raises(EngineReached):
        main(bench.train("--warmup-steps", "5"))
    warnings = [line for line in capsys.readouterr().err.splitlines() if "--warmup-steps" in line]
    assert warnings == ["--warmup-steps 5 is longer than the run (--max-steps 1): the learning rate never reaches --lr"]

"""Every launch script under scripts/ and t5-scripts/, exercised without running anything, so no recipe can rot
unnoticed: a renamed flag, a removed choice or a wrong path fails here, not hours into a cluster job.

Each script runs with DRY_RUN=1 (t5-scripts/common.sh: the command it would start is printed as one shell-quoted
line, nothing runs and nothing is created) and BASE a fresh empty folder, and the printed command is checked against
its entrypoint's own parser, in this process:

* ``minillm.finetune``: :func:`minillm.engine.config.parse_config` must accept the flags, and
  :meth:`TrainConfig.validate` must find no problem that can be judged without the run's inputs. Checkable without
  files: flag names, types and choices, required flags, ranges, cross-flag rules (a teacher for kd, --max-steps for
  minillm, --lr-min below --lr, --model-parallel with a ZeRO-3 DeepSpeed file, ...) and the DeepSpeed file, which is
  part of the repository. Not checkable, so left out: the checkpoints (folders a previous recipe trains), the
  processed data (meta.json) and what it says (seqkd's teacher targets, the metric --select-by auto resolves to).
* ``minillm.evaluate``, ``minillm.generate_seqkd`` and ``tools/*.py``: their argparse parsers (``build_parser()``
  or ``parse_args(argv)``) must accept the flags.

The multi-step jobs (run_default*.sh) start several commands in turn, so a dry run would show only the first; they
get the -h check only, which every script gets: ``-h`` prints the script's header, naming the script, and exits 0.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(REPO)) for folder in ("scripts", "t5-scripts") for p in (REPO / folder).rglob("*.sh")
                 if p.name != "common.sh")
MULTI_STEP = {script for script in SCRIPTS if Path(script).name.startswith("run_default")}
LAUNCHING = [script for script in SCRIPTS if script not in MULTI_STEP]

# Inputs a script refuses to start without, having no default for them.
REQUIRED_ENV = {
    "t5-scripts/eval/run_eval.sh": {"CKPTS": "ckpt_a ckpt_b"},
    **{f"t5-scripts/minillm/{name}": {"PROMPT_DATA_DIR": "prompt_data"}
       for name in ("train_small_xl.sh", "train_base_xl.sh", "train_large_xl.sh", "train_small_xl_no_lm.sh")},
}

# validate() problems that depend on files a dry run does not have (see the module docstring).
NEEDS_FILES = ("no such folder", "no meta.json", "training targets; build the teacher's")


def run_script(script: str, *args: str, base: Path, **env: str) -> subprocess.CompletedProcess:
    # A clean environment: a recipe variable (CKPT, NUM_GPUS, ...) set in the caller's shell would change the recipe.
    clean = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if name in os.environ}
    return subprocess.run(["bash", str(REPO / script), *args], cwd=base, env={**clean, **env},
                          capture_output=True, text=True, timeout=60)


def split_problems(message: str) -> list[str]:
    """validate() joins its problems with '; ', and each starts with the flag it is about."""
    return re.split(r"; (?=--)", message)


def entrypoint(command: list[str]) -> tuple[str, list[str]]:
    """(module or script path relative to the repository, its flags) of a printed command."""
    launcher = Path(command[0]).name
    if launcher in ("torchrun", "deepspeed"):
        at = command.index("--module")
        return command[at + 1], command[at + 2:]
    assert launcher == "python", f"unexpected launcher {command[0]}"
    if command[1] == "-m":
        return command[2], command[3:]
    return str(Path(command[1]).resolve().relative_to(REPO)), command[2:]


def argparse_entry(name: str):
    """The parse function of a module (minillm.x) or a script file (tools/x.py): build_parser().parse_args or
    parse_args; None when it has neither at module level."""
    if name.endswith(".py"):
        spec = importlib.util.spec_from_file_location(Path(name).stem, REPO / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(name)
    if hasattr(module, "build_parser"):
        return module.build_parser().parse_args
    return getattr(module, "parse_args", None)


def parse_error(parse, flags: list[str], capsys) -> str | None:
    """argparse's message when ``parse`` refuses ``flags``, else None."""
    try:
        parse(flags)
    except SystemExit:
        return capsys.readouterr().err.strip().splitlines()[-1]
    return None


def check_finetune_flags(flags: list[str], capsys) -> None:
    from minillm.engine.config import parse_config

    error = parse_error(parse_config, flags, capsys)
    assert error is None, f"minillm.finetune refuses the recipe's flags: {error}"
    try:
        parse_config(flags).validate()
    except ValueError as e:
        problems = [p for p in split_problems(str(e)) if not any(marker in p for marker in NEEDS_FILES)]
        assert not problems, "minillm.finetune's validation: " + "; ".join(problems)


def check_argparse_flags(name: str, flags: list[str], capsys) -> None:
    parse = argparse_entry(name)
    assert parse is not None, f"{name}: no importable build_parser() or parse_args(argv) to check the recipe's flags"
    error = parse_error(parse, flags, capsys)
    assert error is None, f"{name} refuses the recipe's flags: {error}"


@pytest.mark.parametrize("script", LAUNCHING)
def test_dry_run_command_parses(script, tmp_path, capsys):
    base = tmp_path / "base"
    base.mkdir()
    # PRECISION and MASTER_PORT set: the dry run needs neither torch's GPU probe nor a port search.
    result = run_script(script, str(base), base=base, DRY_RUN="1", PRECISION="bf16", MASTER_PORT="29500",
                        **REQUIRED_ENV.get(script, {}))
    assert result.returncode == 0, f"{script} with DRY_RUN=1 exited {result.returncode}: {result.stderr.strip()}"
    lines = result.stdout.splitlines()
    assert len(lines) == 1, f"{script}: a dry run prints the command alone, on one line; got {result.stdout!r}"
    assert not any(base.iterdir()), f"{script}: the dry run created {sorted(p.name for p in base.iterdir())}"
    name, flags = entrypoint(shlex.split(lines[0]))
    if name == "minillm.finetune":
        check_finetune_flags(flags, capsys)
    else:
        check_argparse_flags(name, flags, capsys)


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_the_header(script, flag, tmp_path):
    result = run_script(script, flag, base=tmp_path)
    assert result.returncode == 0, f"{script} {flag} exited {result.returncode}: {result.stderr.strip()}"
    assert script in result.stdout, f"{script} {flag}: the header's usage line should name the script"
    assert not result.stdout.startswith(("#", "!")), "the header is printed without its comment marks"
    assert not any(tmp_path.iterdir()), f"{script} {flag} created files"


def test_every_family_has_its_recipes():
    """The decoder-only command set mirrors MiniLLM's scripts (docs/commands.md maps them one to one)."""
    expected = {
        "gpt2": ["sft/sft_base", "sft/sft_medium", "sft/sft_large", "sft/sft_xlarge", "kd/kd_base", "kd/kd_medium",
                 "kd/kd_large", "seqkd/seqkd_base", "seqkd/seqkd_medium", "seqkd/seqkd_large",
                 "minillm/train_base_xl", "minillm/train_medium_xl", "minillm/train_large_xl", "eval/run_eval",
                 "tools/generate_data_seqkd"],
        "opt": ["sft/sft_1.3B", "sft/sft_2.7B", "sft/sft_6.7B", "sft/sft_13B", "eval/run_eval",
                "tools/generate_data_seqkd"]
               + [f"{method}/{prefix}_{size}_13B" for size in ("1.3B", "2.7B", "6.7B")
                  for method, prefix in (("kd", "kd"), ("seqkd", "seqkd"), ("minillm", "train"))],
        "llama": ["sft/sft_7B", "sft/sft_13B", "sft/sft_7B_mn", "kd/kd_7B_13B", "seqkd/seqkd_7B_13B",
                  "minillm/train_7B_13B", "eval/run_eval", "tools/generate_data_seqkd"],
    }
    missing = [f"scripts/{family}/{name}.sh" for family, names in expected.items() for name in names
               if f"scripts/{family}/{name}.sh" not in SCRIPTS]
    assert not missing, f"missing recipes: {missing}"


def test_model_parallel_recipes_run_zero3(tmp_path):
    """MiniLLM's model-parallel recipes keep --model-parallel-size 4 and run ZeRO-3, which serves it here."""
    base = tmp_path / "base"
    base.mkdir()
    result = run_script("scripts/opt/sft/sft_13B.sh", str(base), base=base, DRY_RUN="1", PRECISION="bf16",
                        MASTER_PORT="29500")
    command = shlex.split(result.stdout)
    assert command[command.index("--model-parallel-size") + 1] == "4"
    assert Path(command[command.index("--deepspeed-config") + 1]).name.startswith("zero3")


def test_two_node_recipe_uses_the_deepspeed_launcher(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    result = run_script("scripts/llama/sft/sft_7B_mn.sh", str(base), base=base, DRY_RUN="1", PRECISION="bf16",
                        MASTER_PORT="29500")
    command = shlex.split(result.stdout)
    assert command[0] == "deepspeed"
    assert command[command.index("--num_nodes") + 1] == "2"
    assert Path(command[command.index("--hostfile") + 1]).is_file()


# ---- Safe defaults and no silently ignored settings (issue 27) ----------------------------------------------------

def fake_bin(tmp_path: Path, **programs: str) -> str:
    """A folder of fake executables (name -> bash body), put first on PATH."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, body in programs.items():
        (folder / name).write_text(f"#!/usr/bin/env bash\n{body}\n")
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def dry_run_kd_small(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = tmp_path / "base"
    base.mkdir(exist_ok=True)
    env = {"DRY_RUN": "1", "PRECISION": "bf16", "MASTER_PORT": "29500", **env}
    result = run_script("t5-scripts/kd/kd_small.sh", str(base), *args, base=base, **env)
    assert result.returncode == 0, result.stderr
    return result


def processes(result: subprocess.CompletedProcess) -> int:
    command = shlex.split(result.stdout.splitlines()[-1])
    return int(command[command.index("--nproc-per-node") + 1]) if command[0] == "torchrun" else 1


def test_num_gpus_defaults_to_one_without_a_gpu(tmp_path):
    path = fake_bin(tmp_path, **{"nvidia-smi": "exit 9"})  # no GPU here, whatever this machine has
    result = dry_run_kd_small(tmp_path, PATH=path)
    assert shlex.split(result.stdout)[:3] == ["python", "-m", "minillm.finetune"]


def test_num_gpus_defaults_to_the_visible_gpus(tmp_path):
    listing = "\n".join(f"GPU {i}: NVIDIA A100-SXM4-80GB (UUID: GPU-{i})" for i in range(4))
    path = fake_bin(tmp_path, **{"nvidia-smi": f"[[ \"$1\" == -L ]] && printf '%s\\n' '{listing}'"})
    assert processes(dry_run_kd_small(tmp_path, PATH=path)) == 4
    assert processes(dry_run_kd_small(tmp_path, PATH=path, CUDA_VISIBLE_DEVICES="1,3")) == 2
    assert processes(dry_run_kd_small(tmp_path, PATH=path, CUDA_VISIBLE_DEVICES="")) == 1
    # the second argument and an explicit NUM_GPUS still win
    assert processes(dry_run_kd_small(tmp_path, "2", PATH=path, NUM_GPUS="3")) == 2
    assert processes(dry_run_kd_small(tmp_path, PATH=path, NUM_GPUS="3")) == 3


def test_a_misspelt_setting_is_reported_with_the_nearest_name(tmp_path):
    result = dry_run_kd_small(tmp_path, MAX_STEP="5", TRAIN_ROUND="r1")
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 2, result.stderr
    assert "MAX_STEP is not a setting of kd_small.sh" in warnings[0] and "did you mean MAX_STEPS?" in warnings[0]
    assert "TRAIN_ROUND is not a setting of kd_small.sh" in warnings[1]
    assert len(result.stdout.splitlines()) == 1  # the dry run's command, alone on stdout
    clean = dry_run_kd_small(tmp_path, MAX_STEPS="5", CUDA_VISIBLE_DEVICES="0", OMP_NUM_THREADS="1")
    assert "WARNING" not in clean.stderr and "--max-steps 5" in clean.stdout


def test_a_setting_of_the_calling_script_is_not_reported_by_the_recipe_it_calls(tmp_path):
    # run_default.sh exports its own settings (TRAIN_ROUND, SEED, ...) and calls recipes that do not read them.
    outer = tmp_path / "outer.sh"
    outer.write_text(f'source "{REPO}/t5-scripts/common.sh"\nexport TRAIN_ROUND="${{TRAIN_ROUND:-r1}}"\n'
                     f'bash "{REPO}/t5-scripts/kd/kd_small.sh" "$1"\n')
    base = tmp_path / "base"
    base.mkdir()
    clean = {name: os.environ[name] for name in ("PATH", "HOME", "LANG", "VIRTUAL_ENV") if name in os.environ}
    env = {**clean, "DRY_RUN": "1", "PRECISION": "bf16", "MASTER_PORT": "29500", "MAX_STEP": "5"}
    result = subprocess.run(["bash", str(outer), str(base)], cwd=base, env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "WARNING" in line]
    assert len(warnings) == 1 and "MAX_STEP is not a setting of kd_small.sh" in warnings[0], result.stderr


def test_more_processes_than_cores_warns(tmp_path):
    cores = int(subprocess.run(["env", "-u", "OMP_NUM_THREADS", "-u", "OMP_THREAD_LIMIT", "nproc"],
                               capture_output=True, text=True).stdout)
    result = dry_run_kd_small(tmp_path, str(cores + 1))
    assert f"NUM_GPUS={cores + 1} processes per node outnumber this node's {cores} cores" in result.stderr
    assert "outnumber" not in dry_run_kd_small(tmp_path, str(cores)).stderr


def test_the_launch_line_gives_the_global_batch(tmp_path):
    # A fake python runs in place of the trainer (and hands every other call to the real one).
    real = subprocess.run(["bash", "-c", "command -v python"], capture_output=True, text=True).stdout.strip()
    path = fake_bin(tmp_path, python=f'[[ "$1 $2" == "-m minillm.finetune" ]] && {{ echo TRAINER; exit 0; }}\n'
                                     f'exec "{real}" "$@"')
    base = tmp_path / "base"
    base.mkdir()
    result = run_script("t5-scripts/kd/kd_small.sh", str(base), "1", base=base, PATH=path, PRECISION="bf16",
                        MASTER_PORT="29500", VIRTUAL_ENV=str(tmp_path), BATCH_SIZE="4", GRAD_ACC="3")
    assert result.returncode == 0, result.stderr
    launch, trainer = result.stdout.splitlines()
    assert launch.startswith("launch_training: 1 node(s) x 1 process(es), global batch 12 ")
    assert "(BATCH_SIZE 4 x 1 process(es) x GRAD_ACC 3)" in launch and trainer == "TRAINER"

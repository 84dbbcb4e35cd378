"""install.sh's torch build choice (issue 26): tools/choose_torch_build.py on recorded ``nvidia-smi`` outputs
(tests/data/nvidia_smi/: the plain table and the ``--query-gpu=name,compute_cap,driver_version --format=csv,noheader``
csv of each node), the command line install.sh runs, and install.sh itself up to its stamp with a fake nvidia-smi
(no pip, no network: the refusal exits before the venv, and a matching stamp ends the run). Then the package it
installs (issue 27): editable from this checkout, with its console commands, and beaten by a copy first on sys.path
as mutation testing needs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from minillm_helpers import load_tool

choose_torch_build = load_tool("choose_torch_build")
BUILDS, DEFAULT_TORCH_VERSION = choose_torch_build.BUILDS, choose_torch_build.DEFAULT_TORCH_VERSION
Choice, Refusal, choose = choose_torch_build.Choice, choose_torch_build.Refusal, choose_torch_build.choose
has_kernels, parse_query, parse_smi = (choose_torch_build.has_kernels, choose_torch_build.parse_query,
                                       choose_torch_build.parse_smi)

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data" / "nvidia_smi"
TOOL = REPO / "tools" / "choose_torch_build.py"
CU126 = "https://download.pytorch.org/whl/cu126"


def recorded(case: str) -> tuple[str, str]:
    return (DATA / f"{case}.smi.txt").read_text(), (DATA / f"{case}.query.csv").read_text()


# The decision table: recorded node -> (tag, index, pip requirement, torch.version.cuda prefix) or a refusal.
TABLE = {
    "v100_driver470_cuda11.4": None,
    "v100_driver535_cuda12.2": ("cu126", CU126, "torch==2.13.0+cu126", "12.6"),
    "v100_driver580_cuda13.0": ("cu126", CU126, "torch==2.13.0+cu126", "12.6"),
    "a100_driver550_cuda12.4": ("cu126", CU126, "torch==2.13.0+cu126", "12.6"),
    "h100_driver570_cuda12.8": ("cu126", CU126, "torch==2.13.0+cu126", "12.6"),
    "h100_driver580_cuda13.0": ("cu130", "pypi", "torch==2.13.0", "13"),
    "mixed_v100_a100_driver580_cuda13.0": ("cu126", CU126, "torch==2.13.0+cu126", "12.6"),
    "failing_no_driver": ("cpu", "pypi", "torch==2.13.0", "-"),
    "failing_nvml_mismatch": ("cpu", "pypi", "torch==2.13.0", "-"),
}


def test_every_recording_is_in_the_table():
    assert {path.name.split(".smi.txt")[0] for path in DATA.glob("*.smi.txt")} == set(TABLE)


@pytest.mark.parametrize("case", sorted(TABLE))
def test_recorded_node(case):
    choice = choose(*recorded(case), torch_version="2.13.0")
    if TABLE[case] is None:
        assert isinstance(choice, Refusal)
    else:
        assert isinstance(choice, Choice), choice
        assert tuple(choice[:4]) == TABLE[case]


def test_no_nvidia_smi_is_the_cpu_build_from_pypi_as_before():
    assert choose(None, None, "2.13.0") == Choice("cpu", "pypi", "torch==2.13.0", "-", "no nvidia-smi")


def test_v100_on_a_cuda11_driver_is_refused_in_one_line_naming_driver_gpu_and_fixes():
    message = choose(*recorded("v100_driver470_cuda11.4"), torch_version="2.13.0").message
    assert "\n" not in message
    for part in ("470.256.02", "CUDA 11.4", "8 x Tesla V100-SXM2-32GB", "newer driver", ">= 525",
                 "TORCH_VERSION=2.7.1", "TORCH_INDEX_URL=https://download.pytorch.org/whl/cu118"):
        assert part in message, part


def test_parsers_on_the_three_table_layouts_and_the_old_query():
    assert parse_smi(recorded("v100_driver470_cuda11.4")[0]) == ("470.256.02", (11, 4))
    assert parse_smi(recorded("v100_driver535_cuda12.2")[0]) == ("535.183.06", (12, 2))
    assert parse_smi(recorded("h100_driver580_cuda13.0")[0]) == ("580.95.05", (13, 0))
    assert parse_smi(recorded("failing_no_driver")[0]) == (None, None)
    gpus = parse_query(recorded("mixed_v100_a100_driver580_cuda13.0")[1])
    assert [(gpu.name, gpu.cc) for gpu in gpus] == [("Tesla V100-PCIE-32GB", (7, 0)), ("NVIDIA A100-PCIE-40GB", (8, 0))]
    old = parse_query(recorded("v100_driver470_cuda11.4")[1])  # name,driver_version: R470 has no compute_cap
    assert len(old) == 8 and old[0].name == "Tesla V100-SXM2-32GB" and old[0].cc is None
    assert parse_query((DATA / "v100_driver470_cuda11.4.query_compute_cap.txt").read_text()) == []


def synthetic(driver: str, cuda: str, *gpus: tuple[str, str]) -> tuple[str, str]:
    smi = f"| NVIDIA-SMI {driver}   Driver Version: {driver}   CUDA Version: {cuda}     |\n"
    return smi, "".join(f"{name}, {cc}, {driver}\n" for name, cc in gpus)


V100, A100, H100 = ("Tesla V100-SXM2-32GB", "7.0"), ("NVIDIA A100-SXM4-80GB", "8.0"), ("NVIDIA H100 80GB HBM3", "9.0")
B200, L40S, P100 = ("NVIDIA B200", "10.0"), ("NVIDIA L40S", "8.9"), ("Tesla P100-PCIE-16GB", "6.0")
K80 = ("Tesla K80", "3.7")


@pytest.mark.parametrize("driver, cuda, gpus, tag", [
    ("580.95.05", "13.0", [A100], "cu130"),
    ("580.95.05", "13.0", [B200], "cu130"),
    ("580.95.05", "13.0", [L40S], "cu130"),
    ("550.127.05", "12.4", [L40S], "cu126"),  # sm_86 kernels run on 8.9
    ("535.183.06", "12.2", [P100], "cu126"),
    ("525.60.13", "12.0", [V100], "cu126"),  # the oldest CUDA 12 driver (minor version compatibility)
    ("590.44.01", "13.1", [V100, H100], "cu126"),
])
def test_more_nodes(driver, cuda, gpus, tag):
    assert choose(*synthetic(driver, cuda, *gpus), "2.13.0").tag == tag


@pytest.mark.parametrize("driver, cuda, gpus, says", [
    ("570.158.01", "12.8", [B200], "install a CUDA 13 driver (>= 580) or set TORCH_VERSION"),
    ("580.95.05", "13.0", [V100, B200], "no single build covers these GPUs"),
    ("535.183.06", "12.2", [K80], "cu126 has no kernels for sm_37"),
    ("470.256.02", "11.4", [A100], "too old for torch 2.13.0"),
])
def test_refusals(driver, cuda, gpus, says):
    refusal = choose(*synthetic(driver, cuda, *gpus), "2.13.0")
    assert isinstance(refusal, Refusal) and says in refusal.message and driver in refusal.message
    assert "\n" not in refusal.message


def test_cuda_version_na_falls_back_on_the_driver_branch():
    smi = "| NVIDIA-SMI 580.95.05   Driver Version: 580.95.05   CUDA Version: N/A      |\n"
    assert choose(smi, "NVIDIA H100 80GB HBM3, 9.0, 580.95.05\n", "2.13.0").tag == "cu130"
    old = smi.replace("580.95.05", "470.256.02")
    assert isinstance(choose(old, "Tesla V100-SXM2-32GB, 470.256.02\n", "2.13.0"), Refusal)


def test_a_driver_whose_gpu_query_lists_nothing_is_refused_not_taken_for_cpu():
    refusal = choose(recorded("h100_driver580_cuda13.0")[0], "", "2.13.0")
    assert isinstance(refusal, Refusal) and "listed no GPU" in refusal.message


def test_torch_index_url_overrides_without_checks():
    for case in ("v100_driver470_cuda11.4", "h100_driver580_cuda13.0"):
        choice = choose(*recorded(case), torch_version="2.7.1", index_url="https://download.pytorch.org/whl/cu118/")
        assert tuple(choice[:4]) == ("cu118", "https://download.pytorch.org/whl/cu118/", "torch==2.7.1+cu118", "11.8")
    mirror = choose(None, None, "2.13.0", "https://pypi.example.org/simple")
    assert tuple(mirror[:4]) == ("custom", "https://pypi.example.org/simple", "torch==2.13.0", "-")
    assert choose(None, None, "2.13.0", "https://download.pytorch.org/whl/cpu").spec == "torch==2.13.0+cpu"


def test_a_torch_version_outside_the_table_needs_torch_index_url_on_a_gpu_node_only():
    refusal = choose(*recorded("v100_driver535_cuda12.2"), torch_version="2.5.1")
    assert isinstance(refusal, Refusal) and "TORCH_INDEX_URL" in refusal.message
    assert choose(*recorded("h100_driver580_cuda13.0"), torch_version="2.14.0").tag == "cu130"
    assert choose(None, None, "2.5.1").spec == "torch==2.5.1"


def test_kernel_rules():
    cu130, cu126 = BUILDS
    assert not has_kernels(cu130, (7, 0)) and has_kernels(cu126, (7, 0))
    assert has_kernels(cu126, (6, 1)) and has_kernels(cu126, (8, 9)) and not has_kernels(cu126, (10, 0))
    assert has_kernels(cu130, (12, 1)) and has_kernels(cu130, (10, 3)) and not has_kernels(cu126, (3, 7))


def test_tool_default_matches_install_sh():
    default = re.search(r'TORCH_VERSION="\$\{TORCH_VERSION:-([0-9.]+)\}"', (REPO / "install.sh").read_text())
    assert default and default.group(1) == DEFAULT_TORCH_VERSION


# --- the command line and install.sh, with a fake nvidia-smi ------------------------------------------------------

def fake_nvidia_smi(bin_dir: Path, case: str, *, no_compute_cap: bool = False) -> None:
    """An nvidia-smi that prints the recording of `case`: the table without arguments, the csv for --query-gpu (on
    an R470 recording, the compute_cap query fails as R470's does and name,driver_version answers)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    smi, query = DATA / f"{case}.smi.txt", DATA / f"{case}.query.csv"
    failing = case.startswith("failing")
    old = DATA / f"{case}.query_compute_cap.txt"
    script = bin_dir / "nvidia-smi"
    script.write_text(f"""#!/usr/bin/env bash
if [[ $# == 0 ]]; then cat '{smi}'; exit {9 if failing else 0}; fi
if [[ "$1" == --query-gpu=name,compute_cap,* && -f '{old}' ]]; then cat '{old}'; exit 2; fi
cat '{query}'; exit {9 if failing else 0}
""")
    script.chmod(0o755)


def run_tool(env_extra: dict, *args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "TORCH_INDEX_URL"}
    env.update(env_extra)
    # -I -S: no site-packages, as the system python that runs it before the venv has any
    return subprocess.run([sys.executable, "-I", "-S", str(TOOL), *args], capture_output=True, text=True, env=env,
                          timeout=60)


def test_command_line_runs_nvidia_smi_and_prints_one_tab_separated_line(tmp_path):
    fake_nvidia_smi(tmp_path / "bin", "v100_driver535_cuda12.2")
    done = run_tool({"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "TORCH_VERSION": "2.13.0"})
    assert done.returncode == 0 and done.stderr == ""
    tag, index, spec, cuda, summary = done.stdout.rstrip("\n").split("\t")
    assert (tag, index, spec, cuda) == ("cu126", CU126, "torch==2.13.0+cu126", "12.6")
    assert "8 x Tesla V100-SXM2-32GB (sm_70)" in summary and "cu130 has no kernels for sm_70" in summary


def test_command_line_falls_back_to_the_old_query_and_refuses_with_exit_3(tmp_path):
    fake_nvidia_smi(tmp_path / "bin", "v100_driver470_cuda11.4")
    done = run_tool({"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "TORCH_VERSION": "2.13.0"})
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("install.sh: NVIDIA driver 470.256.02")
    assert "8 x Tesla V100-SXM2-32GB" in done.stderr


def test_command_line_reads_recordings(tmp_path):
    done = run_tool({"TORCH_VERSION": "2.13.0"}, "--smi", str(DATA / "h100_driver580_cuda13.0.smi.txt"),
                    "--query", str(DATA / "h100_driver580_cuda13.0.query.csv"))
    assert done.stdout.split("\t")[:4] == ["cu130", "pypi", "torch==2.13.0", "13"]
    assert run_tool({}, "--no-gpu").stdout.split("\t")[:3] == ["cpu", "pypi", f"torch=={DEFAULT_TORCH_VERSION}"]


@pytest.fixture(scope="module")
def bare_env(tmp_path_factory) -> Path:
    """A venv without pip: install.sh with USE_ACTIVE_ENV=1 stamps this prefix, and would fail at once on pip."""
    env = tmp_path_factory.mktemp("env") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True, timeout=120)
    return env


INSTALLER_FILES = ("requirements.txt", "requirements-bench.txt", "requirements-dev.txt", "pyproject.toml",
                   "install.sh")


def run_install(bare_env: Path, bin_dir: Path, checkout: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "USE_ACTIVE_ENV": "1", "PATH": f"{bin_dir}:{bare_env / 'bin'}:{os.environ['PATH']}"}
    for name in ("TORCH_VERSION", "TORCH_INDEX_URL", "INSTALL_BENCH", "INSTALL_DEV", "VIRTUAL_ENV"):
        env.pop(name, None)
    return subprocess.run(["bash", str(checkout / "install.sh")], capture_output=True, text=True, env=env,
                          timeout=120)


def stamp_for(tag: str, checkout: Path = REPO) -> str:
    """What install.sh writes: a digest of its inputs (requirements, pyproject.toml, itself) and of the checkout's
    path, the torch version and the build's tag."""
    inputs = b"".join((checkout / name).read_bytes() for name in INSTALLER_FILES) + f"{checkout}\n".encode()
    return f"{hashlib.sha256(inputs).hexdigest()[:16]}-torch{DEFAULT_TORCH_VERSION}-{tag}"


def test_install_sh_refuses_a_cuda11_driver_in_one_line_before_touching_the_environment(bare_env, tmp_path):
    fake_nvidia_smi(tmp_path / "bin", "v100_driver470_cuda11.4")
    done = run_install(bare_env, tmp_path / "bin")
    assert done.returncode == 3 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "470.256.02" in done.stderr and "Tesla V100-SXM2-32GB" in done.stderr
    assert not (bare_env / ".minillm-seq2seq-installed").exists()


@pytest.mark.parametrize("case, tag", [("v100_driver535_cuda12.2", "cu126"), ("h100_driver580_cuda13.0", "cu130"),
                                       ("failing_no_driver", "cpu")])
def test_install_sh_stamp_records_the_chosen_build(bare_env, tmp_path, case, tag):
    fake_nvidia_smi(tmp_path / "bin", case)
    stamp = bare_env / ".minillm-seq2seq-installed"
    stamp.write_text(stamp_for(tag) + "\n")
    try:
        done = run_install(bare_env, tmp_path / "bin")
    finally:
        stamp.unlink()
    assert done.returncode == 0, done.stderr
    assert f"install.sh: torch build {tag}: " in done.stdout
    assert f"already installed ({stamp_for(tag)})" in done.stdout


def test_an_environment_installed_from_another_checkout_is_installed_again(bare_env, tmp_path):
    """The editable install points at one checkout: the same files in another folder do not match its stamp, so
    install.sh goes on to install (here it fails at once: the environment has no pip) and leaves the stamp alone."""
    other = tmp_path / "other_checkout"
    (other / "tools").mkdir(parents=True)
    for name in INSTALLER_FILES:
        shutil.copy(REPO / name, other / name)
    shutil.copy(TOOL, other / "tools" / TOOL.name)
    fake_nvidia_smi(tmp_path / "bin", "failing_no_driver")
    stamp = bare_env / ".minillm-seq2seq-installed"
    stamp.write_text(stamp_for("cpu") + "\n")
    try:
        done = run_install(bare_env, tmp_path / "bin", checkout=other)
        assert stamp.read_text() == stamp_for("cpu") + "\n"
    finally:
        stamp.unlink()
    assert stamp_for("cpu", other) != stamp_for("cpu")
    assert done.returncode != 0 and "already installed" not in done.stdout
    assert "install.sh: installing torch==" in done.stdout


# pyproject.toml's [project.scripts]: training, evaluation, SeqKD generation, data processing and reports.
COMMANDS = {
    "minillm-train": "minillm.finetune:main",
    "minillm-evaluate": "minillm.evaluate:main",
    "minillm-generate-seqkd": "minillm.generate_seqkd:main",
    "minillm-process-anli": "minillm.cli.process_data_anli:main",
    "minillm-process-dolly": "minillm.cli.process_data_dolly:main",
    "minillm-process-pretrain": "minillm.cli.process_data_pretrain:main",
    "minillm-process-seqkd": "minillm.cli.process_pseudo_data_seqkd:main",
    "minillm-make-dolly-sample": "minillm.cli.make_dolly_sample:main",
    "minillm-make-synthetic-nli": "minillm.cli.make_synthetic_nli:main",
    "minillm-make-tiny-models": "minillm.cli.make_tiny_models:main",
    "minillm-compare-runs": "minillm.cli.compare_runs:main",
    "minillm-report": "minillm.cli.report:main",
}


def test_the_package_is_installed_editable_from_this_checkout_with_its_commands(tmp_path):
    """``pip install -e .`` (install.sh): from another folder and without PYTHONPATH, ``import minillm`` is this
    checkout's, and every console command of pyproject.toml is installed beside the interpreter and loads."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    found = subprocess.run([sys.executable, "-c", "import minillm; print(minillm.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert Path(found.stdout.strip()) == REPO / "minillm" / "__init__.py"
    installed = {entry.name: entry for entry in importlib.metadata.entry_points(group="console_scripts")
                 if entry.name.startswith("minillm-")}
    assert {name: entry.value for name, entry in installed.items()} == COMMANDS
    for name, entry in installed.items():
        assert callable(entry.load()), name
        assert (Path(sys.executable).parent / name).is_file(), name


def test_a_console_command_runs_from_any_folder(tmp_path):
    out = tmp_path / "sample.jsonl"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([str(Path(sys.executable).parent / "minillm-make-dolly-sample"), "--out", str(out),
                           "--rows", "3"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"make_dolly_sample: 3 rows -> {out}\n"
    assert len(out.read_text().splitlines()) == 3


def test_a_copy_first_on_sys_path_wins_over_the_editable_install(tmp_path):
    """What mutation testing relies on (docs/mutation.md): mutmut runs the tests in mutants/ with its mutated copy of
    minillm first on sys.path and PYTHONPATH unset; the editable install must not shadow that copy."""
    shutil.copytree(REPO / "minillm", tmp_path / "minillm", ignore=shutil.ignore_patterns("__pycache__"))
    with (tmp_path / "minillm" / "losses.py").open("a") as losses:
        losses.write("\nMUTATED_COPY = True\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([sys.executable, "-c", "import minillm.losses as m; print(m.__file__, m.MUTATED_COPY)"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(tmp_path / "minillm" / "losses.py"), "True"]


def test_no_sys_path_edits_or_pythonpath_settings_outside_the_gpu_kit_scripts():
    """Everything imports the installed package: no file of the package, the tools, the recipes or the tests edits
    sys.path or sets PYTHONPATH, except the two scripts for GPU nodes that have not run install.sh (the offline kit's
    wheels, and the checkout itself for a Python that has not installed it)."""
    pattern = re.compile(r"sys\.path\.(insert|append)|PYTHONPATH([\"']\])?\s*=")
    allowed = {"tools/gpu_check.sh", "tools/offline_gpu_bench.sh"}
    found = sorted(str(path.relative_to(REPO)) for folder in ("minillm", "tools", "scripts", "t5-scripts", "tests")
                   for path in (REPO / folder).rglob("*") if path.suffix in (".py", ".sh")
                   and "__pycache__" not in path.parts and pattern.search(path.read_text(errors="replace")))
    assert found == sorted(allowed)

"""Which torch build install.sh installs on this machine (issue 26), from what ``nvidia-smi`` prints.

    python3 tools/choose_torch_build.py [--smi FILE --query FILE]      # install.sh runs it; stdlib only

install.sh runs this with the system python, before the virtual environment has any package. Without arguments it
runs ``nvidia-smi`` (the plain table, for the driver and its CUDA version) and
``nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader`` (each GPU's compute capability;
drivers before R510 do not know ``compute_cap``: then ``--query-gpu=name,driver_version``); ``--smi``/``--query``
read recorded outputs instead (tests/data/nvidia_smi/). ``TORCH_VERSION`` and ``TORCH_INDEX_URL`` come from the
environment. It prints one tab-separated line, ``TAG INDEX SPEC CUDA SUMMARY`` (INDEX ``pypi`` or a URL, SPEC the pip
requirement, CUDA the major[.minor] torch.version.cuda must start with or ``-``), or prints one line on stderr and
exits 3 when no build of that torch runs on this machine.

The decision, ``choose()``, is a pure function of the two texts and the two settings:
- ``TORCH_INDEX_URL`` set: that index, no check (the build tag is the URL's last part when it looks like one).
- no ``nvidia-smi``, or one that fails (no driver, no device, NVML mismatch): the CPU build, from PyPI as before.
- otherwise the first build of BUILDS (PyPI's CUDA 13 wheel, then PyTorch's cu126 index) that has kernels for every
  GPU of the node and whose CUDA major the driver runs; none: a refusal naming the driver, the GPUs and the fix.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
from typing import List, NamedTuple, Optional, Tuple

DEFAULT_TORCH_VERSION = "2.13.0"


class Build(NamedTuple):
    tag: str
    index: str  # "pypi" or a pip index URL
    cuda: Tuple[int, int]  # the CUDA runtime inside the wheel
    archs: Tuple[Tuple[int, int], ...]  # compute capabilities with kernels (SASS) in the wheel
    ptx: Optional[Tuple[int, int]]  # PTX for this capability and above (JIT-compiled by the driver)


# torch 2.12, 2.13 and 2.14, Linux x86_64. Source: pytorch/pytorch RELEASE.md, "Release Compatibility Matrix" (2.13:
# stable CUDA 12.6 and 13.0, experimental 13.2; added by pytorch/pytorch#187075) and "PyTorch CUDA Support Matrix"
# ("For Release 2.12, 2.13 and 2.14": 12.6.3 Maxwell(5.0), Pascal(6.0), Volta(7.0), Turing(7.5), Ampere(8.0, 8.6),
# Hopper(9.0); 13.0.2 and 13.2.1 Turing(7.5), Ampere(8.0, 8.6), Hopper(9.0), Blackwell(10.0, 12.0+PTX); 12.8 was
# dropped in 2.12, pytorch/pytorch#182849). CUDA 12.8+ builds lost Volta in 2.11 ("Users with sm70 will use CUDA 12.6
# wheel build", pytorch/pytorch#172352), so a V100 needs the cu126 wheels of https://download.pytorch.org/whl/cu126.
# PyPI's plain torch wheel is the CUDA 13 build since 2.11 (pytorch/pytorch#187130: "latest torch is 13.0 by
# default"); install.sh checks torch.version.cuda after installing, so a mirror serving another build is caught.
# Driver: NVIDIA's minor version compatibility (docs.nvidia.com/deploy/cuda-compatibility): a CUDA 12.x runtime runs
# on a driver >= 525 (nvidia-smi "CUDA Version" 12.0+), 13.x on >= 580; a CUDA 11.x driver runs neither.
TABLE_VERSIONS = ("2.12", "2.13", "2.14")
PYTORCH_INDEX = "https://download.pytorch.org/whl"
BUILDS = (
    Build("cu130", "pypi", (13, 0), ((7, 5), (8, 0), (8, 6), (9, 0), (10, 0), (12, 0)), (12, 0)),
    Build("cu126", f"{PYTORCH_INDEX}/cu126", (12, 6), ((5, 0), (6, 0), (7, 0), (7, 5), (8, 0), (8, 6), (9, 0)), None),
)
MIN_DRIVER = {11: 450, 12: 525, 13: 580}  # the driver branch each CUDA major needs (same NVIDIA table)
LAST_CUDA11_TORCH = "2.7.1"  # 2.7 is the last release with a CUDA 11.8 build (RELEASE.md, same matrix)


class Gpu(NamedTuple):
    name: str
    cc: Optional[Tuple[int, int]]  # None: this nvidia-smi cannot say (before R510)


class Choice(NamedTuple):
    tag: str
    index: str
    spec: str
    cuda: str  # what torch.version.cuda must start with; "-": no check
    summary: str


class Refusal(NamedTuple):
    message: str


def _version(text: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text))


def parse_smi(text: str) -> Tuple[Optional[str], Optional[Tuple[int, int]]]:
    """The driver version and the driver's CUDA version from the plain ``nvidia-smi`` table's header; (None, None)
    when nvidia-smi failed ("NVIDIA-SMI has failed ...", "No devices were found", "Failed to initialize NVML ...")."""
    driver = re.search(r"Driver Version:\s*([0-9][0-9.]*)", text)
    cuda = re.search(r"CUDA Version:\s*(\d+)\.(\d+)", text)
    return (driver.group(1) if driver else None,
            (int(cuda.group(1)), int(cuda.group(2))) if cuda else None)


def parse_query(text: str) -> List[Gpu]:
    """One Gpu per line of ``--query-gpu=name,compute_cap,driver_version`` (or ``name,driver_version``) csv."""
    gpus = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split(",")]
        if len(fields) < 2 or not re.fullmatch(r"[0-9][0-9.]*", fields[-1]):
            continue  # an error message ('Field "compute_cap" is not a valid field to query.') or a blank line
        cc = re.fullmatch(r"(\d+)\.(\d+)", fields[-2]) if len(fields) >= 3 else None
        name = ", ".join(fields[:-2] if len(fields) >= 3 else fields[:-1])
        gpus.append(Gpu(name, (int(cc.group(1)), int(cc.group(2))) if cc else None))
    return gpus


def has_kernels(build: Build, cc: Tuple[int, int]) -> bool:
    """SASS for sm_XY runs on every X.Z with Z >= Y; PTX is JIT-compiled for anything at or above it."""
    return any(arch[0] == cc[0] and arch[1] <= cc[1] for arch in build.archs) or (
        build.ptx is not None and cc >= build.ptx)


def describe_gpus(gpus: List[Gpu]) -> str:
    counts: dict = {}
    for gpu in gpus:
        counts[gpu] = counts.get(gpu, 0) + 1
    return ", ".join(f"{n} x {gpu.name}" + (" (sm_%d%d)" % gpu.cc if gpu.cc else "") for gpu, n in counts.items())


def _override(index_url: str, torch_version: str) -> Choice:
    tail = index_url.rstrip("/").rsplit("/", 1)[-1]
    tag = tail if re.fullmatch(r"cu\d{3}|cpu|rocm[0-9.]+|xpu", tail) else "custom"
    spec = f"torch=={torch_version}+{tag}" if tag != "custom" else f"torch=={torch_version}"
    cuda = f"{tag[2:-1]}.{tag[-1]}" if re.fullmatch(r"cu\d{3}", tag) else "-"  # cu118 -> 11.8
    return Choice(tag, index_url, spec, cuda, "TORCH_INDEX_URL override, not checked against this machine")


def choose(smi: Optional[str], query: Optional[str], torch_version: str = DEFAULT_TORCH_VERSION,
           index_url: Optional[str] = None) -> "Choice | Refusal":
    """smi: the plain ``nvidia-smi`` output (stdout and stderr), None when there is no nvidia-smi; query: the csv
    of the GPU query (see parse_query)."""
    if index_url:
        return _override(index_url, torch_version)
    if smi is None:
        return Choice("cpu", "pypi", f"torch=={torch_version}", "-", "no nvidia-smi")
    driver, driver_cuda = parse_smi(smi)
    if driver is None:
        first = next((line.strip() for line in smi.splitlines() if line.strip()), "no output")
        return Choice("cpu", "pypi", f"torch=={torch_version}", "-", f"nvidia-smi failed: {first}")
    if driver_cuda is None:  # "CUDA Version: N/A" (no libcuda visible): the driver branch says the same
        major = max((m for m, branch in MIN_DRIVER.items() if _version(driver)[:1] >= (branch,)), default=10)
        driver_cuda = (major, 0)
    gpus = parse_query(query or "")
    where = f"NVIDIA driver {driver} (CUDA {driver_cuda[0]}.{driver_cuda[1]})"
    fix = "set TORCH_VERSION and TORCH_INDEX_URL to a torch build for this node (docs/install.md)"
    if not gpus:
        return Refusal(f"{where} is installed but `nvidia-smi --query-gpu` listed no GPU; {fix}")
    on = f"{where} on {describe_gpus(gpus)}"
    if ".".join(torch_version.split(".")[:2]) not in TABLE_VERSIONS:
        return Refusal(f"torch {torch_version} is not in tools/choose_torch_build.py's table (torch "
                       f"{', '.join(TABLE_VERSIONS)}); for {on} also set TORCH_INDEX_URL, e.g. "
                       f"{PYTORCH_INDEX}/cu126")
    if driver_cuda[0] < min(build.cuda[0] for build in BUILDS):
        return Refusal(f"{on} is too old for torch {torch_version}: its CUDA builds need a CUDA 12 driver (>= "
                       f"{MIN_DRIVER[12]}); install a newer driver, or an older torch built for CUDA 11.8 with "
                       f"TORCH_VERSION={LAST_CUDA11_TORCH} TORCH_INDEX_URL={PYTORCH_INDEX}/cu118 (the last one; "
                       f"not tested with this repository)")
    unknown = [gpu for gpu in gpus if gpu.cc is None]
    if unknown:
        return Refusal(f"{on}: nvidia-smi does not give the compute capability of {unknown[0].name}; {fix}")
    reasons = []
    for build in BUILDS:
        missing = sorted({gpu.cc for gpu in gpus if not has_kernels(build, gpu.cc)})
        if missing:
            reasons.append(f"{build.tag} has no kernels for {', '.join('sm_%d%d' % cc for cc in missing)}")
        elif driver_cuda[0] < build.cuda[0]:
            reasons.append(f"{build.tag} needs a CUDA {build.cuda[0]} driver (>= {MIN_DRIVER[build.cuda[0]]})")
        else:
            why = f"; {'; '.join(reasons)}" if reasons else ""
            spec = f"torch=={torch_version}" + ("" if build.index == "pypi" else f"+{build.tag}")
            cuda = str(build.cuda[0]) if build.index == "pypi" else "%d.%d" % build.cuda
            return Choice(build.tag, build.index, spec, cuda, f"for {on}{why}")
    needs_driver = [r for r in reasons if "driver" in r]
    todo = (f"install a {needs_driver[0].split(' needs a ')[1]} or {fix}" if needs_driver else
            f"no single build covers these GPUs: use one environment per GPU kind, {fix}")
    return Refusal(f"no torch {torch_version} build runs on {on} ({'; '.join(reasons)}); {todo}")


def _run(command: List[str]) -> Tuple[int, str]:
    try:
        done = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:
        return 1, f"{' '.join(command)}: {error}"
    return done.returncode, done.stdout.decode(errors="replace")


def probe() -> Tuple[Optional[str], Optional[str]]:
    """What this machine's nvidia-smi prints: (plain table, GPU csv), (None, None) without nvidia-smi."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None, None
    _, smi = _run([exe])
    rc, query = _run([exe, "--query-gpu=name,compute_cap,driver_version", "--format=csv,noheader"])
    if rc != 0 or "not a valid field" in query:  # drivers before R510 have no compute_cap
        _, query = _run([exe, "--query-gpu=name,driver_version", "--format=csv,noheader"])
    return smi, query


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--smi", help="a recorded plain `nvidia-smi` output instead of running it")
    parser.add_argument("--query", help="a recorded `nvidia-smi --query-gpu=...` csv instead of running it")
    parser.add_argument("--no-gpu", action="store_true", help="as if there were no nvidia-smi")
    args = parser.parse_args(argv)
    if args.no_gpu:
        smi, query = None, None
    elif args.smi:
        smi = open(args.smi, encoding="utf-8").read()
        query = open(args.query, encoding="utf-8").read() if args.query else ""
    else:
        smi, query = probe()
    choice = choose(smi, query, os.environ.get("TORCH_VERSION") or DEFAULT_TORCH_VERSION,
                    os.environ.get("TORCH_INDEX_URL") or None)
    if isinstance(choice, Refusal):
        print(f"install.sh: {choice.message}", file=sys.stderr)
        return 3
    print("\t".join(choice))
    return 0


if __name__ == "__main__":
    sys.exit(main())

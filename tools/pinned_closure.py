"""The packages a set of installed packages needs, pinned at the versions installed in this environment.

    python tools/pinned_closure.py ROOT... [--exclude-closure-of torch] [--exclude numpy]

prints ``name==version`` (names canonical, sorted) for every ROOT and everything it requires, transitively, leaving
out requirements that apply only with an extra or whose environment marker is false here, and leaving out the
packages of ``--exclude`` and the whole closure of ``--exclude-closure-of`` (the ROOTs themselves excepted).
``tools/offline_gpu_bench.sh`` uses it to list the wheels a GPU node with its own PyTorch is missing. Markers are
evaluated for this environment (its Python and platform), since only what is installed here has a version to pin:
for a node on another Python, a requirement conditional on the Python version may be listed needlessly or missed.
"""

from __future__ import annotations

import argparse
import importlib.metadata as metadata
import sys

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name


def closure(roots: list[str]) -> dict[str, str]:
    """``{canonical name: installed version}`` of ``roots`` and all they require (extras left out)."""
    found: dict[str, str] = {}
    todo = list(roots)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in found:
            continue
        distribution = metadata.distribution(name)  # PackageNotFoundError names a missing package
        found[name] = distribution.version
        for line in distribution.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def pinned_closure(roots: list[str], exclude_closure_of: list[str] = (), exclude: list[str] = ()) -> list[str]:
    """Sorted ``name==version`` pins of :func:`closure` of ``roots`` without ``exclude`` and without the closure of
    ``exclude_closure_of``; a root itself is always kept (asked for by name, it is wanted)."""
    left_out = set(closure(list(exclude_closure_of))) | {canonicalize_name(name) for name in exclude}
    left_out -= {canonicalize_name(name) for name in roots}
    return [f"{name}=={version}" for name, version in sorted(closure(roots).items()) if name not in left_out]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    p.add_argument("roots", nargs="+", help="installed packages to start from")
    p.add_argument("--exclude-closure-of", nargs="*", default=[], help="leave out these and all they require")
    p.add_argument("--exclude", nargs="*", default=[], help="leave out these packages")
    args = p.parse_args(argv)
    try:
        pins = pinned_closure(args.roots, args.exclude_closure_of, args.exclude)
    except metadata.PackageNotFoundError as missing:
        sys.exit(f"pinned_closure: {missing.name} is not installed in {sys.prefix}: install it first")
    print("\n".join(pins))


if __name__ == "__main__":
    main()

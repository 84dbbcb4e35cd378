"""Static check of the package, the tools and the tests with pyflakes (pinned in requirements.txt): no unused
import or variable, no undefined name, no redefinition. The guide asks for no dead code; this keeps it so."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CHECKED = ("minillm", "tools", "tests")


def pyflakes(*paths) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pyflakes", *map(str, paths)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_pyflakes_reports_nothing():
    done = pyflakes(*CHECKED)
    assert done.returncode == 0 and not done.stdout and not done.stderr, done.stdout + done.stderr


def test_pyflakes_is_live(tmp_path):
    """The same command does report an unused import and an undefined name (the check above cannot pass vacuously)."""
    module = tmp_path / "flawed.py"
    module.write_text("import os\n\n\ndef f():\n    return undefined_name\n")
    done = pyflakes(module)
    assert done.returncode == 1
    assert "'os' imported but unused" in done.stdout and "undefined name 'undefined_name'" in done.stdout

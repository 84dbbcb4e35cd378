"""README.md is a guide that cannot drift from the code: its settings tables are the ones tools/recipe_settings.py
generates from the scripts, it stays about 250 lines, every relative link (README and docs/) reaches a file and
heading, every repository path it names exists and every ``--flag`` it names is one an entrypoint defines.
Text only: no torch, no subprocess beyond the generator's own functions.
"""

from __future__ import annotations

import importlib.util
import itertools
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
_spec = importlib.util.spec_from_file_location("recipe_settings", REPO / "tools" / "recipe_settings.py")
rs = importlib.util.module_from_spec(_spec)
sys.modules["recipe_settings"] = rs  # dataclasses look their module up
_spec.loader.exec_module(rs)

MAX_README_LINES = 260
# Flags of other programs: the DeepSpeed launcher's (LAUNCHER_ARGS), argparse's own, tensorboard's.
EXTERNAL_FLAGS = {"--no_ssh", "--node_rank", "--master_addr", "--help", "--logdir"}
PATH_PREFIXES = ("t5-scripts/", "scripts/", "tools/", "minillm/", "tests/", "configs/", "docs/")
MINILLM_ONLY = {"tools/convert_mp.py"}  # MiniLLM's, named in the map of its commands to this project's


def test_readme_tables_are_the_generated_ones():
    text = README.read_text()
    families = re.findall(r"<!-- settings:begin ([a-z0-9-]+) -->", text)
    assert sorted(families) == sorted(rs.FAMILIES), "every family's table, once"
    assert rs.regenerate(text) == text, "run: python tools/recipe_settings.py --write README.md"


def test_readme_is_a_guide_of_about_250_lines():
    assert len(README.read_text().splitlines()) <= MAX_README_LINES


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation but hyphens dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a markdown file, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    found = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = re.match(r"#{1,6} (.*)", line)
        if match and not in_code:
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            found.add(base if count == 0 else f"{base}-{count}")
    return found


DOCUMENTS = ["README.md", *sorted(str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md"))]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_relative_links_resolve(document):
    source = REPO / document
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", source.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        file_part, _, anchor = target.partition("#")
        path = (source.parent / file_part).resolve() if file_part else source
        if not path.exists():
            broken.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{target}: no such heading")
    assert not broken, f"{document}: {broken}"


def expand_braces(word: str) -> list[str]:
    """``sft_{small,base}.sh`` -> both names, as bash expands them."""
    match = re.search(r"\{([^{}]*,[^{}]*)\}", word)
    if not match:
        return [word]
    return list(itertools.chain.from_iterable(
        expand_braces(word[:match.start()] + choice + word[match.end():]) for choice in match.group(1).split(",")))


def test_every_repository_path_named_exists():
    text = README.read_text()
    code = re.findall(r"^```[a-z]*\n(.*?)^```", text, re.S | re.M)
    prose = re.sub(r"^```[a-z]*\n.*?^```", "", text, flags=re.S | re.M)
    pattern = r"(?<![\w./-])((?:%s)[\w./{},*-]*)" % "|".join(map(re.escape, PATH_PREFIXES))
    words = {word for part in code + re.findall(r"`([^`]+)`", prose) for word in re.findall(pattern, part)}
    assert len(words) > 30, "the README names the scripts, tools and modules a newcomer needs"
    # {SETTING} stands for a setting's value: any file there will do
    missing = [word for word in sorted(words - MINILLM_ONLY)
               for path in expand_braces(re.sub(r"\{[A-Z_]+\}", "*", word.rstrip(".,"))) if not list(REPO.glob(path))]
    assert not missing, missing


def defined_flags() -> set[str]:
    """The trainer's flags (TrainConfig's ``_flag`` fields, ``--name-with-hyphens``) and every quoted ``--flag`` of
    the other entrypoints and tools."""
    config = (REPO / "minillm" / "engine" / "config.py").read_text()
    flags = {"--" + name.replace("_", "-") for name in re.findall(r"^    (\w+): [^=\n]+= _flag\(", config, re.M)}
    sources = [REPO / "minillm" / "evaluate.py", REPO / "minillm" / "generate_seqkd.py",
               *sorted((REPO / "tools").glob("*.py")), *sorted((REPO / "minillm" / "cli").glob("*.py"))]
    return flags | {flag for source in sources
                    for flag in re.findall(r"[\"'](--[a-z0-9][a-z0-9-]*)[\"']", source.read_text())}


def test_every_flag_named_is_defined():
    named = set(re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9_-]*)", README.read_text()))
    assert {"--resume", "--write", "--gradient-checkpointing"} <= named
    unknown = sorted(named - defined_flags() - EXTERNAL_FLAGS)
    assert not unknown, f"flags the README names that no entrypoint defines: {unknown}"


# ---- the generator, on a repository of two recipes and a common.sh written here --------------------------------

COMMON_SH = """\
REPO="$(pwd)"
export VERBOSE="${VERBOSE:-0}"  # a trailing comment with ${NOT_A_SETTING:-1}
launch_module() {
  local n="${NUM_GPUS:-1}"
  echo "$n"
}
launch_training() {
  launch_module --max-steps "${MAX_STEPS:-0}" --config "${DS_CONFIG:-$REPO/configs/zero${ZERO_STAGE:-0}.json}"
}
"""
RECIPE = """\
#!/usr/bin/env bash
# ${HEADER_ONLY:-documented, not read}
source common.sh
NUM_GPUS="${2:-${NUM_GPUS:-$(default_num_gpus)}}"
: "${LR:=%s}" "${SAVE_DIR:=$BASE/results/%s}" "${KD_RATIO:?set KD_RATIO}"
launch_training
"""


@pytest.fixture
def fake_repo(tmp_path, monkeypatch):
    (tmp_path / "t5-scripts" / "sft").mkdir(parents=True)
    (tmp_path / "t5-scripts" / "common.sh").write_text(COMMON_SH)
    for name, lr in (("a", "3e-4"), ("b", "1e-4"), ("c", "5e-5"), ("d", "2e-4")):
        (tmp_path / "t5-scripts" / "sft" / f"{name}.sh").write_text(RECIPE % (lr, name))
    monkeypatch.setattr(rs, "REPO", tmp_path)
    monkeypatch.setattr(rs, "FAMILIES", {"common": ("every script", (("default", ()),)),
                                         "train": ("training", (("Flan-T5", ("t5-scripts/sft/*.sh",)),))})
    return tmp_path


def test_the_tables_come_from_the_scripts(fake_repo):
    # per setting: the recipes' own defaults first, common.sh's where a recipe sets none; core settings (those of
    # launch_module and the top level) go to the common table, with the recipes' different defaults beside them;
    # rows by name, the members of a group present in one row at the first member's place, a lone member alone
    assert rs.table("train") == "\n".join([
        "| setting | Flan-T5 | meaning |",
        "|---|---|---|",
        f"| `KD_RATIO` | *required* | {rs.MEANINGS['KD_RATIO']} |",
        f"| `LR` | `5e-5` to `3e-4`, per recipe | {rs.MEANINGS['LR']} |",
        f"| `MAX_STEPS` | `0` | {rs.MEANINGS['MAX_STEPS']} |",
        f"| `SAVE_DIR` | per recipe | {rs.MEANINGS['SAVE_DIR']} |",
        "| `ZERO_STAGE`, `DS_CONFIG` | `0` / `configs/zero{ZERO_STAGE}.json` | "
        f"{rs.GROUPS[('ZERO_STAGE', 'PRECISION', 'DS_CONFIG')]} |",
    ])
    assert rs.table("common") == "\n".join([
        "| setting | default | meaning |",
        "|---|---|---|",
        f"| `NUM_GPUS` | `1`; scripts: *the node's GPUs (1 without one)* | {rs.MEANINGS['NUM_GPUS']} |",
        f"| `VERBOSE` | `0` | {rs.MEANINGS['VERBOSE']} |",
    ])


def test_a_setting_without_a_meaning_is_refused(fake_repo, monkeypatch, capsys):
    monkeypatch.delitem(rs.MEANINGS, "LR")
    readme = fake_repo / "README.md"
    readme.write_text("<!-- settings:begin train -->\n<!-- settings:end -->\n")
    assert rs.main(["--write", str(readme)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "recipe_settings: LR: a setting read by the scripts with no meaning in tools/recipe_settings.py MEANINGS; "
        "add one line there"]
    assert readme.read_text() == "<!-- settings:begin train -->\n<!-- settings:end -->\n", "nothing written"


def test_check_fails_on_stale_tables_and_write_fixes_them(fake_repo, capsys):
    readme = fake_repo / "README.md"
    readme.write_text("intro\n<!-- settings:begin train -->\n| old |\n<!-- settings:end -->\nend\n")
    assert rs.main(["--check", str(readme)]) == 1
    assert "out of date; run python tools/recipe_settings.py --write" in capsys.readouterr().err
    assert rs.main(["--write", str(readme)]) == 0
    assert readme.read_text() == ("intro\n<!-- settings:begin train -->\n" + rs.table("train")
                                  + "\n<!-- settings:end -->\nend\n")
    assert rs.main(["--check", str(readme)]) == 0
    assert [p.name for p in fake_repo.iterdir() if p.name.endswith(".tmp")] == []


def test_grouped_settings_share_a_row_at_the_first_members_place():
    rows = [["ALSO_SELECT_BY", "`loss`", "-", "a"], ["GAMMA", "`0.95`", "-", "b"], ["LR", "`1e-4`", "`2e-4`", "c"],
            ["SELECT_BY", "`auto`", "`auto`", "d"]]
    assert rs.grouped(rows) == [["`GAMMA`", "`0.95`", "-", "b"], ["`LR`", "`1e-4`", "`2e-4`", "c"],
                                ["`SELECT_BY`, `ALSO_SELECT_BY`", "`auto` / `loss`", "`auto` / -",
                                 rs.GROUPS[("SELECT_BY", "ALSO_SELECT_BY")]]]

"""The environment settings of the bash recipes, as one markdown table per script family, read from the scripts.

Every recipe under ``t5-scripts/`` and ``scripts/{gpt2,opt,llama}/`` takes its settings from the environment with a
bash default (``: "${LR:=3e-4}"``, ``"${SPLIT:-test}"``, ``"${PROMPT_DATA_DIR:?...}"``), and the launch functions of
``t5-scripts/common.sh`` read more. This tool finds every such setting and its defaults in the scripts themselves
and in the common.sh functions each script calls, and prints per family one table of setting | default | meaning.
The meanings live in :data:`MEANINGS` below; a setting without one is an error, so a new variable cannot reach the
tables undocumented.

    python tools/recipe_settings.py                       # every family's table, on stdout
    python tools/recipe_settings.py --family t5-train     # one family
    python tools/recipe_settings.py --write README.md     # replace the tables between the file's markers
    python tools/recipe_settings.py --check README.md     # exit 1 when the file's tables are not the generated ones

The markers are ``<!-- settings:begin FAMILY -->`` and ``<!-- settings:end -->``; whatever lies between them is
replaced. ``tests/test_readme.py`` runs the check. Standard library only.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = "t5-scripts/common.sh"

# Families: name -> (title, default columns); a column is (heading, glob patterns relative to the repository).
# "common" is common.sh's own core, which every script shares.
FAMILIES: dict[str, tuple[str, tuple[tuple[str, tuple[str, ...]], ...]]] = {
    "common": ("every script (t5-scripts/common.sh)", (("default", ()),)),
    "default-job": ("the main job", (("default", ("t5-scripts/run_default*.sh",)),)),
    "train": ("training recipes", (
        ("Flan-T5 (t5-scripts/)", tuple(f"t5-scripts/{method}/*.sh" for method in ("sft", "kd", "seqkd", "minillm"))),
        ("GPT-2, OPT, LLaMA (scripts/)", tuple(f"scripts/{family}/{method}/*.sh" for family in ("gpt2", "opt", "llama")
                                               for method in ("sft", "kd", "seqkd", "minillm"))))),
    "data-eval": ("data and evaluation scripts", (
        ("Flan-T5 (t5-scripts/)", ("t5-scripts/tools/*.sh", "t5-scripts/eval/*.sh")),
        ("GPT-2, OPT, LLaMA (scripts/)", tuple(f"scripts/{family}/{folder}/*.sh" for family in ("gpt2", "opt", "llama")
                                               for folder in ("tools", "eval"))))),
}

# common.sh functions whose settings every script shares: they go in the "common" table, not the families'.
CORE_FUNCTIONS = ("exit_with_usage_if_asked", "run_or_print", "run_python", "default_precision", "default_num_gpus",
                  "warn_unknown_settings", "warn_about_launch", "free_port", "launch_module")

# Names read with a default that are not settings (the environment a script runs in).
NOT_SETTINGS = {"VIRTUAL_ENV", "TOKENIZERS_PARALLELISM"}

MEANINGS: dict[str, str] = {
    # common.sh: environment, launch
    "USE_ACTIVE_ENV": "1: use the active Python environment instead of the checkout's `.venv`",
    "VERBOSE": "1: the libraries' own output too (DeepSpeed, transformers' warnings and loading bars)",
    "DRY_RUN": "1: print the command the script would start, run and create nothing",
    "NUM_GPUS": "processes per node (a script's second argument wins)",
    "NUM_NODES": "nodes; more than 1 needs `HOSTFILE`",
    "HOSTFILE": "`hostname slots=N` per node: start through the DeepSpeed launcher (configs/hostfiles/)",
    "OMP_NUM_THREADS": "CPU threads per process",
    # training recipes (launch_training, launch_minillm)
    "CKPT": "student checkpoint: hub name or folder",
    "TEACHER_CKPT": "teacher checkpoint (KD, SeqKD generation, MiniLLM; evaluation: option KLs against it)",
    "DATA_DIR": "processed data folder (gold pairs)",
    "SAVE_DIR": "output folder: `best/`, `last/`, `metrics.jsonl`, `tensorboard/`",
    "BATCH_SIZE": "examples per process and micro-batch",
    "EVAL_BATCH_SIZE": "examples per process in evaluation",
    "GRAD_ACC": "micro-batches accumulated per optimizer step",
    "LR": "peak learning rate",
    "EPOCHS": "epochs (when `MAX_STEPS` is 0)",
    "MAX_STEPS": "optimizer steps; 0: `EPOCHS` decide",
    "WARMUP_STEPS": "linear warmup steps",
    "ZERO_STAGE": "DeepSpeed ZeRO stage: 0, 1, 2, 3, 2_offload, 3_offload",
    "PRECISION": "bf16 or fp32 (fp16 is refused for T5)",
    "DS_CONFIG": "DeepSpeed JSON; training's default `configs/deepspeed/zero{ZERO_STAGE}_{PRECISION}.json`; "
                 "evaluation and generation use it (sharded) when set or when `ZERO_STAGE` is 3*",
    "EXTRA_ARGS": "more flags, appended last so they win (e.g. `--resume`)",
    "MODEL_PARALLEL_SIZE": "MiniLLM's tensor-parallel degree; served by ZeRO-3 sharding",
    "SEED": "random seed",
    "KD_RATIO": "weight r of the divergence in `(1 - r) CE + r D`",
    "KD_LOSS": "divergence D: fkl, rkl, jsd, sfkl, srkl, tvd, akl",
    "PROMPT_DATA_DIR": "processed folder whose `prompt/` shards MiniLLM samples from",
    "LM_DATA_DIR": "gold pairs or corpus for MiniLLM's LM term; empty: no LM term",
    "LM_COEF": "weight of the LM term",
    "MAX_NEW_TOKENS": "longest generated target (rollouts, SeqKD, evaluation)",
    "TEACHER_TOPK": "keep the teacher's K most likely tokens per rollout position; 0: the whole distribution",
    # data
    "RAW_DIR": "raw ANLI (Hugging Face parquet or the original JSON lines); downloaded when empty",
    "RAW_FILE": "raw Dolly JSON lines; downloaded when absent",
    "TOKENIZER": "tokenizer: hub name or folder",
    "TEMPLATE": "prompt template",
    "TARGET": "label (the answer) or label_reason (the answer and ANLI's reason)",
    "MAX_PROMPT_LENGTH": "longest prompt in tokens (ANLI: the premise is cut; Dolly: longer ones dropped)",
    "STAGE": "text, shards or all",
    "DTYPE": "token dtype of the shards (auto, uint16, int32); generation: the model's dtype",
    "SHARD_SIZE": "items per shard; 0: one shard",
    "OUT_DIR": "output folder",
    "CORPUS_DIR": "folder of `.txt` / `.jsonl` documents for the LM corpus",
    "HF_DATASET": "Hugging Face dataset streamed instead of `CORPUS_DIR`",
    "MAX_LENGTH": "tokens per corpus chunk",
    "GEN_DIR": "the teacher's generated outputs (SeqKD)",
    "ROUNDS": "rounds to generate for",
    "SPLIT": "split to generate for or evaluate",
    "DECODING": "greedy or sample",
    # evaluation
    "CKPTS": "checkpoint folders to score, space-separated (one per line for paths with spaces)",
    "SIZE": "the students compared: `results/FAMILY/{sft,kd,seqkd,minillm}/SIZE/best`",
    "SEEDS": "sampling seeds; the scores are averaged over them",
    "default-job:SEEDS": "seeds of `run_default_seeds.sh`, one run each",
    "NO_REPEAT_NGRAM_SIZE": "ban repeating n-grams of this size in sampled answers",
    # the main job
    "VOCAB_SIZE": "tokenizer trained on the synthetic text",
    "TRAIN_ROUND": "rounds trained and selected on: r1, r2, r3 or all",
    "SKIP_TRAINING": "1: stop once the data, models and shards are built",
    "METRIC": "metric of the comparison table",
}

# How a default computed by a command reads in the tables.
COMMAND_DEFAULTS = {
    "default_num_gpus": "the node's GPUs (1 without one)",
    "default_precision": "bf16 if the GPU has it, else fp32",
    "free_port": "a free port",
    "nproc": "cores / NUM_GPUS",
}

# Settings that belong together share one row (names, defaults and meaning): the tables stay short enough to read.
GROUPS: dict[tuple[str, ...], str] = {
    ("MASTER_PORT", "LAUNCHER_ARGS"): "rendezvous port (the same on every node when each starts its own launcher); "
                                      "more launcher flags (torchrun's on one node, deepspeed's with `HOSTFILE`)",
    ("EVAL_INTERVAL", "SAVE_INTERVAL"): "steps between dev evaluations (0: every epoch) and saves of `last/` "
                                        "(0: at every evaluation)",
    ("SELECT_BY", "ALSO_SELECT_BY"): "metric that picks `best/` (auto: dev accuracy, or Rouge-L without options; loss, "
                                     "accuracy, rougeL); also keep `best_METRIC/` (loss: MiniLLM's initialisation)",
    ("KD_RATIO", "KD_LOSS", "JSD_BETA", "SKEW_ALPHA"): "KD's `(1 - r) CE + r D`: r; the divergence D (fkl, rkl, jsd, "
                                                      "sfkl, srkl, tvd, akl); beta of jsd; alpha of sfkl and srkl",
    ("MAX_STEPS", "EPOCHS", "WARMUP_STEPS"): "optimizer steps (0: `EPOCHS` decide); epochs; linear warmup steps",
    ("ZERO_STAGE", "PRECISION", "DS_CONFIG"): "DeepSpeed ZeRO stage (0, 1, 2, 3, 2_offload, 3_offload); bf16 or fp32 "
                                              "(fp16 is refused for T5); the DeepSpeed JSON (training's default "
                                              "`configs/deepspeed/zero{ZERO_STAGE}_{PRECISION}.json`; evaluation and "
                                              "generation are sharded with it when it is set or `ZERO_STAGE` is 3*)",
    ("LM_DATA_DIR", "LM_COEF"): "MiniLLM's LM term: its gold pairs or corpus (set and empty: no LM term); its weight",
    ("TEMPLATE", "TARGET"): "prompt template; ANLI's target: label (the answer) or label_reason (and ANLI's reason)",
    ("CORPUS_DIR", "HF_DATASET", "MAX_LENGTH"): "LM corpus: a folder of `.txt` / `.jsonl` documents, or a Hugging Face "
                                                "dataset streamed instead; tokens per chunk",
    ("NUM_ROLLOUTS", "CHUNK_SIZE", "PPO_EPOCHS"): "rollouts per collection (all processes); prompts per sampling call "
                                                  "and process; passes over each collection",
    ("ALPHA", "GAMMA"): "teacher mix of sampling, `(1 - alpha) q + alpha p`; discount of the long-term return",
    ("TEMPERATURE", "TOP_K", "TOP_P", "NUM_SAMPLES"): "sampling (`DECODING=sample`): temperature, top-k (0: off), "
                                                      "top-p (1.0: off), outputs per prompt",
    ("NOISE_DENSITY", "MEAN_NOISE_SPAN_LENGTH"): "T5 span corruption of the corpus: noise share, mean span length",
    ("DEV_NUM", "TEST_NUM", "TRAIN_NUM"): "examples (corpus: chunks) in dev, test and train (0: all)",
    ("TRAIN_PER_ROUND", "EVAL_PER_ROUND"): "synthetic examples per round: training; dev and test each",
    ("TEACHER_STEPS", "STUDENT_STEPS", "MINILLM_STEPS"): "steps of teacher SFT, of student SFT, KD and SeqKD (more "
                                                         "with `TRAIN_ROUND=all`), of MiniLLM",
    ("WORK", "WORK_ROOT"): "output folder of a run; of the per-seed runs (`default_seed<s>/`)",
}

DEFAULT_OPERATOR = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(:-|:=|:\?|-|=|\?)")


@dataclass(frozen=True)
class Setting:
    name: str
    default: str  # as written in the script, without the operator; "" for an empty default
    required: bool


def strip_comments(text: str) -> str:
    """The script without comment lines and trailing `` # ...`` comments (headers document; they do not set)."""
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue
        lines.append(re.sub(r"\s+#\s.*$", "", line))
    return "\n".join(lines)


def closing(text: str, start: int) -> int:
    """Index of the ``}`` closing a ``${`` whose contents begin at ``start``, across nested ``${ }`` and ``$( )``."""
    depth, i = [], start
    while i < len(text):
        pair = text[i:i + 2]
        if pair in ("${", "$("):
            depth.append("}" if pair == "${" else ")")
            i += 2
            continue
        char = text[i]
        if char == "\\":
            i += 2
            continue
        if depth and char == depth[-1]:
            depth.pop()
        elif not depth and char == "}":
            return i
        i += 1
    raise ValueError(f"unbalanced ${{ at offset {start}")


def settings_in(text: str) -> list[Setting]:
    """Every ``${NAME<op>default}`` of the code, in order."""
    found = []
    for match in DEFAULT_OPERATOR.finditer(text):
        name, operator = match.groups()
        if name in NOT_SETTINGS:
            continue
        body = text[match.end():closing(text, match.end())]
        required = "?" in operator
        found.append(Setting(name, "" if required else body, required))
    return found


def functions_of(common: str) -> tuple[str, dict[str, str]]:
    """common.sh split into its top-level code and its functions' bodies (``name() {`` ... a ``}`` line)."""
    functions, top, current, body = {}, [], None, []
    for line in common.splitlines():
        start = re.match(r"^([a-z_]+)\(\) \{", line)
        if current is None and start:
            current, body = start.group(1), []
        elif current is not None and line == "}":
            functions[current] = "\n".join(body)
            current = None
        elif current is not None:
            body.append(line)
        else:
            top.append(line)
    return "\n".join(top), functions


def called(text: str, functions: dict[str, str]) -> list[str]:
    """The common.sh functions ``text`` calls, directly or through each other, in a stable order."""
    name = re.compile(r"(?<![\w-])(%s)(?![\w-])" % "|".join(map(re.escape, sorted(functions, key=len, reverse=True))))
    seen: list[str] = []
    pending = list(dict.fromkeys(name.findall(text)))
    while pending:
        function = pending.pop(0)
        if function not in seen:
            seen.append(function)
            pending += [other for other in dict.fromkeys(name.findall(functions[function])) if other != function]
    return seen


def render_default(raw: str) -> str:
    """A default as the tables show it: ``$BASE/x`` as ``BASE/x``, ``zero${ZERO_STAGE}.json`` as
    ``zero{ZERO_STAGE}.json``, paths in the checkout relative to it, commands by what they compute (in italics)."""
    raw = raw.replace("\"", "").replace("'", "")
    if "$((" in raw:
        return next(f"*{text}*" for command, text in COMMAND_DEFAULTS.items() if command in raw)
    for command, text in COMMAND_DEFAULTS.items():
        if raw == f"$({command})":
            return f"*{text}*"
        raw = raw.replace(f"$({command})", text)
    raw = re.sub(r"\$\{?REPO\}?/", "", raw)
    raw = re.sub(r"(?<=\w)\$\{([A-Z][A-Z0-9_]*)(?::-[^}]*)?\}", r"{\1}", raw)
    raw = re.sub(r"\$\{([A-Z][A-Z0-9_]*)(?::-[^}]*)?\}", r"\1", raw)
    return re.sub(r"\$([A-Z][A-Z0-9_]*)", r"\1", raw)


def script_settings(path: Path, functions: dict[str, str], include_core: bool) -> dict[str, list[Setting]]:
    """The settings one script reads: its own defaults first, then those of the common.sh functions it calls."""
    code = strip_comments(path.read_text())
    found: dict[str, list[Setting]] = {}
    for setting in settings_in(code):
        found.setdefault(setting.name, []).append(setting)
    for name in called(code, functions):
        if name in CORE_FUNCTIONS and not include_core:
            continue
        for setting in settings_in(functions[name]):
            found.setdefault(setting.name, [setting])  # the script's own default wins
    return found


def as_number(value: str) -> float | None:
    try:
        return float(value)
    except ValueError:
        return None


def summarise(values: list[str]) -> str:
    """One cell for the defaults the scripts of a column give a setting ("" stands for an empty default)."""
    distinct = list(dict.fromkeys(values))
    non_empty = [value for value in distinct if value]
    code = lambda value: value if value.startswith("*") else f"`{value}`"  # computed defaults are in italics
    if not non_empty:
        return "unset" if distinct else "-"
    if all(as_number(value) is not None for value in non_empty):
        non_empty.sort(key=as_number)
        if len(non_empty) > 3:
            return f"{code(non_empty[0])} to {code(non_empty[-1])}, per recipe"
    if len(non_empty) > 3 or (len(non_empty) > 1 and sum(map(len, non_empty)) > 48):
        return "per recipe"
    return " or ".join(map(code, non_empty)) + (" or unset" if "" in distinct else "")


def column_scripts(patterns: tuple[str, ...]) -> list[Path]:
    return sorted({path for pattern in patterns for path in REPO.glob(pattern)})


def common_parts() -> tuple[str, dict[str, str], set[str]]:
    """common.sh's top-level code, its functions, and the settings of its core (the "common" table's)."""
    top, functions = functions_of(strip_comments((REPO / COMMON).read_text()))
    core = {setting.name for setting in settings_in(top)}
    for name in CORE_FUNCTIONS:
        core |= {setting.name for setting in settings_in(functions.get(name, ""))}
    return top, functions, core


def column_defaults(patterns: tuple[str, ...], functions: dict[str, str], keep) -> dict[str, list[str]]:
    """Setting -> the rendered defaults the scripts matched by ``patterns`` give it, for the settings ``keep``
    accepts; a script whose only default for a setting is empty (a check for "set?") counts as unset."""
    defaults: dict[str, list[str]] = {}
    for path in column_scripts(patterns):
        for name, found in script_settings(path, functions, include_core=False).items():
            if not keep(name):
                continue
            values = [render_default(setting.default) for setting in found]
            if any(setting.required for setting in found):
                values = ["*required*"]
            defaults.setdefault(name, []).extend([value for value in values if value] or [""])
    return defaults


def family_rows(family: str) -> tuple[list[str], list[list[str]]]:
    """The headings and rows (setting, one default cell per column, meaning) of a family's table, by name: the
    order does not move when a script reads its settings in another order."""
    top, functions, core = common_parts()
    columns = FAMILIES[family][1]
    if family == "common":
        own: dict[str, list[str]] = {}
        for setting in settings_in(top) + [s for name in CORE_FUNCTIONS for s in settings_in(functions.get(name, ""))]:
            own.setdefault(setting.name, []).append(render_default(setting.default))
        recipes: dict[str, list[str]] = {}
        for other, (_, other_columns) in FAMILIES.items():
            for _, patterns in other_columns if other != "common" else ():
                for name, values in column_defaults(patterns, functions, core.__contains__).items():
                    recipes.setdefault(name, []).extend(values)
        rows = []
        for name, values in sorted(own.items()):
            cell = summarise([value for value in values if value] or values)
            others = [value for value in recipes.get(name, []) if value and value not in values]
            if others:
                cell += f"; scripts: {summarise(others)}"
            rows.append([name, cell, meaning(name, family)])
        return [heading for heading, _ in columns], rows
    per_column = [column_defaults(patterns, functions, lambda name: name not in core) for _, patterns in columns]
    names = sorted({name for defaults in per_column for name in defaults})
    rows = [[name, *(summarise(defaults.get(name, [])) for defaults in per_column), meaning(name, family)]
            for name in names]
    return [heading for heading, _ in columns], rows


def meaning(name: str, family: str) -> str:
    """A setting's meaning: the family's own, the setting's, or (for a member of a group) the group's."""
    for key in (f"{family}:{name}", name):
        if key in MEANINGS:
            return MEANINGS[key]
    group = next((members for members in GROUPS if name in members), None)
    if group is not None:
        return GROUPS[group]
    raise KeyError(f"{name}: a setting read by the scripts with no meaning in tools/recipe_settings.py MEANINGS; "
                   f"add one line there")


def grouped(rows: list[list[str]]) -> list[list[str]]:
    """Rows with the members of each of :data:`GROUPS` present merged into one, in the group's order, at the place
    of the group's first member present."""
    by_name = {row[0]: row for row in rows}
    merged = []
    for row in rows:
        group = next((members for members in GROUPS if row[0] in members), None)
        present = [name for name in group if name in by_name] if group else []
        if len(present) < 2:
            merged.append([f"`{row[0]}`", *row[1:]])
        elif row[0] == present[0]:
            cells = []
            for column in range(1, len(row) - 1):
                values = [by_name[name][column] for name in present]
                cells.append("-" if all(value == "-" for value in values) else " / ".join(values))
            merged.append([", ".join(f"`{name}`" for name in present), *cells, GROUPS[group]])
    return merged


def table(family: str) -> str:
    headings, rows = family_rows(family)
    rows = grouped(rows)
    lines = ["| setting | " + " | ".join(headings) + " | meaning |", "|---" * (len(headings) + 2) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


MARKED = re.compile(r"(<!-- settings:begin ([a-z0-9-]+) -->\n)(.*?)(<!-- settings:end -->)", re.DOTALL)


def regenerate(text: str) -> str:
    """``text`` with every marked table replaced by the generated one."""
    def replace(match: re.Match) -> str:
        family = match.group(2)
        if family not in FAMILIES:
            raise KeyError(f"settings:begin {family}: no such family; families: {', '.join(FAMILIES)}")
        return f"{match.group(1)}{table(family)}\n{match.group(4)}"
    return MARKED.sub(replace, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--family", choices=list(FAMILIES), help="print one family's table (default: all)")
    parser.add_argument("--write", metavar="FILE", type=Path, help="replace the tables between the markers of FILE")
    parser.add_argument("--check", metavar="FILE", type=Path,
                        help="exit 1 when FILE's marked tables differ from the generated ones")
    args = parser.parse_args(argv)
    try:
        target = args.write or args.check
        if target is None:
            for family in [args.family] if args.family else FAMILIES:
                print(f"### {FAMILIES[family][0]} ({family})\n\n{table(family)}\n")
            return 0
        if not target.is_file():
            print(f"recipe_settings: {target}: no such file", file=sys.stderr)
            return 2
        text = target.read_text()
        if not MARKED.search(text):
            print(f"recipe_settings: {target} has no <!-- settings:begin FAMILY --> ... <!-- settings:end --> "
                  f"markers", file=sys.stderr)
            return 2
        new = regenerate(text)
        if args.check:
            if new != text:
                print(f"recipe_settings: the settings tables in {target} are out of date; run "
                      f"python tools/recipe_settings.py --write {target}", file=sys.stderr)
                return 1
            return 0
        temporary = target.with_name(f".{target.name}.tmp")
        temporary.write_text(new)
        os.replace(temporary, target)
        return 0
    except (KeyError, ValueError) as error:
        print(f"recipe_settings: {error.args[0]}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

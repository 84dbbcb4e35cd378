"""Plots and a Markdown page of one or several training runs: ``report.md`` and PNG figures.

    minillm-report RUN_DIR [RUN_DIR ...] [--out DIR] [--split test]

A RUN_DIR is either a training folder (``--save-dir``: it holds ``metrics.jsonl``) or a
``t5-scripts/run_default.sh`` output folder (its ``WORK``), whose ``results/<method>/`` folders are training
folders (``minillm-compare-runs`` METHODS). Figures:

- per run, ``dev``: the dev score (``accuracy_rank``; ``rougeL`` on free-text data such as Dolly) and the dev loss
  against step, per round and overall (the evaluation rows of ``metrics.jsonl``: those with ``split``);
- per run with MiniLLM figures, ``minillm``: the reward, the reverse-KL estimate, the response length (rollout rows:
  ``reward``, ``rev_kl_k3``, ``mixed_length``; evaluation rows: ``reward``, ``rev_kl``, ``student_length``) and the
  PPO clip fraction (train rows: ``clip_frac``) against step;
- for WORK folders whose models were evaluated (``results/<method>/best/eval/<split>/results.json``), ``test``:
  the per-round score of each method's ``best/`` as grouped bars, the mean over the WORK folders (one per seed) with
  its 95 % t-interval when there are several (``minillm-compare-runs``'s statistics).

A WORK folder whose models were evaluated but hold no ``metrics.jsonl`` contributes to the bar figure only.
``report.md`` links each figure on one line; its path is printed last. A RUN_DIR without ``metrics.jsonl`` is
refused in one line (exit status 2). Every file is written under a temporary name and renamed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from minillm.cli.compare_runs import METHODS, confidence_interval, mean_and_sd


def fail(message: str) -> None:
    print(f"report.py: {message}", file=sys.stderr)
    sys.exit(2)


def row_kind(row: dict) -> str:
    """``eval`` (it has ``split``), ``rollout`` (a collection's statistics) or ``train``."""
    if "kind" in row:
        return row["kind"]
    if "split" in row:
        return "eval"
    if "collection" in row or "rollouts" in row:
        return "rollout"
    return "train"


def read_metrics(path: Path) -> dict[str, list[dict]]:
    rows = {"train": [], "eval": [], "rollout": []}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            fail(f"{path}:{number} is not JSON")
        rows.setdefault(row_kind(row), []).append(row)
    return rows


def find_runs(folder: Path) -> list[tuple[str, Path]]:
    """``(label, training folder)`` of a RUN_DIR (module docstring)."""
    if (folder / "metrics.jsonl").is_file():
        return [(folder.name, folder)]
    found = [(f"{folder.name} {method}", folder / "results" / sub) for method, sub in METHODS.items()
             if (folder / "results" / sub / "metrics.jsonl").is_file()]
    evaluated = any((folder / "results" / sub / "best" / "eval").is_dir() for sub in METHODS.values())
    if not found and not evaluated:  # a WORK folder with evaluations only gets the bar figure
        fail(f"{folder} has no metrics.jsonl (neither {folder}/metrics.jsonl nor "
             f"{folder}/results/<method>/metrics.jsonl): give training folders or run_default.sh WORK folders")
    return found


def score_key(figures: dict) -> str:
    return "accuracy_rank" if figures.get("accuracy_rank") is not None else "rougeL"


def _save(plt, fig, path: Path) -> None:
    """Lay ``fig`` out, write it to ``path`` as PNG through a temporary file (no half-written figure under the final
    name) and close it."""
    fig.tight_layout()
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(handle)
    try:
        fig.savefig(tmp, dpi=100, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
        plt.close(fig)


def _write_text(path: Path, text: str) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label)


def dev_figure(plt, rows: list[dict], label: str, path: Path) -> str | None:
    if not rows:
        return None
    key = score_key(rows[-1])
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in zip(axes, (key, "loss")):
        names = list(rows[-1].get("rounds", {}))
        for name in names + ["overall"]:
            points = [(r["step"], (r if name == "overall" else r.get("rounds", {}).get(name, {})).get(metric))
                      for r in rows]
            points = [(s, v) for s, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=name, linewidth=2.5 if name == "overall" else 1.2)
        ax.set_xlabel("step")
        ax.set_ylabel(f"dev {metric}")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{label}: dev {key} and loss")
    _save(plt, fig, path)
    return key


MINILLM_PANELS = (("reward", (("rollout", "reward"), ("eval", "reward"))),
                  ("reverse KL", (("rollout", "rev_kl_k3"), ("eval", "rev_kl"))),
                  ("response length", (("rollout", "mixed_length"), ("eval", "student_length"))),
                  ("clip fraction", (("train", "clip_frac"),)))


def minillm_figure(plt, rows: dict[str, list[dict]], label: str, path: Path) -> list[str]:
    """The panels of :data:`MINILLM_PANELS` that have data; [] (no figure) when none has."""
    panels = []
    for title, series in MINILLM_PANELS:
        lines = [(f"{kind} {key}", [(r["step"], r[key]) for r in rows.get(kind, []) if r.get(key) is not None])
                 for kind, key in series]
        lines = [(name, points) for name, points in lines if points]
        if lines:
            panels.append((title, lines))
    if not panels:
        return []
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (title, lines) in zip(axes[0], panels):
        for name, points in lines:
            ax.plot(*zip(*points), marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{label}: MiniLLM")
    _save(plt, fig, path)
    return [title for title, _ in panels]


def evaluated_scores(works: list[Path], split: str) -> tuple[str, list[str], dict[str, list[dict[str, float]]]] | None:
    """``(metric, rounds, {method: [per WORK folder: {round or "overall": score}]})`` of the methods whose
    ``best/`` every WORK folder evaluated on ``split``; None when none did."""
    scores, metric, rounds = {}, None, None
    for method, sub in METHODS.items():
        paths = [work / "results" / sub / "best" / "eval" / split / "results.json" for work in works]
        if not all(p.is_file() for p in paths):
            continue
        for p in paths:
            results = json.loads(p.read_text())
            metric = metric or score_key(results["overall"])
            row = {name: figures.get(metric) for name, figures in results["rounds"].items()}
            row["overall"] = results["overall"].get(metric)
            if any(v is None for v in row.values()):
                fail(f"{p} has no {metric} for every round")
            rounds = rounds or list(row)
            if list(row) != rounds:
                fail(f"{p} covers {', '.join(row)}, another {', '.join(rounds)}: report runs of one design")
            scores.setdefault(method, []).append(row)
    return None if not scores else (metric, rounds, scores)


def bars_figure(plt, metric: str, rounds: list[str], scores: dict, split: str, path: Path) -> list[str]:
    """Grouped bars (groups: rounds, one bar per method) and the Markdown table of their numbers."""
    import numpy as np

    methods = list(scores)
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(rounds) * len(methods) / 2), 4))
    table = [f"| method | {' | '.join(rounds)} |", "|---|" + "---|" * len(rounds)]
    for i, method in enumerate(methods):
        means, low, high, cells = [], [], [], []
        for name in rounds:
            values = [run[name] for run in scores[method]]
            mean, sd = mean_and_sd(values)
            interval = confidence_interval(values)
            means.append(mean)
            low.append(0.0 if interval is None else mean - interval[0])
            high.append(0.0 if interval is None else interval[1] - mean)
            cells.append(f"{mean:.2f}" + ("" if interval is None else
                                          f" ± {sd:.2f} [{interval[0]:.2f}, {interval[1]:.2f}]"))
        x = np.arange(len(rounds)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(x, means, width, label=method, yerr=[low, high] if any(low) or any(high) else None, capsize=3)
        table.append(f"| {method} | {' | '.join(cells)} |")
    ax.set_xticks(np.arange(len(rounds)), rounds)
    ax.set_ylabel(f"{split} {metric}")
    n = len(next(iter(scores.values())))
    ax.set_title(f"{split} {metric} of best/, mean over {n} run(s)" + (", 95 % t-interval" if n > 1 else ""))
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    _save(plt, fig, path)
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN_DIR",
                        help="training folders or run_default.sh WORK folders")
    parser.add_argument("--out", type=Path, default=None,
                        help="where report.md and the PNGs go (default: RUN_DIR/report, several: their common "
                             "parent's report/)")
    parser.add_argument("--split", default="test", help="the split of the evaluated results.json (bar figure)")
    args = parser.parse_args(argv)
    for folder in args.runs:
        if not folder.is_dir():
            fail(f"{folder} is not a folder")
    runs = [run for folder in args.runs for run in find_runs(folder)]
    labels = [label for label, _ in runs]
    if len(set(labels)) != len(labels):  # same folder names under different parents
        runs = [(str(path), path) for _, path in runs]
    out = args.out or (args.runs[0] / "report" if len(args.runs) == 1 else
                       Path(os.path.commonpath([str(p.resolve()) for p in args.runs])) / "report")
    out.mkdir(parents=True, exist_ok=True)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = ["# Report", "", f"Runs: {', '.join(str(p) for p in args.runs)}", ""]
    for index, (label, path) in enumerate(runs):
        rows = read_metrics(path / "metrics.jsonl")
        stem = f"{index:02d}_{_slug(label)}"
        lines += [f"## {label}", ""]
        key = dev_figure(plt, rows["eval"], label, out / f"{stem}_dev.png")
        if key is None:
            lines.append(f"- dev: no evaluation rows in {path / 'metrics.jsonl'}")
        else:
            steps = [r["step"] for r in rows["eval"]]
            lines.append(f"- dev {key} and loss against step, per round ({len(steps)} evaluations, steps "
                         f"{steps[0]}-{steps[-1]}): [{stem}_dev.png]({stem}_dev.png)")
        panels = minillm_figure(plt, rows, label, out / f"{stem}_minillm.png")
        if panels:
            lines.append(f"- MiniLLM {', '.join(panels)} against step: [{stem}_minillm.png]({stem}_minillm.png)")
        lines.append("")
    works = [folder for folder in args.runs if (folder / "results").is_dir()]
    found = evaluated_scores(works, args.split) if works else None
    if found is not None:
        metric, rounds, scores = found
        table = bars_figure(plt, metric, rounds, scores, args.split, out / "test_bars.png")
        lines += [f"## {args.split} {metric} per round", "",
                  f"- best/ of each method, mean over {len(works)} run(s): [test_bars.png](test_bars.png)", "",
                  *table, ""]
    report_path = out / "report.md"
    _write_text(report_path, "\n".join(lines))
    print(report_path)


if __name__ == "__main__":
    main()

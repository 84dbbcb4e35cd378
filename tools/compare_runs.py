"""Compare the methods of several runs of the embedded default (one per seed): the mean and sample standard
deviation of a metric per method and round, and each student's difference from the SFT student of the same run.

    python tools/compare_runs.py RUN [RUN ...] [--metric accuracy_rank] [--split test]

A RUN is a ``t5-scripts/run_default.sh`` output folder (its ``WORK``); each method's best checkpoint was evaluated
into ``RUN/results/<method>/best/eval/<split>/results.json`` (``t5-scripts/eval/run_eval.sh``).
``t5-scripts/run_default_seeds.sh`` makes the runs and calls this. Differences are paired within a run because the
runs differ in data, tokenizer and initial weights as well as in training noise: a seed that is easy for the SFT
student is easy for the others too, and the paired spread is the one that says whether a method beats SFT.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

METHODS = {"teacher (SFT)": "sft/teacher", "SFT student": "sft/student", "KD": "kd/student",
           "SeqKD": "seqkd/student", "MiniLLM": "minillm/student"}
STUDENTS = ("KD", "SeqKD", "MiniLLM")  # compared with the SFT student
METRICS = ("accuracy_rank", "accuracy_generate", "rougeL", "exact_match", "loss")
BASELINE = "SFT student"


def fail(message: str) -> None:
    print(f"compare_runs.py: {message}", file=sys.stderr)
    sys.exit(2)


def mean_and_sd(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1 in the denominator; None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def load_scores(runs: list[Path], split: str, metric: str) -> dict[str, list[dict[str, float]]]:
    """``{method: [{round or "overall": value} per run]}``, every run holding the same rounds."""
    scores, rounds = {}, None
    for method, folder in METHODS.items():
        scores[method] = []
        for run in runs:
            path = run / "results" / folder / "best" / "eval" / split / "results.json"
            if not path.is_file():
                fail(f"{path} not found: give folders that t5-scripts/run_default.sh finished (its WORK)")
            results = json.loads(path.read_text())
            row = {name: figures.get(metric) for name, figures in results["rounds"].items()}
            row["overall"] = results["overall"].get(metric)
            missing = [name for name, value in row.items() if value is None]
            if missing:
                fail(f"{path} has no {metric} for {', '.join(missing)}: choose another --metric")
            if rounds is None:
                rounds = list(row)
            elif list(row) != rounds:
                fail(f"{path} covers {', '.join(row)}, the first run {', '.join(rounds)}: compare runs of one design")
            scores[method].append(row)
    return scores


def cell(values: list[float], signed: bool = False) -> str:
    mean, sd = mean_and_sd(values)
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text + ("" if sd is None else f" ± {sd:.1f}")


def report(runs: list[Path], scores: dict[str, list[dict[str, float]]], metric: str, split: str) -> str:
    rounds = list(scores[BASELINE][0])
    lower_is_better = metric == "loss"
    width = 16
    spread = "mean ± sample standard deviation" if len(runs) > 1 else "one run, no spread to show"
    lines = [f"{metric} on {split}, {len(runs)} run{'s' if len(runs) > 1 else ''}: {spread}",
             f"{'method':<16}" + "".join(f"{name:>{width}}" for name in rounds)]
    for method, rows in scores.items():
        lines.append(f"{method:<16}" + "".join(f"{cell([row[name] for row in rows]):>{width}}" for name in rounds))
    lines.append(f"difference from the {BASELINE} of the same run (runs where the student is "
                 f"{'lower' if lower_is_better else 'higher'}, overall)")
    for method in STUDENTS:
        differences = {name: [row[name] - base[name] for row, base in zip(scores[method], scores[BASELINE])]
                       for name in rounds}
        better = sum((d < 0) if lower_is_better else (d > 0) for d in differences["overall"])
        lines.append(f"{method:<16}" + "".join(f"{cell(differences[name], signed=True):>{width}}" for name in rounds)
                     + f"   ({better} of {len(runs)})")
    lines.append("per run, overall: " + ", ".join(METHODS))
    for i, run in enumerate(runs):
        lines.append(f"  {run}: " + "  ".join(f"{scores[method][i]['overall']:.1f}" for method in METHODS))
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run_default.sh output folders")
    parser.add_argument("--metric", default="accuracy_rank", choices=METRICS)
    parser.add_argument("--split", default="test", help="the evaluated split (run_default.sh evaluates test)")
    args = parser.parse_args(argv)
    if len(set(args.runs)) != len(args.runs):
        fail("a RUN is given twice: each run counts once")
    print(report(args.runs, load_scores(args.runs, args.split, args.metric), args.metric, args.split))


if __name__ == "__main__":
    main()

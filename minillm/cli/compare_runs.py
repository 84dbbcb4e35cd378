"""Compare the methods of one or several runs of the embedded default (one per seed): per method and round, the
score of its ``best/`` checkpoint (mean and sample standard deviation over runs), the step that checkpoint comes
from and the ``last/`` checkpoint's score beside it, and each student's difference from the SFT student of the same
run with a 95 % confidence interval.

    minillm-compare-runs RUN [RUN ...] [--metric accuracy_rank] [--split test]

A RUN is a ``t5-scripts/run_default.sh`` output folder (its ``WORK``); each method's ``best/`` and ``last/`` were
evaluated into ``RUN/results/<method>/{best,last}/eval/<split>/results.json`` (``t5-scripts/eval/run_eval.sh``),
and ``best/trainer_state.json`` says by which dev metric and at which step ``best/`` was selected.
``t5-scripts/run_default_seeds.sh`` makes the runs and calls this; ``run_default.sh`` calls it on its one run.

Differences are paired within a run because the runs differ in data, tokenizer and initial weights as well as in
training noise: a seed that is easy for the SFT student is easy for the others too. For n runs with paired
differences d_1..d_n the interval is ``mean(d) +- t_{0.975, n-1} sd(d) / sqrt(n)`` (Student's t, sample sd).
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
# figures of the overall row shown when every results.json has them (minillm/evaluation.py; docs/metrics.md)
OTHER_FIGURES = ("ece", "gold_option_nll", "off_option_mass", "option_rev_kl", "option_fwd_kl")
ONE_DRAW = ("one run is one draw of data, initial weights, data order and dropout, and tiny models' figures move "
            "with the CPU and thread count: the claim is the comparison over seeds, "
            "bash t5-scripts/run_default_seeds.sh")


def fail(message: str) -> None:
    print(f"compare_runs.py: {message}", file=sys.stderr)
    sys.exit(2)


def mean_and_sd(values: list[float]) -> tuple[float, float | None]:
    """The mean and the sample standard deviation (n - 1 in the denominator; None for one value)."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def student_t_cdf(x: float, df: int) -> float:
    """P(T <= x) for Student's t with ``df`` degrees of freedom: 1/2 plus the density's integral from 0 to x
    (composite Simpson rule, 2,000 intervals: error below 1e-9 for the x this tool meets)."""
    log_norm = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def density(t: float) -> float:
        return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))

    intervals = 2000
    h = abs(x) / intervals
    total = density(0.0) + density(abs(x)) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, intervals))
    half = total * h / 3
    return 0.5 + half if x >= 0 else 0.5 - half


def student_t_quantile(p: float, df: int) -> float:
    """The ``p`` quantile (p in (0.5, 1)) of Student's t, by bisection on :func:`student_t_cdf`."""
    low, high = 0.0, 1.0
    while student_t_cdf(high, df) < p:
        high *= 2
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_cdf(middle, df) < p else (low, middle)
    return (low + high) / 2


def confidence_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """The two-sided ``level`` interval of the mean: mean +- t sd / sqrt(n); None for fewer than two values."""
    mean, sd = mean_and_sd(values)
    if sd is None:
        return None
    half = student_t_quantile(0.5 + level / 2, len(values) - 1) * sd / math.sqrt(len(values))
    return mean - half, mean + half


def _read_json(path: Path) -> dict:
    if not path.is_file():
        fail(f"{path} not found: give folders that t5-scripts/run_default.sh finished (its WORK)")
    return json.loads(path.read_text())


def _rows(results: dict, path: Path, metric: str, rounds: list[str] | None) -> dict[str, float]:
    """``{round or "overall": value}`` of ``metric`` in one results.json (read from ``path``)."""
    row = {name: figures.get(metric) for name, figures in results["rounds"].items()}
    row["overall"] = results["overall"].get(metric)
    missing = [name for name, value in row.items() if value is None]
    if missing:
        fail(f"{path} has no {metric} for {', '.join(missing)}: choose another --metric")
    if rounds is not None and list(row) != rounds:
        fail(f"{path} covers {', '.join(row)}, the first run {', '.join(rounds)}: compare runs of one design")
    return row


def load_runs(runs: list[Path], split: str, metric: str) -> dict[str, list[dict]]:
    """``{method: [per run: {"best": row, "last": row, "step": int, "select_by": str, "other": {...}}]}``."""
    loaded, rounds = {}, None
    for method, folder in METHODS.items():
        loaded[method] = []
        for run in runs:
            model_dir = run / "results" / folder
            best_path, last_path = (model_dir / name / "eval" / split / "results.json" for name in ("best", "last"))
            best_results = _read_json(best_path)
            best = _rows(best_results, best_path, metric, rounds)
            rounds = rounds or list(best)
            state = _read_json(model_dir / "best" / "trainer_state.json")
            loaded[method].append({
                "best": best, "last": _rows(_read_json(last_path), last_path, metric, rounds),
                "step": state["step"], "select_by": state["select_by"],
                "other": {name: best_results["overall"].get(name) for name in OTHER_FIGURES}})
    return loaded


def cell(values: list[float], signed: bool = False) -> str:
    mean, sd = mean_and_sd(values)
    text = f"{mean:+.1f}" if signed else f"{mean:.1f}"
    return text + ("" if sd is None else f" ± {sd:.1f}")


def difference_cell(values: list[float]) -> str:
    """The mean paired difference and, from two runs on, its 95 % interval."""
    interval = confidence_interval(values)
    mean = sum(values) / len(values)
    return f"{mean:+.1f}" + ("" if interval is None else f" [{interval[0]:+.1f}, {interval[1]:+.1f}]")


def report(runs: list[Path], loaded: dict[str, list[dict]], metric: str, split: str) -> str:
    rounds = list(loaded[BASELINE][0]["best"])
    lower_is_better = metric == "loss"
    n = len(runs)
    spread = "mean ± sample standard deviation over the runs" if n > 1 else "one run"
    rules = sorted({entry["select_by"] for entries in loaded.values() for entry in entries})
    lines = [f"{metric} on {split} of each method's best/ checkpoint, {n} run{'s' if n > 1 else ''}: {spread}",
             f"best/ selected by dev {' / '.join(rules)} (ties to the later step); step: where best/ comes from; "
             "last/: the final checkpoint, overall"]
    if len(rules) > 1:
        lines.append("warning: the methods were selected by different rules, so this table does not compare them "
                     "like for like")
    width = 16
    lines.append(f"{'method':<16}{'step':>12}" + "".join(f"{name:>{width}}" for name in rounds) + f"{'last/':>{width}}")
    for method, entries in loaded.items():
        steps = "/".join(str(entry["step"]) for entry in entries)
        lines.append(f"{method:<16}{steps:>12}"
                     + "".join(f"{cell([e['best'][name] for e in entries]):>{width}}" for name in rounds)
                     + f"{cell([e['last']['overall'] for e in entries]):>{width}}")
    interval = "mean and 95 % interval" if n > 1 else "one run, no interval"
    lines.append(f"difference from the {BASELINE} of the same run, best/ ({interval}; runs where the student is "
                 f"{'lower' if lower_is_better else 'higher'}, overall)")
    width = 22
    lines.append(f"{'student':<16}" + "".join(f"{name:>{width}}" for name in rounds))
    for method in STUDENTS:
        differences = {name: [e["best"][name] - b["best"][name] for e, b in zip(loaded[method], loaded[BASELINE])]
                       for name in rounds}
        better = sum((d < 0) if lower_is_better else (d > 0) for d in differences["overall"])
        lines.append(f"{method:<16}" + "".join(f"{difference_cell(differences[name]):>{width}}" for name in rounds)
                     + f"   ({better} of {n})")
    shown = [name for name in OTHER_FIGURES
             if all(e["other"][name] is not None for entries in loaded.values() for e in entries)]
    if shown:
        width = 17
        lines.append("best/, overall: " + ", ".join(shown) + " (docs/metrics.md)")
        lines.append(f"{'method':<16}" + "".join(f"{name:>{width}}" for name in shown))
        for method, entries in loaded.items():
            lines.append(f"{method:<16}" + "".join(
                f"{_other_cell([e['other'][name] for e in entries]):>{width}}" for name in shown))
    lines.append("per run, overall: " + ", ".join(METHODS))
    for i, run in enumerate(runs):
        lines.append(f"  {run}: " + "  ".join(f"{loaded[method][i]['best']['overall']:.1f}" for method in METHODS))
    if n == 1:
        lines.append(f"note: {ONE_DRAW}")
    return "\n".join(lines)


def _other_cell(values: list[float]) -> str:
    mean, sd = mean_and_sd(values)
    return f"{mean:.3f}" + ("" if sd is None else f" ± {sd:.3f}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run_default.sh output folders")
    parser.add_argument("--metric", default="accuracy_rank", choices=METRICS)
    parser.add_argument("--split", default="test", help="the evaluated split (run_default.sh evaluates test)")
    args = parser.parse_args(argv)
    if len(set(args.runs)) != len(args.runs):
        fail("a RUN is given twice: each run counts once")
    print(report(args.runs, load_runs(args.runs, args.split, args.metric), args.metric, args.split))


if __name__ == "__main__":
    main()

"""tools/report.py: on a small hand-made result tree (two methods x two seeds, metrics.jsonl rows of the three kinds,
results.json files as minillm.evaluation.write_results writes them) it writes report.md linking every figure, each
figure a real PNG, the bar numbers the hand-computed means; a folder without metrics.jsonl is refused."""

import json
import re
import subprocess
import sys
from pathlib import Path

from minillm.evaluation import write_results

REPO = Path(__file__).resolve().parents[1]
ROUNDS = ("r1", "r2", "r3")
# best/ test accuracy per method, seed and round
TEST = {"SFT student": {0: (40.0, 35.0, 30.0), 1: (44.0, 37.0, 33.0)},
        "MiniLLM": {0: (46.0, 36.0, 31.0), 1: (48.0, 40.0, 35.0)}}
FOLDERS = {"SFT student": "sft/student", "MiniLLM": "minillm/student"}


def eval_row(step, acc):
    overall = {"n": 30, "loss": 1.0 / (step + 1), "accuracy_rank": acc, "rougeL": None}
    return {"step": step, "split": "dev", **overall,
            "rounds": {name: {**overall, "accuracy_rank": acc + i} for i, name in enumerate(ROUNDS)}}


def write_tree(root: Path, seed: int) -> Path:
    work = root / f"default_seed{seed}"
    for method, folder in FOLDERS.items():
        run = work / "results" / folder
        run.mkdir(parents=True)
        rows = []
        for step in (0, 8, 16):
            rows.append({"step": step, "epoch": step / 16, "loss": 2.0 - step / 16, "lr": 1e-3, "padding": 0.1,
                         **({"pg": 0.5, "single": 0.4, "clip_frac": 0.1 + step / 100} if method == "MiniLLM" else {})})
            if method == "MiniLLM":
                rows.append({"step": step, "reward": -1.0 + step / 32, "rev_kl_k3": 1.0 - step / 32,
                             "mixed_length": 5.0, "rollouts": 64, "tokens": 320, "collection": step // 8})
            rows.append({**eval_row(step, 30.0 + step + seed),
                         **({"rev_kl": 2.0, "reward": -0.5, "student_length": 4.0, "sequences": 30}
                            if method == "MiniLLM" else {})})
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        values = TEST[method][seed]
        summary = {"n": 90, "loss": 1.0, "accuracy_rank": sum(values) / 3, "rougeL": None}
        write_results({"overall": summary, "rounds": {name: {**summary, "accuracy_rank": v}
                                                      for name, v in zip(ROUNDS, values)},
                       "settings": {}, "predictions": []}, run / "best" / "eval" / "test")
    return work


def run_tool(*args):
    return subprocess.run([sys.executable, str(REPO / "tools" / "report.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_report(tmp_path):
    works = [write_tree(tmp_path, seed) for seed in (0, 1)]
    out = tmp_path / "out"
    result = run_tool(*works, "--out", out)
    assert result.returncode == 0, result.stderr
    report = out / "report.md"
    assert result.stdout.strip().splitlines()[-1] == str(report)
    text = report.read_text()
    linked = re.findall(r"\]\(([^)]+\.png)\)", text)
    # per run (2 seeds x 2 methods) a dev figure, MiniLLM's runs a MiniLLM figure too, and the bars
    assert len(linked) == len(set(linked)) == 4 + 2 + 1
    assert sum(name.endswith("_dev.png") for name in linked) == 4
    assert sum(name.endswith("_minillm.png") for name in linked) == 2
    assert "test_bars.png" in linked
    assert sorted(p.name for p in out.glob("*.png")) == sorted(linked)  # no temporary files left
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    for name in linked:
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, name
    minillm_line = next(line for line in text.splitlines() if "_minillm.png" in line)
    for panel in ("reward", "reverse KL", "response length", "clip fraction"):
        assert panel in minillm_line
    for method, seeds in TEST.items():
        row = next(line for line in text.splitlines() if line.startswith(f"| {method} |"))
        cells = [cell.strip() for cell in row.strip("|").split("|")[1:]]
        for i, cell in enumerate(cells[:3]):
            mean = (seeds[0][i] + seeds[1][i]) / 2
            assert float(cell.split()[0]) == round(mean, 2), (method, i, cell)
            assert "[" in cell  # two seeds: an interval


def test_one_training_folder(tmp_path):
    work = write_tree(tmp_path, 0)
    result = run_tool(work / "results" / "sft" / "student")
    assert result.returncode == 0, result.stderr
    report = work / "results" / "sft" / "student" / "report" / "report.md"
    assert result.stdout.strip().splitlines()[-1] == str(report)
    assert "_dev.png" in report.read_text() and "_minillm.png" not in report.read_text()


def test_bad_input_refused(tmp_path):
    work = write_tree(tmp_path, 0)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_tool(work, empty, "--out", tmp_path / "out")
    assert result.returncode == 2
    error = result.stderr.strip()
    assert "\n" not in error and error.startswith("report.py: ") and str(empty) in error
    assert "metrics.jsonl" in error
    assert not (tmp_path / "out" / "report.md").exists()


def test_evaluated_work_without_metrics_gets_the_bars(tmp_path):
    work = write_tree(tmp_path, 0)
    for path in work.rglob("metrics.jsonl"):
        path.unlink()
    result = run_tool(work, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    linked = re.findall(r"\]\(([^)]+\.png)\)", (tmp_path / "out" / "report.md").read_text())
    assert linked == ["test_bars.png"]

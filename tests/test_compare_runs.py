"""tools/compare_runs.py: the per-method means and sample standard deviations over runs, and the paired
differences from the SFT student, against hand-computed values on small made-up result trees."""

import json
import os
import subprocess

import pytest

from tools.compare_runs import METHODS, main, mean_and_sd

# overall accuracy per method in two runs; each round is the overall value plus the round's offset
OVERALL = {"teacher (SFT)": (50.0, 54.0), "SFT student": (40.0, 44.0), "KD": (45.0, 47.0), "SeqKD": (39.0, 45.0),
           "MiniLLM": (41.0, 43.0)}
OFFSETS = {"r1": 10.0, "r2": 0.0, "r3": -10.0}


def write_runs(root, overall=OVERALL, metric="accuracy_rank", prefix="seed"):
    runs = []
    for i in range(len(overall["SFT student"])):
        run = root / f"{prefix}{i}"
        for method, folder in METHODS.items():
            value = overall[method][i]
            results = {"rounds": {name: {metric: value + offset, "n": 300} for name, offset in OFFSETS.items()},
                       "overall": {metric: value, "n": 900}, "settings": {}}
            path = run / "results" / folder / "best" / "eval" / "test" / "results.json"
            path.parent.mkdir(parents=True)
            path.write_text(json.dumps(results))
        runs.append(str(run))
    return runs


def test_mean_and_sample_sd_hand_computed():
    assert mean_and_sd([40.0, 44.0]) == (42.0, pytest.approx(2.8284271))  # sqrt((4 + 4) / 1)
    assert mean_and_sd([1.0, 2.0, 6.0]) == (3.0, pytest.approx(2.6457513))  # sqrt((4 + 1 + 9) / 2)
    assert mean_and_sd([7.0]) == (7.0, None)


def test_table_and_paired_differences(tmp_path, capsys):
    runs = write_runs(tmp_path)
    main(runs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "accuracy_rank on test, 2 runs: mean ± sample standard deviation"
    assert lines[1].split() == ["method", "r1", "r2", "r3", "overall"]
    table = {line[:16].strip(): line[16:].split() for line in lines[2:7]}
    # teacher 50, 54 overall (and +10, 0, -10 per round): sd sqrt(8) in every column
    assert table["teacher (SFT)"] == "62.0 ± 2.8 52.0 ± 2.8 42.0 ± 2.8 52.0 ± 2.8".split()
    assert table["SeqKD"][-3:] == ["42.0", "±", "4.2"]  # 39, 45: sd sqrt(18)
    differences = {line[:16].strip(): line[16:] for line in lines[8:11]}
    # KD - SFT: +5, +3 -> +4.0 ± 1.4, above in both runs; SeqKD: -1, +1 -> +0.0 ± 1.4, one; MiniLLM: +1, -1 -> one
    assert differences["KD"].endswith("+4.0 ± 1.4   (2 of 2)")
    assert differences["SeqKD"].endswith("+0.0 ± 1.4   (1 of 2)")
    assert differences["MiniLLM"].endswith("+0.0 ± 1.4   (1 of 2)")
    assert lines[-2].endswith("seed0: 50.0  40.0  45.0  39.0  41.0")
    assert lines[-1].endswith("seed1: 54.0  44.0  47.0  45.0  43.0")


def test_loss_counts_lower_as_better_and_one_run_has_no_spread(tmp_path, capsys):
    overall = {method: values[:1] for method, values in OVERALL.items()}
    main(write_runs(tmp_path, overall, metric="loss") + ["--metric", "loss"])
    out = capsys.readouterr().out
    assert "±" not in out and out.startswith("loss on test, 1 run: one run, no spread to show")
    assert "runs where the student is lower" in out
    differences = {line[:16].strip(): line[16:].split() for line in out.splitlines()[8:11]}
    assert differences["KD"] == ["+5.0"] * 4 + ["(0", "of", "1)"]  # a higher loss than SFT's: not better
    assert differences["SeqKD"] == ["-1.0"] * 4 + ["(1", "of", "1)"]


@pytest.mark.parametrize("break_it, message", [
    (lambda runs: (runs[1] / "results/kd/student/best/eval/test/results.json").unlink(),
     "seed1/results/kd/student/best/eval/test/results.json not found: give folders that "
     "t5-scripts/run_default.sh finished (its WORK)"),
    (lambda runs: None, "has no accuracy_generate for r1, r2, r3, overall: choose another --metric"),
])
def test_refusals_name_the_file(tmp_path, capsys, break_it, message):
    runs = write_runs(tmp_path)
    break_it([tmp_path / "seed0", tmp_path / "seed1"])
    argv = runs + (["--metric", "accuracy_generate"] if "accuracy_generate" in message else [])
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("compare_runs.py: ") and error.endswith(message) and "\n" not in error


def test_a_run_given_twice_is_refused(tmp_path, capsys):
    runs = write_runs(tmp_path)
    with pytest.raises(SystemExit):
        main([runs[0], runs[0]])
    assert capsys.readouterr().err.strip() == "compare_runs.py: a RUN is given twice: each run counts once"


def test_seeds_script_compares_finished_runs_without_training_them_again(tmp_path, repo_root):
    write_runs(tmp_path, prefix="default_seed")
    done = subprocess.run(["bash", str(repo_root / "t5-scripts" / "run_default_seeds.sh"), str(repo_root)],
                          env=dict(os.environ, WORK_ROOT=str(tmp_path), SEEDS="0 1"), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert f"== seed 1: results in {tmp_path / 'default_seed1'} (kept; delete the folder to train again)" in lines
    assert "== the methods across 2 seed(s)" in lines
    assert any(line.startswith("KD") and line.endswith("+4.0 ± 1.4   (2 of 2)") for line in lines)


@pytest.mark.parametrize("seeds, message", [
    ("0 x", 'run_default_seeds.sh: SEEDS holds "x"; give whole numbers >= 0 (SEEDS="0 1 2")'),
    (" ", 'run_default_seeds.sh: SEEDS is empty; give one or more whole numbers (SEEDS="0 1 2")'),
])
def test_seeds_script_refuses_bad_seeds_before_any_work(tmp_path, repo_root, seeds, message):
    done = subprocess.run(["bash", str(repo_root / "t5-scripts" / "run_default_seeds.sh"), str(repo_root)],
                          env=dict(os.environ, WORK_ROOT=str(tmp_path / "runs"), SEEDS=seeds), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [message]
    assert not (tmp_path / "runs").exists()

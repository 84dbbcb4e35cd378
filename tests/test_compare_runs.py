"""minillm-compare-runs (minillm/cli/compare_runs.py; python tools/compare_runs.py): the per-method means and sample
standard deviations over runs, the steps and last/ scores beside best/, and the paired differences from the SFT
student with their 95 % intervals, against hand-computed values on small made-up result trees."""

import json
import os
import subprocess

import pytest

from minillm.cli.compare_runs import (METHODS, confidence_interval, main, mean_and_sd, student_t_cdf,
                                      student_t_quantile)

# overall accuracy per method in two runs; each round is the overall value plus the round's offset; last/ scores
# one point below best/; best/ from step 500 in the first run and 250 in the second
OVERALL = {"teacher (SFT)": (50.0, 54.0), "SFT student": (40.0, 44.0), "KD": (45.0, 47.0), "SeqKD": (39.0, 45.0),
           "MiniLLM": (41.0, 43.0)}
OFFSETS = {"r1": 10.0, "r2": 0.0, "r3": -10.0}
STEPS = (500, 250)


def write_results(path, value, metric, extra=None):
    results = {"rounds": {name: {metric: value + offset, "n": 300} for name, offset in OFFSETS.items()},
               "overall": {metric: value, "n": 900, **(extra or {})}, "settings": {}}
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(results))


def write_runs(root, overall=OVERALL, metric="accuracy_rank", prefix="seed", select_by="accuracy", extra=None):
    runs = []
    for i in range(len(overall["SFT student"])):
        run = root / f"{prefix}{i}"
        for method, folder in METHODS.items():
            value = overall[method][i]
            write_results(run / "results" / folder / "best" / "eval" / "test" / "results.json", value, metric, extra)
            write_results(run / "results" / folder / "last" / "eval" / "test" / "results.json", value - 1, metric)
            state = {"step": STEPS[i % 2], "select_by": select_by}
            (run / "results" / folder / "best" / "trainer_state.json").write_text(json.dumps(state))
        runs.append(str(run))
    return runs


def test_mean_and_sample_sd_hand_computed():
    assert mean_and_sd([40.0, 44.0]) == (42.0, pytest.approx(2.8284271))  # sqrt((4 + 4) / 1)
    assert mean_and_sd([1.0, 2.0, 6.0]) == (3.0, pytest.approx(2.6457513))  # sqrt((4 + 1 + 9) / 2)
    assert mean_and_sd([7.0]) == (7.0, None)


def test_student_t_against_printed_tables():
    # two-sided 95 % critical values of Student's t (any statistics table) and P(T <= -1) = 1/4 for df 1 (Cauchy)
    for df, value in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (9, 2.2622), (29, 2.0452)):
        assert student_t_quantile(0.975, df) == pytest.approx(value, abs=1e-4)
    assert student_t_cdf(-1.0, 1) == pytest.approx(0.25, abs=1e-9)
    assert student_t_cdf(0.0, 7) == 0.5


def test_confidence_interval_hand_computed():
    low, high = confidence_interval([5.0, 3.0, 4.0])  # mean 4, sd 1: 4 -+ 4.3027 / sqrt(3)
    assert (low, high) == (pytest.approx(4 - 2.48417, abs=1e-4), pytest.approx(4 + 2.48417, abs=1e-4))
    assert confidence_interval([2.0]) is None


def test_table_steps_last_scores_and_paired_intervals(tmp_path, capsys):
    runs = write_runs(tmp_path)
    main(runs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("accuracy_rank on test of each method's best/ checkpoint, 2 runs: mean ± sample standard "
                        "deviation over the runs")
    assert lines[1].startswith("best/ selected by dev accuracy (ties to the later step)")
    assert lines[2].split() == ["method", "step", "r1", "r2", "r3", "overall", "last/"]
    table = {line[:16].strip(): line[16:].split() for line in lines[3:8]}
    # teacher 50, 54 overall (and +10, 0, -10 per round): sd sqrt(8) in every column; last/ one below: 51 ± 2.8
    assert table["teacher (SFT)"] == "500/250 62.0 ± 2.8 52.0 ± 2.8 42.0 ± 2.8 52.0 ± 2.8 51.0 ± 2.8".split()
    assert table["SeqKD"][-6:] == ["42.0", "±", "4.2", "41.0", "±", "4.2"]  # 39, 45: sd sqrt(18)
    assert lines[8].startswith("difference from the SFT student of the same run, best/ (mean and 95 % interval")
    differences = {line[:16].strip(): line[16:] for line in lines[10:13]}
    # KD - SFT: +5, +3 -> mean +4, sd sqrt(2), half-width t(0.975, 1) sqrt(2) / sqrt(2) = 12.7062; above in both
    assert differences["KD"].endswith("+4.0 [-8.7, +16.7]   (2 of 2)")
    assert differences["SeqKD"].endswith("+0.0 [-12.7, +12.7]   (1 of 2)")  # -1, +1
    assert differences["MiniLLM"].endswith("+0.0 [-12.7, +12.7]   (1 of 2)")
    assert lines[-2].endswith("seed0: 50.0  40.0  45.0  39.0  41.0")
    assert lines[-1].endswith("seed1: 54.0  44.0  47.0  45.0  43.0")
    assert not any(line.startswith("note:") or line.startswith("warning:") for line in lines)


def test_one_run_says_it_is_one_draw_and_loss_counts_lower_as_better(tmp_path, capsys):
    overall = {method: values[:1] for method, values in OVERALL.items()}
    main(write_runs(tmp_path, overall, metric="loss") + ["--metric", "loss"])
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "±" not in out and lines[0] == "loss on test of each method's best/ checkpoint, 1 run: one run"
    assert "one run, no interval; runs where the student is lower" in out
    assert {line[:16].strip(): line[16:].split()[:1] for line in lines[3:8]}["KD"] == ["500"]
    differences = {line[:16].strip(): line[16:].split() for line in lines[10:13]}
    assert differences["KD"] == ["+5.0"] * 4 + ["(0", "of", "1)"]  # a higher loss than SFT's: not better
    assert differences["SeqKD"] == ["-1.0"] * 4 + ["(1", "of", "1)"]
    assert lines[-1].startswith("note: one run is one draw") and "run_default_seeds.sh" in lines[-1]


def test_mixed_selection_rules_are_flagged_and_other_figures_shown(tmp_path, capsys):
    extra = {"ece": 5.0, "gold_option_nll": 0.9, "off_option_mass": 2.5, "option_rev_kl": 0.125,
             "option_fwd_kl": 0.25}
    runs = write_runs(tmp_path, extra=extra)
    state = tmp_path / "seed1" / "results" / "kd" / "student" / "best" / "trainer_state.json"
    state.write_text(json.dumps({"step": 250, "select_by": "loss"}))
    main(runs)
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("best/ selected by dev accuracy / loss")
    assert lines[2].startswith("warning: the methods were selected by different rules")
    other = lines.index("best/, overall: ece, gold_option_nll, off_option_mass, option_rev_kl, option_fwd_kl "
                        "(docs/metrics.md)")
    assert lines[other + 2].split() == ["teacher", "(SFT)", "5.000", "±", "0.000", "0.900", "±", "0.000", "2.500",
                                        "±", "0.000", "0.125", "±", "0.000", "0.250", "±", "0.000"]


@pytest.mark.parametrize("break_it, message", [
    (lambda runs: (runs[1] / "results/kd/student/best/eval/test/results.json").unlink(),
     "seed1/results/kd/student/best/eval/test/results.json not found: give folders that "
     "t5-scripts/run_default.sh finished (its WORK)"),
    (lambda runs: (runs[0] / "results/minillm/student/last/eval/test/results.json").unlink(),
     "seed0/results/minillm/student/last/eval/test/results.json not found: give folders that "
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
    assert any(line.startswith("KD") and line.endswith("+4.0 [-8.7, +16.7]   (2 of 2)") for line in lines)


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

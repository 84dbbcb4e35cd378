"""The option figures of evaluation (ECE, gold option NLL, off-option mass, option KLs) on hand-written prediction
records with hand-computed values, their table columns, their TensorBoard tags (minillm/engine/run_log.py), and a
KD run whose evaluations carry the option KLs against its teacher."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from minillm.engine.run_log import RunLog
from minillm.evaluation import calibration_bin, format_table, summarize

REPO = Path(__file__).resolve().parents[1]


def record(probabilities, gold, teacher_probabilities=None, off_mass=0.0):
    """A prediction whose option scores are ``log((1 - off_mass) q_k)``: q the option distribution, ``off_mass``
    the probability of outputs that are no option. Rank label: the first most likely option."""
    scores = [math.log((1.0 - off_mass) * q) for q in probabilities]
    teacher = None if teacher_probabilities is None else [math.log(0.5 * p) for p in teacher_probabilities]
    return {"uid": f"u{gold}", "round": "r1", "gold_label": gold, "rank_label": scores.index(max(scores)),
            "option_scores": scores, "teacher_option_scores": teacher, "generated": None, "generated_label": None,
            "rougeL": None, "exact_match": None, "target": "t", "target_nll": 1.0, "target_tokens": 1}


# Student q, teacher p, gold label, off-option mass; confidence max q and its bin (b/15, (b+1)/15] in the comments.
Q = ([1 / 3, 1 / 3, 1 / 3], [0.4, 0.35, 0.25], [0.625, 0.3125, 0.0625], [0.05 / 0.99, 0.9 / 0.99, 0.04 / 0.99])
P = ([0.5, 0.25, 0.25], [0.4, 0.35, 0.25], [0.2, 0.3, 0.5], [1 / 3, 1 / 3, 1 / 3])
GOLD = (0, 1, 0, 2)
OFF = (0.7, 0.0, 0.2, 0.01)
CORRECT = (1, 0, 1, 0)  # rank labels 0 (first of a tie), 0, 0, 1
CONFIDENCE = (1 / 3, 0.4, 0.625, 0.9 / 0.99)  # bins 4 (1/3 closes it), 5 (0.4 = 6/15 closes it), 9, 13


def hand_records():
    return [record(q, gold, p, off) for q, p, gold, off in zip(Q, P, GOLD, OFF)]


def direct_kl(a, b):
    return sum(x * math.log(x / y) for x, y in zip(a, b))


def test_summary_option_figures_are_the_hand_computed_ones():
    summary = summarize(hand_records())
    # every confidence in a bin of its own: ECE = mean |correct - confidence|
    assert summary["ece"] == pytest.approx(100 * ((1 - 1 / 3) + 0.4 + (1 - 0.625) + 0.9 / 0.99) / 4, abs=1e-12)
    assert summary["gold_option_nll"] == pytest.approx(
        (math.log(3) - math.log(0.35) - math.log(0.625) - math.log(0.04 / 0.99)) / 4, abs=1e-12)
    assert summary["off_option_mass"] == pytest.approx(100 * (0.7 + 0.0 + 0.2 + 0.01) / 4, abs=1e-12)
    # record 1: q = p, so both KLs are 0 there
    rev = (1 / 3 * math.log((1 / 3) / 0.5) + 2 / 3 * math.log((1 / 3) / 0.25)
           + 0.625 * math.log(0.625 / 0.2) + 0.3125 * math.log(0.3125 / 0.3) + 0.0625 * math.log(0.0625 / 0.5)
           + (0.05 * math.log(0.05 / 0.33) + 0.9 * math.log(0.9 / 0.33) + 0.04 * math.log(0.04 / 0.33)) / 0.99)
    fwd = (0.5 * math.log(0.5 * 3) + 0.5 * math.log(0.25 * 3)
           + 0.2 * math.log(0.2 / 0.625) + 0.3 * math.log(0.3 / 0.3125) + 0.5 * math.log(0.5 / 0.0625)
           + (math.log(0.33 / 0.05) + math.log(0.33 / 0.9) + math.log(0.33 / 0.04)) / 3)
    assert summary["option_rev_kl"] == pytest.approx(rev / 4, abs=1e-12)
    assert summary["option_fwd_kl"] == pytest.approx(fwd / 4, abs=1e-12)
    assert rev / 4 == pytest.approx(sum(map(direct_kl, Q, P)) / 4, abs=1e-12)  # the hand sums themselves
    assert fwd / 4 == pytest.approx(sum(map(direct_kl, P, Q)) / 4, abs=1e-12)


def test_ece_pools_the_examples_of_a_bin():
    """Confidences 0.625 and 0.65 share bin 9: one term |acc - mean conf| = |1/2 - 0.6375| for both, not two."""
    records = [record([0.625, 0.3125, 0.0625], 0), record([0.1, 0.65, 0.25], 0)]
    assert summarize(records)["ece"] == pytest.approx(100 * abs(1 / 2 - (0.625 + 0.65) / 2), abs=1e-12)
    records = [record([0.625, 0.3125, 0.0625], 0), record([0.1, 0.7, 0.2], 0)]  # 0.7: bin 10
    assert summarize(records)["ece"] == pytest.approx(100 * ((1 - 0.625) + 0.7) / 2, abs=1e-12)


@pytest.mark.parametrize("confidence, expected", [
    (0.0, 0), (1 / 15, 0), (1 / 3, 4), (math.exp(math.log(0.1) - math.log(0.3)), 4), (0.34, 5), (0.4, 5),
    (0.41, 6), (2 / 3, 9), (0.6667, 10), (14 / 15, 13), (0.94, 14), (1.0, 14),
])
def test_calibration_bins_are_closed_on_the_right(confidence, expected):
    assert calibration_bin(confidence) == expected


def test_ece_bin_boundary_decides_the_pooling():
    """Three equal scores give confidence 1/3, the right edge of bin 4: with a 0.34 record (bin 5) it stays apart
    (two terms); put in bin 5 it would pool with it (|1/2 - 0.3367| x 100 = 16.3 instead of 66.7 + 34)."""
    records = [record([1 / 3, 1 / 3, 1 / 3], 0, off_mass=0.4), record([0.34, 0.33, 0.33], 1)]
    assert summarize(records)["ece"] == pytest.approx(100 * ((1 - 1 / 3) + 0.34) / 2, abs=1e-9)


def test_option_kls_need_a_teacher_for_every_record_and_vanish_for_the_same_distribution():
    records = hand_records()
    records[2]["teacher_option_scores"] = None
    summary = summarize(records)
    assert summary["option_rev_kl"] is None and summary["option_fwd_kl"] is None
    assert summary["ece"] is not None
    same = [record(q, gold, q) for q, gold in zip(Q, GOLD)]  # teacher scores differ by log 0.5: same q
    assert summarize(same)["option_rev_kl"] == pytest.approx(0.0, abs=1e-15)
    assert summarize(same)["option_fwd_kl"] == pytest.approx(0.0, abs=1e-15)
    empty = summarize([])
    assert all(empty[k] is None for k in ("ece", "gold_option_nll", "off_option_mass", "option_rev_kl"))


def test_off_option_mass_is_zero_when_the_options_hold_all_the_mass():
    """Scores of probabilities that sum to 1 up to rounding must not give a negative mass."""
    assert summarize([record([0.1, 0.2, 0.7], 2)])["off_option_mass"] == pytest.approx(0.0, abs=1e-12)
    assert summarize([record([0.1, 0.2, 0.7], 2)])["off_option_mass"] >= 0.0


def test_table_shows_the_option_columns_and_the_kls_only_with_a_teacher():
    with_teacher = {"rounds": {"r1": summarize(hand_records())}, "overall": summarize(hand_records())}
    header, row, _ = (line.split() for line in format_table(with_teacher).splitlines())
    assert header[-5:] == ["ECE", "NLL(gold)", "off-set%", "rKL(opt)", "fKL(opt)"]
    summary = with_teacher["overall"]
    assert row[-5:] == [f"{summary['ece']:.2f}", f"{summary['gold_option_nll']:.4f}",
                        f"{summary['off_option_mass']:.2f}", f"{summary['option_rev_kl']:.4f}",
                        f"{summary['option_fwd_kl']:.4f}"]
    records = [record(q, gold) for q, gold in zip(Q, GOLD)]
    without = {"rounds": {"r1": summarize(records)}, "overall": summarize(records)}
    assert format_table(without).splitlines()[0].split()[-3:] == ["ECE", "NLL(gold)", "off-set%"]


# ----------------------------------------------------------------------------------------- TensorBoard

def test_run_log_writes_nested_scalars_and_per_round_figures(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    log = RunLog(tmp_path, enabled=True)
    log.write({"step": 3, "split": "dev", "ece": 12.5, "option_rev_kl": None, "confusion_rank": [[1, 0], [0, 1]],
               "label_share_rank": {"neutral": 40.0},
               "rounds": {"r1": {"ece": 10.0, "off_option_mass": 2.5, "unparsed_examples": [{"uid": "a"}],
                                 "label_share_rank": {"neutral": 30.0}},
                          "r2": {"ece": 15.0, "option_rev_kl": None}}}, "eval")
    log.close()
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["rounds"]["r2"]["ece"] == 15.0
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    values = {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}
    assert values == {"eval/ece": [(3, 12.5)], "eval/label_share_rank/neutral": [(3, 40.0)],
                      "eval/r1/ece": [(3, 10.0)], "eval/r1/off_option_mass": [(3, 2.5)],
                      "eval/r1/label_share_rank/neutral": [(3, 30.0)], "eval/r2/ece": [(3, 15.0)]}


# ----------------------------------------------------------------------------------------- training

def test_kd_run_evaluates_the_option_kls_against_its_teacher(tiny_setup, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    done = subprocess.run(
        [sys.executable, "-m", "minillm.finetune", "--type", "kd", "--model-path",
         str(tiny_setup["models"] / "tiny-student"), "--teacher-model-path", str(tiny_setup["models"] / "tiny-teacher"),
         "--data-dir", str(tiny_setup["data_dir"]), "--save-dir", str(tmp_path), "--deepspeed-config",
         str(REPO / "configs" / "deepspeed" / "zero0_fp32.json"), "--max-steps", "2", "--batch-size", "8",
         "--eval-max-examples", "4", "--no-eval-generate", "--log-interval", "1"],
        capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    evals = [r for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines()) if "split" in r]
    assert len(evals) == 1
    for figures in (evals[0], *evals[0]["rounds"].values()):
        assert figures["option_rev_kl"] > 0 and figures["option_fwd_kl"] > 0
        assert 0 <= figures["ece"] <= 100 and 0 <= figures["off_option_mass"] <= 100
    assert "rKL(opt)" in done.stdout + done.stderr and "off-set" in done.stdout + done.stderr
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert events.Scalars("eval/r2/option_rev_kl")[0].value == pytest.approx(evals[0]["rounds"]["r2"]["option_rev_kl"])

"""The synthetic NLI generator: determinism, the facebook/anli file layout, balance, uniqueness, correct labels, no
hypothesis-only artifacts, rising difficulty, and the command-line tool."""

import math
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from minillm.data import synthetic
from minillm.data.anli import load_raw
from minillm.data.synthetic import (CONTRADICTION, ENTAILMENT, NEUTRAL, RELATIONS, ROUNDS, SPLITS, generate,
                                    hf_file_name, write_hf_layout)

SIZES = {"train": 1200, "dev": 300, "test": 150}
EXPECTED_SCHEMA = pa.schema([("uid", pa.string()), ("premise", pa.string()), ("hypothesis", pa.string()),
                             ("label", pa.int64()), ("reason", pa.string())])


@pytest.fixture(scope="module")
def data():
    return generate(seed=0, train_per_round=SIZES["train"], dev_per_round=SIZES["dev"], test_per_round=SIZES["test"])


@pytest.fixture(scope="module")
def written(data, tmp_path_factory):
    return write_hf_layout(data, tmp_path_factory.mktemp("synthetic"))


def words(text):
    return re.findall(r"[a-z]+", text.lower())


# --- determinism and files ---

def test_same_seed_gives_identical_data_and_another_seed_differs(data):
    again = generate(seed=0, train_per_round=SIZES["train"], dev_per_round=SIZES["dev"], test_per_round=SIZES["test"])
    other = generate(seed=1, train_per_round=SIZES["train"], dev_per_round=SIZES["dev"], test_per_round=SIZES["test"])
    assert again == data
    assert other.keys() == data.keys()
    for key in data:
        pairs = {(r["premise"], r["hypothesis"]) for r in data[key]}
        other_pairs = {(r["premise"], r["hypothesis"]) for r in other[key]}
        assert len(pairs & other_pairs) < len(pairs) // 2, key


def test_dev_and_test_do_not_depend_on_the_training_size(data):
    """r1's pairs collide often (under 5,000 distinct entailments), so training pairs drawn before the evaluation
    pairs would push dev and test onto other pairs for every training size."""
    smaller = generate(seed=0, train_per_round=300, dev_per_round=SIZES["dev"], test_per_round=SIZES["test"])
    for round_name in ROUNDS:
        for split in ("dev", "test"):
            assert smaller[(round_name, split)] == data[(round_name, split)], (round_name, split)
    assert list(smaller) == [(round_name, split) for round_name in ROUNDS for split in SPLITS]


def test_writing_twice_gives_byte_identical_files_that_read_back_as_the_data(data, written, tmp_path):
    second = write_hf_layout(data, tmp_path)
    for (round_name, split), records in data.items():
        name = hf_file_name(round_name, split)
        assert (written / name).read_bytes() == (second / name).read_bytes()
        assert pq.read_table(second / name).to_pylist() == records


def test_files_have_the_facebook_anli_names_schema_and_sizes(written):
    expected_names = {f"{split}_r{k}-00000-of-00001.parquet" for k in (1, 2, 3) for split in SPLITS}
    assert written.name == "plain_text"
    assert {path.name for path in written.iterdir()} == expected_names  # nine files, no temporary leftovers
    for k, round_name in enumerate(ROUNDS, 1):
        for split in SPLITS:
            table = pq.read_table(written / f"{split}_r{k}-00000-of-00001.parquet")
            assert table.schema.equals(EXPECTED_SCHEMA), table.schema
            assert table.num_rows == SIZES[split]


def test_the_project_reader_loads_the_written_layout(data, written):
    loaded = load_raw(written.parent)
    assert loaded.keys() == data.keys()
    for key, records in data.items():
        assert [(r["uid"], r["premise"], r["hypothesis"], r["label"], r["reason"]) for r in loaded[key]] == \
            [(r["uid"], r["premise"], r["hypothesis"], r["label"], r["reason"]) for r in records]


def test_a_failed_write_leaves_no_partial_file(data, tmp_path, monkeypatch):
    def write_half_then_fail(table, where, **kwargs):
        with open(where, "wb") as f:
            f.write(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(pq, "write_table", write_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_hf_layout(data, tmp_path)
    assert list((tmp_path / "plain_text").iterdir()) == []


# --- balance, uniqueness, sizes ---

def test_every_split_holds_exactly_a_third_of_each_label_in_shuffled_order(data):
    for key, records in data.items():
        labels = [r["label"] for r in records]
        assert Counter(labels) == {label: len(labels) // 3 for label in (ENTAILMENT, NEUTRAL, CONTRADICTION)}, key
        assert labels != sorted(labels) and labels[:30] != [0, 1, 2] * 10, key


@pytest.mark.parametrize("sizes", [dict(train_per_round=10), dict(dev_per_round=-3), dict(test_per_round=True),
                                   dict(train_per_round=3.0)])
def test_bad_sizes_raise(sizes):
    with pytest.raises(ValueError, match="per_round"):
        generate(**sizes)


def test_uids_are_unique_across_rounds_and_splits(data):
    uids = [r["uid"] for records in data.values() for r in records]
    assert len(uids) == len(set(uids)) == sum(SIZES.values()) * 3
    assert data[("r2", "dev")][42]["uid"] == "syn-r2-dev-000042"


def test_no_premise_hypothesis_pair_repeats_within_a_round(data):
    for round_name in ROUNDS:
        pairs = [(r["premise"], r["hypothesis"]) for split in SPLITS for r in data[(round_name, split)]]
        assert len(pairs) == len(set(pairs)), round_name


def test_texts_are_short_from_a_small_vocabulary_and_every_example_has_a_reason(data):
    vocabulary = set()
    for records in data.values():
        for r in records:
            assert len(r["premise"].split()) < 60 and len(r["hypothesis"].split()) < 15, r
            assert r["reason"].startswith("The premise says ") and r["reason"].endswith("."), r
            vocabulary.update(words(r["premise"] + " " + r["hypothesis"]))
    assert 150 < len(vocabulary) < 400


# --- labels are right: re-derive each one from the texts with an independent reasoner ---

def _clause_patterns():
    patterns = []
    for name, relation in RELATIONS.items():
        for negated, templates in ((False, relation.affirmations), (True, relation.negations)):
            for template in templates:
                regex = re.escape(template).replace(r"\{a\}", "(?:a|an)")
                regex = regex.replace(r"\{s\}", "(?P<s>" + "|".join(map(re.escape, relation.subjects)) + ")", 1)
                regex = regex.replace(r"\{v\}", "(?P<v>" + "|".join(map(re.escape, relation.values)) + ")", 1)
                patterns.append((re.compile(f"^{regex}$", re.IGNORECASE), name, negated))
    return patterns


CLAUSE_PATTERNS = _clause_patterns()
# "A is shorter than B" is "B is taller than A": (dimension, whether the sides swap).
ORDERINGS = {"taller": ("height", False), "shorter": ("height", True),
             "older": ("age", False), "younger": ("age", True)}


def _parse(text):
    """(relation, subject, value, negated) for every clause of a premise or hypothesis."""
    facts = []
    for sentence in re.split(r"(?<=\.) ", text):
        for clause in sentence.rstrip(".").split(", and "):
            readings = {(name, m.group("s"), m.group("v"), negated)
                        for pattern, name, negated in CLAUSE_PATTERNS if (m := pattern.match(clause))}
            assert len(readings) == 1, (clause, readings)
            facts.append(readings.pop())
    return facts


def _truth(facts, relation, subject, value):
    """Is the affirmative fact true (True), false (False) or undecided (None) given the premise facts?"""
    affirmed = {(r, s, v) for r, s, v, negated in facts if not negated}
    denied = {(r, s, v) for r, s, v, negated in facts if negated}

    def single_value(r, s):
        values = {v for rr, ss, v in affirmed if (rr, ss) == (r, s)}
        assert len(values) <= 1, "a premise gave one subject two values"
        return values.pop() if values else None

    if relation in ORDERINGS:
        dimension, swapped = ORDERINGS[relation]
        larger_than = {(v, s) if ORDERINGS[r][1] else (s, v) for r, s, v in affirmed
                       if r in ORDERINGS and ORDERINGS[r][0] == dimension}
        while extra := {(a, d) for a, b in larger_than for c, d in larger_than if b == c} - larger_than:
            larger_than |= extra
        larger, smaller = (value, subject) if swapped else (subject, value)
        return True if (larger, smaller) in larger_than else False if (smaller, larger) in larger_than else None
    if (relation, subject, value) in affirmed:
        return True
    if (relation, subject, value) in denied:
        return False
    if relation in synthetic.FUNCTIONAL_RELATIONS and single_value(relation, subject) is not None:
        return False
    room = single_value("person_room", subject) or single_value("object_room", subject)
    if room is None:
        return None
    if relation in ("person_building", "object_building"):
        building = single_value("room_building", room)
        return None if building is None else building == value
    rule = {"person_hat": "room_hat", "object_colour": "room_colour"}.get(relation)
    if rule and (rule, room, value) in affirmed:
        return True
    if rule and (rule, room, value) in denied:
        return False
    if relation == "object_colour" and single_value("room_colour", room) is not None:
        return False
    return None


def test_every_label_follows_from_its_premise(data):
    for (round_name, split), records in data.items():
        for r in records:
            [(relation, subject, value, negated)] = _parse(r["hypothesis"])
            truth = _truth(_parse(r["premise"]), relation, subject, value)
            expected = NEUTRAL if truth is None else ENTAILMENT if truth != negated else CONTRADICTION
            assert r["label"] == expected, r


# --- no hypothesis-only artifacts; the pair decides; difficulty rises over the rounds ---

def _naive_bayes_accuracy(train, dev, features):
    """Per-word multinomial Naive Bayes with add-one smoothing, fitted on train, scored on dev."""
    counts, priors = defaultdict(Counter), Counter(r["label"] for r in train)
    for r in train:
        counts[r["label"]].update(features(r))
    vocabulary = set().union(*counts.values())

    def predict(r):
        def score(label):
            total = sum(counts[label].values()) + len(vocabulary)
            return math.log(priors[label]) + sum(math.log((counts[label][w] + 1) / total) for w in features(r))
        return max(priors, key=score)

    return sum(predict(r) == r["label"] for r in dev) / len(dev)


def _bucket_accuracy(train, dev, feature):
    """Majority label of train examples with the same feature value; the overall majority for unseen values."""
    by_value = defaultdict(Counter)
    for r in train:
        by_value[feature(r)][r["label"]] += 1
    fallback = Counter(r["label"] for r in train).most_common(1)[0][0]
    return sum((by_value[feature(r)].most_common(1)[0][0] if by_value[feature(r)] else fallback) == r["label"]
               for r in dev) / len(dev)


def _lexical_overlap(r):
    """Whether the hypothesis occurs verbatim in the premise, and the share of its words that occur there."""
    hypothesis_words, premise_words = words(r["hypothesis"]), set(words(r["premise"]))
    verbatim = r["hypothesis"].rstrip(".").lower() in r["premise"].lower()
    return verbatim, round(sum(w in premise_words for w in hypothesis_words) / len(hypothesis_words), 1)


def test_the_hypothesis_alone_predicts_the_label_no_better_than_chance(data):
    for round_name in ROUNDS:
        train, dev = data[(round_name, "train")], data[(round_name, "dev")]
        word_bayes = _naive_bayes_accuracy(train, dev, lambda r: words(r["hypothesis"]))
        word_set_majority = _bucket_accuracy(train, dev, lambda r: frozenset(words(r["hypothesis"])))
        assert word_bayes < 0.45 and word_set_majority < 0.45, (round_name, word_bayes, word_set_majority)


def test_negation_in_the_hypothesis_is_not_a_contradiction_cue(data):
    records = data[("r3", "train")]
    for label in (ENTAILMENT, NEUTRAL, CONTRADICTION):
        with_label = [r for r in records if r["label"] == label]
        negated_share = sum(" not " in r["hypothesis"] for r in with_label) / len(with_label)
        assert 0.3 < negated_share < 0.55, (label, negated_share)


def test_the_pair_decides_r1_and_lexical_overlap_fails_more_in_later_rounds(data):
    overlap = {round_name: _bucket_accuracy(data[(round_name, "train")], data[(round_name, "dev")], _lexical_overlap)
               for round_name in ROUNDS}
    hypothesis_only = _naive_bayes_accuracy(data[("r1", "train")], data[("r1", "dev")],
                                            lambda r: words(r["hypothesis"]))
    assert overlap["r1"] > 0.65 and overlap["r1"] > hypothesis_only + 0.25, (overlap, hypothesis_only)
    assert overlap["r1"] > overlap["r2"] + 0.15 and overlap["r2"] > overlap["r3"] and overlap["r3"] < 0.45, overlap


# --- the command-line tool ---

def _run_tool(repo_root, *args):
    return subprocess.run([sys.executable, str(repo_root / "tools" / "make_synthetic_nli.py"), *args],
                          capture_output=True, text=True, timeout=60)


def test_tool_writes_the_nine_files_and_a_summary_line_each(repo_root, tmp_path):
    result = _run_tool(repo_root, "--out", str(tmp_path), "--seed", "3", "--train-per-round", "30",
                       "--dev-per-round", "6", "--test-per-round", "3")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 9
    assert f"{tmp_path / 'plain_text' / 'dev_r2-00000-of-00001.parquet'}: 6 rows " \
           "(entailment 2, neutral 2, contradiction 2)" in lines
    assert len(list((tmp_path / "plain_text").glob("*.parquet"))) == 9
    assert pq.read_table(tmp_path / "plain_text" / "train_r3-00000-of-00001.parquet").to_pylist() == \
        generate(seed=3, train_per_round=30, dev_per_round=6, test_per_round=3)[("r3", "train")]


@pytest.mark.parametrize("args, message", [(["--dev-per-round", "10"], "--dev-per-round must be divisible by 3"),
                                           (["--train-per-round", "-3"], "--train-per-round must be >= 0")])
def test_tool_rejects_bad_sizes_with_one_line(repo_root, tmp_path, args, message):
    result = _run_tool(repo_root, "--out", str(tmp_path), *args)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1 and message in result.stderr
    assert not (tmp_path / "plain_text").exists()


def test_tool_refuses_an_out_that_is_a_file_with_one_line(repo_root, tmp_path):
    (tmp_path / "a_file").write_text("")
    result = _run_tool(repo_root, "--out", str(tmp_path / "a_file"), "--train-per-round", "3")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"make_synthetic_nli.py: error: --out {tmp_path / 'a_file'}: cannot create "
        f"{tmp_path / 'a_file' / 'plain_text'} (Not a directory)"]

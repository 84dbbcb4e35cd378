"""A deterministic synthetic NLI data set in ANLI's shape: the project's offline "embedded default" data.

Every example is a premise, a hypothesis, a label and a templated ``reason``; labels use ANLI's ids
(0 entailment, 1 neutral, 2 contradiction). The texts describe a small closed world (a few hundred distinct words:
people, rooms, objects, colours, jobs, buildings) in which every person is in one room and has one job, every object
has one colour and lies in one room, and every room belongs to one building; a different value therefore contradicts.

Three rounds of rising difficulty, like ANLI's R1-R3:

* ``r1``: the premise is one fact in a fixed wording. The hypothesis restates it (entailment), gives the same subject
  another value (contradiction), or is about a subject or attribute the premise does not mention (neutral).
* ``r2``: two to four facts about several subjects, worded with paraphrases and sometimes joined with "and". The
  hypothesis's value is always attached to another subject as well, so the right subject must be picked.
* ``r3``: multi-step reasoning: negation in premise and hypothesis, two-hop location chains (a room in a building),
  quantifiers ("everyone in the hall is wearing a red hat", "nothing in the attic is blue") and comparison chains
  (taller, older), each with distractor facts.

No annotation artifacts: each example first draws its hypothesis from a pool that does not depend on the label, and
only then builds a premise that makes that hypothesis entailed, contradicted or undecided. Negations, wordings and
lengths of hypotheses are therefore distributed alike under all three labels, and only the pair decides the label.
Within a round no (premise, hypothesis) pair occurs twice, so dev and test never repeat a training pair. The
evaluation splits are drawn first, so a seed's dev and test sets are the same whatever the training size.

All randomness comes from ``random.Random`` instances seeded from (seed, round, split): the same seed always gives
the same data, on any machine and Python hash seed.

Use :func:`generate` for the records and :func:`write_hf_layout` to write them as ``facebook/anli`` parquet files;
``tools/make_synthetic_nli.py`` does both from the command line.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

ROUNDS = ("r1", "r2", "r3")
SPLITS = ("train", "dev", "test")
GENERATION_ORDER = ("test", "dev", "train")
ENTAILMENT, NEUTRAL, CONTRADICTION = 0, 1, 2
LABEL_NAMES = ("entailment", "neutral", "contradiction")

PEOPLE = (
    "Anna", "Tom", "Lee", "Maria", "Omar", "Priya", "Ken", "Sara", "Ivan", "Nina", "Paul", "Rosa", "Yuki", "Ali",
    "Emma", "Jack", "Lena", "Hugo", "Mia", "Noah", "Olga", "Pedro", "Rita", "Sam", "Tara", "Umar", "Vera", "Wes",
    "Zoe", "Ben", "Carla", "Dan", "Eva", "Finn", "Gina", "Hana", "Igor", "Jade", "Karl", "Lucy", "Marc", "Nora",
    "Otto", "Pia", "Raj", "Sofia", "Theo", "Una", "Victor", "Wendy", "Xena", "Yusuf", "Zara", "Alan", "Bea", "Chen",
    "Dora", "Eli", "Fay", "Gus",
)
ROOMS = (
    "kitchen", "garden", "hall", "attic", "cellar", "library", "bedroom", "bathroom", "garage", "study", "pantry",
    "office", "porch", "nursery", "gym", "workshop", "laundry", "lounge", "balcony", "studio", "greenhouse",
    "basement", "classroom", "corridor",
)
OBJECTS = (
    "cup", "key", "lamp", "book", "box", "chair", "clock", "vase", "bag", "ball", "bottle", "brush", "candle", "coat",
    "comb", "drum", "fan", "flag", "guitar", "hammer", "jar", "kettle", "kite", "ladder", "map", "mirror", "mug", "pen",
    "pillow", "plate", "radio", "rope", "ruler", "scarf", "shoe", "spoon", "table", "toy", "umbrella", "wallet",
    "basket", "bell", "blanket", "bowl", "bucket", "camera", "carpet", "coin", "desk", "glove", "helmet", "jacket",
    "knife", "mask", "needle", "parcel", "piano", "ring", "sofa", "tray",
)
COLOURS = (
    "red", "blue", "green", "yellow", "black", "white", "grey", "brown", "pink", "purple", "orange", "silver", "gold",
    "beige",
)
JOBS = (
    "teacher", "doctor", "nurse", "pilot", "baker", "farmer", "lawyer", "painter", "singer", "driver", "engineer",
    "artist", "actor", "chef", "writer", "dentist", "plumber", "tailor", "banker", "judge",
)
# No building name contains a room or colour word, so "the hall" never matches inside a building's name.
BUILDINGS = (
    "north house", "south house", "east house", "west house", "old mill", "new school", "stone tower", "river lodge",
    "hill farm", "city museum", "lake hotel", "village inn",
)


@dataclass(frozen=True)
class Relation:
    """How one kind of fact is worded. The first affirmation and negation are the canonical forms, used in every
    hypothesis and reason; premises of r2 and r3 draw from all of them."""

    subjects: tuple[str, ...]
    values: tuple[str, ...]
    affirmations: tuple[str, ...]
    negations: tuple[str, ...]
    question: str  # the open question a premise leaves when it does not decide a fact, for neutral reasons


RELATIONS = {
    "person_room": Relation(
        PEOPLE, ROOMS,
        ("{s} is in the {v}", "{s} is sitting in the {v}", "{s} is waiting in the {v}", "{s} is inside the {v}"),
        ("{s} is not in the {v}", "{s} is not inside the {v}"),
        "where {s} is"),
    "object_room": Relation(
        OBJECTS, ROOMS,
        ("the {s} is in the {v}", "the {s} lies in the {v}", "the {s} is kept in the {v}"),
        ("the {s} is not in the {v}", "the {s} is not kept in the {v}"),
        "where the {s} is"),
    "object_colour": Relation(
        OBJECTS, COLOURS,
        ("the {s} is {v}", "the {s} is painted {v}", "the colour of the {s} is {v}"),
        ("the {s} is not {v}", "the {s} is not painted {v}"),
        "what colour the {s} is"),
    "person_job": Relation(
        PEOPLE, JOBS,
        ("{s} is {a} {v}", "{s} works as {a} {v}", "{s} has a job as {a} {v}"),
        ("{s} is not {a} {v}", "{s} does not work as {a} {v}"),
        "what job {s} has"),
    "person_hat": Relation(
        PEOPLE, COLOURS,
        ("{s} is wearing {a} {v} hat", "{s} wears {a} {v} hat"),
        ("{s} is not wearing {a} {v} hat", "{s} does not wear {a} {v} hat"),
        "what hat {s} is wearing"),
    "room_building": Relation(
        ROOMS, BUILDINGS,
        ("the {s} is in the {v}", "the {s} is part of the {v}"),
        ("the {s} is not in the {v}",),
        "which building the {s} is in"),
    "person_building": Relation(
        PEOPLE, BUILDINGS, ("{s} is in the {v}",), ("{s} is not in the {v}",), "which building {s} is in"),
    "object_building": Relation(
        OBJECTS, BUILDINGS, ("the {s} is in the {v}",), ("the {s} is not in the {v}",), "which building the {s} is in"),
    # Quantified facts about everyone / everything in a room: the negated form is the "nobody" / "nothing" statement.
    "room_hat": Relation(
        ROOMS, COLOURS,
        ("everyone in the {s} is wearing {a} {v} hat", "each person in the {s} wears {a} {v} hat"),
        ("nobody in the {s} is wearing {a} {v} hat", "no one in the {s} wears {a} {v} hat"),
        "what hats people in the {s} wear"),
    "room_colour": Relation(
        ROOMS, COLOURS,
        ("everything in the {s} is {v}", "all the things in the {s} are {v}"),
        ("nothing in the {s} is {v}", "none of the things in the {s} are {v}"),
        "what colour the things in the {s} are"),
    # Comparisons: subject and value are both people. A premise words "A is taller than B" as either this relation
    # or "B is shorter than A", so both words occur in premises and hypotheses under every label.
    "taller": Relation(PEOPLE, PEOPLE, ("{s} is taller than {v}",), ("{s} is not taller than {v}",),
                       "who is taller, {s} or {v}"),
    "shorter": Relation(PEOPLE, PEOPLE, ("{s} is shorter than {v}",), ("{s} is not shorter than {v}",),
                        "who is taller, {s} or {v}"),
    "older": Relation(PEOPLE, PEOPLE, ("{s} is older than {v}",), ("{s} is not older than {v}",),
                      "who is older, {s} or {v}"),
    "younger": Relation(PEOPLE, PEOPLE, ("{s} is younger than {v}",), ("{s} is not younger than {v}",),
                        "who is older, {s} or {v}"),
}
# Relations with exactly one value per subject: stating another value contradicts.
FUNCTIONAL_RELATIONS = ("person_room", "object_room", "object_colour", "person_job")
# The other functional relation of the same kind of subject: a fact about the subject that leaves the asked one open.
SIBLING_RELATION = {"person_room": "person_job", "person_job": "person_room",
                    "object_room": "object_colour", "object_colour": "object_room"}
# (dimension, larger-first word, smaller-first word): "A taller B" and "B shorter A" say the same.
COMPARISONS = (("height", "taller", "shorter"), ("age", "older", "younger"))

# Guards the rejection loop that keeps pairs unique: a round asked for more examples than its sentence space holds
# fails with a clear message instead of looping for ever.
MAX_ATTEMPTS_PER_EXAMPLE = 200


@dataclass(frozen=True)
class Fact:
    relation: str
    subject: str
    value: str
    negated: bool = False

    def clause(self, wording: int = 0) -> str:
        """The fact as a lower-case clause (names keep their capitals); wording 0 is the canonical form."""
        relation = RELATIONS[self.relation]
        templates = relation.negations if self.negated else relation.affirmations
        return templates[wording].format(s=self.subject, v=self.value, a=_article(self.value))

    def wordings(self) -> int:
        relation = RELATIONS[self.relation]
        return len(relation.negations if self.negated else relation.affirmations)

    def question(self) -> str:
        return RELATIONS[self.relation].question.format(s=self.subject, v=self.value)


@dataclass(frozen=True)
class Example:
    """A hypothesis with the premise facts built for it and the explanation of the label."""

    facts: list[Fact]
    hypothesis: Fact
    reason: str


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _sentence(clause: str) -> str:
    return clause[0].upper() + clause[1:] + "."


def _and_list(clauses: list[str]) -> str:
    if len(clauses) == 1:
        return clauses[0]
    return ", ".join(clauses[:-1]) + " and " + clauses[-1]


def _reason(evidence: list[Fact], atom: Fact, truth: bool | None, hypothesis: Fact, open_question: str = "") -> str:
    """Explain the label: the premise facts that matter, then what they say about the hypothesis's fact ``atom``
    (its affirmative form): true, false, or undecided (``truth`` None), naming the question left open."""
    said = _and_list([fact.clause() for fact in evidence])
    if truth is None:
        return (f"The premise says {said}, but not {open_question or atom.question()}, "
                f"so it does not tell whether {atom.clause()}.")
    conclusion = replace(atom, negated=not truth).clause()
    verdict = "as the hypothesis says" if truth != hypothesis.negated else "the opposite of the hypothesis"
    return f"The premise says {said}, so {conclusion}, {verdict}."


def _truth_for(label: int, hypothesis: Fact) -> bool | None:
    """The truth value the premise must give the hypothesis's affirmative fact for the hypothesis to get ``label``."""
    if label == NEUTRAL:
        return None
    return (label == ENTAILMENT) != hypothesis.negated


def _other(rng: random.Random, choices: tuple[str, ...], *excluded: str) -> str:
    while True:
        choice = rng.choice(choices)
        if choice not in excluded:
            return choice


def _random_fact(rng: random.Random, relation_name: str) -> Fact:
    relation = RELATIONS[relation_name]
    return Fact(relation_name, rng.choice(relation.subjects), rng.choice(relation.values))


def _distractor(rng: random.Random, taken: set[tuple[str, str]], negation_rate: float = 0.0) -> Fact:
    """A functional fact about a (relation, subject) not yet stated, so it cannot decide or contradict the others."""
    while True:
        fact = _random_fact(rng, rng.choice(FUNCTIONAL_RELATIONS))
        if (fact.relation, fact.subject) not in taken:
            taken.add((fact.relation, fact.subject))
            return replace(fact, negated=rng.random() < negation_rate)


# --- r1: one fact, the hypothesis restates it, changes its value, or asks about something it does not mention ---

def _round1(rng: random.Random, label: int) -> Example:
    hypothesis = _random_fact(rng, rng.choice(FUNCTIONAL_RELATIONS))
    relation = RELATIONS[hypothesis.relation]
    if label == ENTAILMENT:
        fact = hypothesis
    elif label == CONTRADICTION:
        fact = replace(hypothesis, value=_other(rng, relation.values, hypothesis.value))
    elif rng.random() < 0.5:  # neutral: the same value, said of another subject
        fact = replace(hypothesis, subject=_other(rng, relation.subjects, hypothesis.subject))
    else:  # neutral: the same subject, another attribute
        fact = replace(_random_fact(rng, SIBLING_RELATION[hypothesis.relation]), subject=hypothesis.subject)
    return Example([fact], hypothesis, _reason([fact], hypothesis, _truth_for(label, hypothesis), hypothesis))


# --- r2: several subjects; the hypothesis's value always belongs to another subject too ---

def _round2(rng: random.Random, label: int) -> Example:
    hypothesis = _random_fact(rng, rng.choice(FUNCTIONAL_RELATIONS))
    relation = RELATIONS[hypothesis.relation]
    subject = hypothesis.subject
    fact_count = rng.randint(2, 4)
    taken = {(hypothesis.relation, subject)}
    # The lure: the hypothesis's value, said of another subject; present under every label.
    lure = replace(hypothesis, subject=_other(rng, relation.subjects, subject))
    taken.add((lure.relation, lure.subject))
    sibling = replace(_random_fact(rng, SIBLING_RELATION[hypothesis.relation]), subject=subject)
    taken.add((sibling.relation, subject))
    if label == NEUTRAL:
        core, evidence = [sibling, lure], [lure, sibling]
    else:
        decisive = hypothesis if label == ENTAILMENT else replace(
            hypothesis, value=_other(rng, relation.values, hypothesis.value))
        core = [decisive, lure] + ([sibling] if fact_count > 2 else [])
        evidence = [decisive]
    facts = core + [_distractor(rng, taken) for _ in range(fact_count - len(core))]
    return Example(facts, hypothesis, _reason(evidence, hypothesis, _truth_for(label, hypothesis), hypothesis))


# --- r3: negation, two-hop chains, quantifiers and comparisons, each drawn independently of the label ---

def _negation(rng: random.Random, label: int) -> Example:
    """A functional fact, affirmed or denied in the hypothesis, decided by an affirmed or denied fact in the premise."""
    relation_name = rng.choice(FUNCTIONAL_RELATIONS)
    relation = RELATIONS[relation_name]
    hypothesis = replace(_random_fact(rng, relation_name), negated=rng.random() < 0.5)
    atom = replace(hypothesis, negated=False)
    truth = _truth_for(label, hypothesis)
    other_value = _other(rng, relation.values, atom.value)
    if truth is True:
        core = atom
    elif truth is False:  # another value affirmed, or this value denied
        core = replace(atom, value=other_value) if rng.random() < 0.5 else replace(atom, negated=True)
    elif rng.random() < 0.5:  # undecided: another value denied
        core = replace(atom, value=other_value, negated=True)
    else:  # undecided: another attribute of the subject
        core = replace(_random_fact(rng, SIBLING_RELATION[relation_name]), subject=atom.subject,
                       negated=rng.random() < 0.5)
    lure = replace(atom, subject=_other(rng, relation.subjects, atom.subject), negated=rng.random() < 0.5)
    taken = {(relation_name, atom.subject), (core.relation, core.subject), (lure.relation, lure.subject)}
    facts = [core, lure, _distractor(rng, taken, negation_rate=0.5)]
    return Example(facts, hypothesis, _reason([core], atom, truth, hypothesis))


def _two_hop(rng: random.Random, label: int) -> Example:
    """Someone or something is in a room, the room is in a building: is it in the building? A second subject in a
    second room, and the rooms' buildings, always use the hypothesis's building and one other."""
    is_person = rng.random() < 0.5
    subjects = PEOPLE if is_person else OBJECTS
    subject_room, building_relation = ("person_room", "person_building") if is_person else (
        "object_room", "object_building")
    subject, other_subject = rng.sample(subjects, 2)
    building, other_building = rng.sample(BUILDINGS, 2)
    room, other_room, third_room = rng.sample(ROOMS, 3)
    hypothesis = Fact(building_relation, subject, building, negated=rng.random() < 0.5)
    atom = replace(hypothesis, negated=False)
    truth = _truth_for(label, hypothesis)
    where = Fact(subject_room, subject, room)
    elsewhere = Fact(subject_room, other_subject, other_room)
    if truth is None:  # the subject's room is never placed in a building
        placed = [Fact("room_building", other_room, building), Fact("room_building", third_room, other_building)]
        open_question = Fact("room_building", room, building).question()
        reason = _reason([where, placed[0]], atom, None, hypothesis, open_question=open_question)
    else:
        room_building = building if truth else other_building
        placed = [Fact("room_building", room, room_building),
                  Fact("room_building", other_room, other_building if truth else building)]
        reason = _reason([where, placed[0]], atom, truth, hypothesis)
    return Example([where, elsewhere] + placed, hypothesis, reason)


def _quantified_hats(rng: random.Random, label: int) -> Example:
    """Everyone (or nobody) in a room wears a hat of some colour; is a given person wearing one? The person is in
    the quantified room exactly when the premise decides the hypothesis; a second person is in the other room."""
    person, other_person = rng.sample(PEOPLE, 2)
    room, other_room = rng.sample(ROOMS, 2)
    hypothesis = Fact("person_hat", person, rng.choice(COLOURS), negated=rng.random() < 0.5)
    atom = replace(hypothesis, negated=False)
    truth = _truth_for(label, hypothesis)
    if truth is None:
        rule = Fact("room_hat", room, atom.value, negated=rng.random() < 0.5)
        person_room, other_person_room = other_room, room
    else:
        rule = Fact("room_hat", room, atom.value, negated=not truth)
        person_room, other_person_room = room, other_room
    placed = Fact("person_room", person, person_room)
    facts = [rule, placed, Fact("person_room", other_person, other_person_room)]
    return Example(facts, hypothesis, _reason([rule, placed], atom, truth, hypothesis))


def _quantified_colours(rng: random.Random, label: int) -> Example:
    """Everything (or nothing) in a room is of some colour; what colour is a given object? "Nothing in the room is
    <another colour>" leaves the object's colour open even when the object is in that room."""
    thing, other_thing = rng.sample(OBJECTS, 2)
    room, other_room = rng.sample(ROOMS, 2)
    colour, other_colour = rng.sample(COLOURS, 2)
    hypothesis = Fact("object_colour", thing, colour, negated=rng.random() < 0.5)
    atom = replace(hypothesis, negated=False)
    truth = _truth_for(label, hypothesis)
    thing_inside = True
    if truth is True:
        rule = Fact("room_colour", room, colour)
    elif truth is False:
        rule = rng.choice((Fact("room_colour", room, other_colour), Fact("room_colour", room, colour, negated=True)))
    elif rng.random() < 0.5:
        rule = Fact("room_colour", room, other_colour, negated=True)
    else:
        rule = Fact("room_colour", room, rng.choice((colour, other_colour)), negated=rng.random() < 0.5)
        thing_inside = False
    placed = Fact("object_room", thing, room if thing_inside else other_room)
    facts = [rule, placed, Fact("object_room", other_thing, other_room if thing_inside else room)]
    return Example(facts, hypothesis, _reason([rule, placed], atom, truth, hypothesis))


def _compare(rng: random.Random, dimension: tuple[str, str, str], larger: str, smaller: str) -> Fact:
    """``larger`` exceeds ``smaller`` on the dimension: "A is taller than B" or, as often, "B is shorter than A"."""
    _, larger_word, smaller_word = dimension
    return Fact(larger_word, larger, smaller) if rng.random() < 0.5 else Fact(smaller_word, smaller, larger)


def _comparison(rng: random.Random, label: int) -> Example:
    """Two comparisons through a middle person decide (a chain) or leave open (both on one side) how two people
    compare; the same two people are also compared on the other dimension, and a fourth person on this one."""
    dimension, other_dimension = rng.sample(COMPARISONS, 2)
    subject, other, middle, extra = rng.sample(PEOPLE, 4)
    word = rng.choice(dimension[1:])
    hypothesis = Fact(word, subject, other, negated=rng.random() < 0.5)
    atom = replace(hypothesis, negated=False)
    truth = _truth_for(label, hypothesis)
    larger, smaller = (subject, other) if word == dimension[1] else (other, subject)
    if truth is True:
        pairs = [(larger, middle), (middle, smaller)]
    elif truth is False:
        pairs = [(smaller, middle), (middle, larger)]
    elif rng.random() < 0.5:
        pairs = [(larger, middle), (smaller, middle)]
    else:
        pairs = [(middle, larger), (middle, smaller)]
    chain = [_compare(rng, dimension, *pair) for pair in pairs]
    lure = _compare(rng, other_dimension, *rng.sample((subject, other), 2))
    aside = _compare(rng, dimension, *rng.sample((middle, extra), 2))
    return Example(chain + [lure, aside], hypothesis, _reason(chain, atom, truth, hypothesis))


def _round3(rng: random.Random, label: int) -> Example:
    return rng.choice(ROUND3_KINDS)(rng, label)


ROUND3_KINDS: tuple[Callable[[random.Random, int], Example], ...] = (
    _negation, _two_hop, _quantified_hats, _quantified_colours, _comparison)
ROUND_BUILDERS = {"r1": _round1, "r2": _round2, "r3": _round3}
# r1 keeps the canonical wording so that a small model can learn it; later rounds paraphrase and sometimes join two
# facts into one sentence, so that matching the hypothesis's words against the premise is not enough.
PARAPHRASED_ROUNDS = ("r2", "r3")
JOIN_RATE = 0.3


def _premise(rng: random.Random, facts: list[Fact], paraphrase: bool) -> str:
    order = list(facts)
    rng.shuffle(order)
    clauses = [fact.clause(rng.randrange(fact.wordings()) if paraphrase else 0) for fact in order]
    sentences = []
    while clauses:
        if paraphrase and len(clauses) > 1 and rng.random() < JOIN_RATE:
            sentences.append(_sentence(f"{clauses.pop(0)}, and {clauses.pop(0)}"))
        else:
            sentences.append(_sentence(clauses.pop(0)))
    return " ".join(sentences)


def _check_size(name: str, size: object) -> int:
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {size!r}")
    if size % 3:
        raise ValueError(f"{name} must be divisible by 3 so that the three labels are exactly balanced, got {size}")
    return size


def generate(seed: int = 0, train_per_round: int = 3000, dev_per_round: int = 300,
             test_per_round: int = 300) -> dict[tuple[str, str], list[dict]]:
    """All nine (round, split) lists of records ``{uid, premise, hypothesis, label, reason}``.

    Each list holds exactly a third of each label, in shuffled order. Raises ValueError for a size that is negative
    or not divisible by 3, or when a round has no room for that many distinct pairs (r1, one fact in one wording,
    holds under 5,000 distinct entailments, which caps it at about 14,000 examples over its three splits).
    """
    sizes = {"train": _check_size("train_per_round", train_per_round),
             "dev": _check_size("dev_per_round", dev_per_round),
             "test": _check_size("test_per_round", test_per_round)}
    data = {}
    for round_name in ROUNDS:
        build, paraphrase = ROUND_BUILDERS[round_name], round_name in PARAPHRASED_ROUNDS
        seen_pairs: set[tuple[str, str]] = set()  # shared by the round's splits: no pair in two splits
        # Test, then dev, then train: the training pairs avoid the evaluation pairs, so that dev and test do not
        # depend on the training size (r1 is small enough for the splits to collide often).
        for split in GENERATION_ORDER:
            # A string seed is hashed with SHA-512, independent of PYTHONHASHSEED.
            rng = random.Random(f"synthetic-nli:{seed}:{round_name}:{split}")
            labels = [ENTAILMENT, NEUTRAL, CONTRADICTION] * (sizes[split] // 3)
            rng.shuffle(labels)
            records = []
            for index, label in enumerate(labels):
                for _ in range(MAX_ATTEMPTS_PER_EXAMPLE):
                    example = build(rng, label)
                    pair = (_premise(rng, example.facts, paraphrase), _sentence(example.hypothesis.clause()))
                    if pair not in seen_pairs:
                        break
                else:
                    raise ValueError(f"round {round_name} ran out of distinct (premise, hypothesis) pairs at {split} "
                                     f"example {index} of {sizes[split]}; ask for fewer examples")
                seen_pairs.add(pair)
                records.append({"uid": f"syn-{round_name}-{split}-{index:06d}", "premise": pair[0],
                                "hypothesis": pair[1], "label": label, "reason": example.reason})
            data[(round_name, split)] = records
    return {(round_name, split): data[(round_name, split)] for round_name in ROUNDS for split in SPLITS}


def hf_file_name(round_name: str, split: str) -> str:
    """The Hugging Face ``facebook/anli`` file name of one (round, split), e.g. ``dev_r2-00000-of-00001.parquet``."""
    return f"{split}_r{ROUNDS.index(round_name) + 1}-00000-of-00001.parquet"


def write_hf_layout(data: dict[tuple[str, str], list[dict]], out_dir: str | Path) -> Path:
    """Write ``data`` as ``out_dir/plain_text/{split}_r{k}-00000-of-00001.parquet`` with the ``facebook/anli``
    schema (uid, premise, hypothesis: string; label: int64; reason: string) and return the ``plain_text`` folder.

    Each file is written under a temporary name in the same folder and renamed into place, so a reader never sees
    a half-written file. Writing the same data twice gives byte-identical files.
    """
    # Imported here so that generate() needs nothing beyond the standard library.
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([("uid", pa.string()), ("premise", pa.string()), ("hypothesis", pa.string()),
                        ("label", pa.int64()), ("reason", pa.string())])
    folder = Path(out_dir) / "plain_text"
    folder.mkdir(parents=True, exist_ok=True)
    for (round_name, split), records in data.items():
        if round_name not in ROUNDS or split not in SPLITS:
            raise ValueError(f"unknown (round, split) {(round_name, split)!r}; "
                             f"expected rounds {ROUNDS} and splits {SPLITS}")
        table = pa.Table.from_pylist(records, schema=schema)
        final = folder / hf_file_name(round_name, split)
        temporary = folder / f".{final.name}.{os.getpid()}.tmp"
        try:
            pq.write_table(table, temporary)
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
    return folder

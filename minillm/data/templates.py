"""Prompt templates for NLI: how a (premise, hypothesis) pair becomes a prompt, and a label becomes a target.

Label ids follow ANLI: 0 entailment, 1 neutral, 2 contradiction. Each template names the answer string of each
label; the answers are also the options listed in the prompt and the candidates for rank classification.
The premise always comes first so that an over-long prompt can be shortened by cutting the premise alone.
"""

from __future__ import annotations

from dataclasses import dataclass

LABEL_NAMES = ("entailment", "neutral", "contradiction")
TARGET_KINDS = ("label", "label_reason")


@dataclass(frozen=True)
class Template:
    name: str
    body: str  # format string with {premise}, {hypothesis} and {options}; {premise} comes first
    answers: tuple[str, str, str]  # answer text for label ids 0, 1, 2
    description: str

    def prompt(self, premise: str, hypothesis: str) -> str:
        options = "OPTIONS:\n" + "\n".join(f"- {a}" for a in self.answers)
        return self.body.format(premise=premise, hypothesis=hypothesis, options=options)

    def target(self, label: int, reason: str, kind: str) -> str:
        """``label``: the answer alone. ``label_reason``: the answer, then the rationale when there is one."""
        answer = self.answers[label]
        if kind == "label" or not reason:
            return answer
        return f"{answer}. {reason}"


TEMPLATES = {
    t.name: t
    for t in (
        Template(
            name="flan",
            body='{premise}\n\nBased on the paragraph above can we conclude that "{hypothesis}"?\n\n{options}',
            answers=("Yes", "It's impossible to say", "No"),
            description="a FLAN ANLI template with Flan-T5's own answers (the default)",
        ),
        Template(
            name="nli_labels",
            body="Premise: {premise}\nHypothesis: {hypothesis}\n"
            "Does the premise entail the hypothesis, is it neutral, or does it contradict it?\n\n{options}",
            answers=LABEL_NAMES,
            description="the answers entailment / neutral / contradiction",
        ),
    )
}


def get_template(name: str) -> Template:
    if name not in TEMPLATES:
        raise ValueError(f"unknown template {name!r}: choose one of {', '.join(TEMPLATES)}")
    return TEMPLATES[name]

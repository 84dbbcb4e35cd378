"""Prompt templates for NLI: how a (premise, hypothesis) pair becomes a prompt, and a label becomes a target.

Label ids follow ANLI: 0 entailment, 1 neutral, 2 contradiction. Each template names the answer string of each
label; the answers are also the options listed in the prompt and the candidates for rank classification.
The premise always comes first so that an over-long prompt can be shortened by cutting the premise alone.

:data:`INSTRUCTION_TEMPLATES` hold the instruction-following templates (Dolly): MiniLLM's, which is Alpaca's.
"""

from __future__ import annotations

from dataclasses import dataclass

LABEL_NAMES = ("entailment", "neutral", "contradiction")
TARGET_KINDS = ("label", "label_reason")
# Ends the prompt of a decoder-only model, which continues the prompt with its answer: the answer starts a line of
# its own after "Answer:", rather than running on from the last option ("- NoYes"), and the line break keeps BPE
# merges from crossing into the answer.
ANSWER_CUE = "\n\nAnswer:\n"


@dataclass(frozen=True)
class Template:
    name: str
    body: str  # format string with {premise}, {hypothesis} and {options}; {premise} comes first
    answers: tuple[str, str, str]  # answer text for label ids 0, 1, 2
    description: str

    def prompt(self, premise: str, hypothesis: str, answer_cue: bool = False) -> str:
        """The prompt; with ``answer_cue`` (for decoder-only models) followed by :data:`ANSWER_CUE`."""
        options = "OPTIONS:\n" + "\n".join(f"- {a}" for a in self.answers)
        text = self.body.format(premise=premise, hypothesis=hypothesis, options=options)
        return text + ANSWER_CUE if answer_cue else text

    @staticmethod
    def with_answer_cue(prompt: str) -> str:
        """``prompt`` ending in :data:`ANSWER_CUE`: appended unless already there (SeqKD text copies the prompts of
        processed causal data, which have it)."""
        return prompt if prompt.endswith(ANSWER_CUE) else prompt + ANSWER_CUE

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


@dataclass(frozen=True)
class InstructionTemplate:
    """An instruction-following prompt: one body for examples with an input (context), one for those without. The
    response follows the prompt directly, so a body ends where the response starts."""

    name: str
    with_input: str  # format string with {instruction} and {input}
    without_input: str  # format string with {instruction}
    description: str

    def prompt(self, instruction: str, context: str) -> str:
        """The prompt; an empty ``context`` selects the body without input."""
        if context:
            return self.with_input.format(instruction=instruction, input=context)
        return self.without_input.format(instruction=instruction)


_ALPACA_TASK = "Below is an instruction that describes a task{paired}. Write a response that appropriately completes " \
               "the request.\n\n### Instruction:\n{{instruction}}\n\n"

INSTRUCTION_TEMPLATES = {
    t.name: t
    for t in (
        InstructionTemplate(
            name="alpaca",
            with_input=_ALPACA_TASK.format(paired=", paired with an input that provides further context")
            + "### Input:\n{input}\n\n### Response:\n",
            without_input=_ALPACA_TASK.format(paired="") + "### Response:\n",
            description="MiniLLM's Dolly template (Alpaca's), with and without an input",
        ),
    )
}


def get_instruction_template(name: str) -> InstructionTemplate:
    if name not in INSTRUCTION_TEMPLATES:
        raise ValueError(f"unknown instruction template {name!r}: choose one of {', '.join(INSTRUCTION_TEMPLATES)}")
    return INSTRUCTION_TEMPLATES[name]

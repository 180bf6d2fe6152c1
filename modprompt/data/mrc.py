"""The unified machine-reading-comprehension (MRC) example every task is converted into.

A classification, NLI, paraphrase, relation or multiple-choice problem becomes: a *query* (the task
instruction or question), a *passage* (the input text or texts), a list of *options* and the index of
the right one. Extractive QA has no options; its answer is a character span of the passage. One span
head then serves every task: for an option task the answer span is the option's own tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class TaskKind(str, Enum):
    """What a task asks; decides nothing about the model, only how converters and metrics read it."""

    CLASSIFICATION = "classification"
    NLI = "nli"
    PARAPHRASE = "paraphrase"
    SIMILARITY = "similarity"
    RELATION = "relation"
    MULTIPLE_CHOICE = "multiple_choice"
    EXTRACTIVE_QA = "extractive_qa"


class Role(str, Enum):
    UPSTREAM = "upstream"
    DOWNSTREAM = "downstream"


@dataclass(frozen=True)
class MRCExample:
    """One task instance in the unified MRC format.

    Exactly one of ``label`` (option tasks) or ``span`` (extractive QA) is set for a labelled
    example; both are ``None`` for an unlabelled one (prediction on a user's file).
    """

    task: str
    query: str
    passage: str
    options: tuple[str, ...] = ()
    label: int | None = None
    span: tuple[int, int] | None = None  # [start, end) in characters of ``passage``
    answers: tuple[str, ...] = ()  # every gold answer text, for exact match / F1
    texts: tuple[str, ...] = ()  # the raw input text(s), used to detect leakage across tasks
    source: str = ""  # "file:line" (or record index): where the example came from
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.label is not None:
            if not self.options:
                raise ValueError(f"{self.source}: a label needs options")
            if not 0 <= self.label < len(self.options):
                raise ValueError(f"{self.source}: label {self.label} outside {len(self.options)} options")
        if self.span is not None:
            if self.options:
                raise ValueError(f"{self.source}: an extractive example has no options")
            start, end = self.span
            if not 0 <= start < end <= len(self.passage):
                raise ValueError(f"{self.source}: span {self.span} outside passage of {len(self.passage)} chars")

    @property
    def answer_text(self) -> str | None:
        """The gold answer as text: the chosen option, or the passage span."""
        if self.label is not None:
            return self.options[self.label]
        if self.span is not None:
            return self.passage[self.span[0] : self.span[1]]
        return None

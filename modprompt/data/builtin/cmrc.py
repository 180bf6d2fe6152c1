"""CMRC 2018 extractive reading comprehension (ymcui/cmrc2018, SQuAD-style files).

The official train file is absent from the mirror, so ``train`` is ``cmrc2018_dev.json`` (3219 questions) and
``dev`` is ``cmrc2018_trial.json`` (1002 questions); there is no test split. The passage is the context, the
query the question and the span the first gold answer; ``answers`` keeps every distinct gold answer text.
A first answer whose ``answer_start`` does not point at its text (3 in dev, 5 in trial; in trial the offsets
count a character outside the BMP twice) is re-anchored at the occurrence of its text nearest to the given
offset; an answer whose text is nowhere in the context would be dropped (``answer not in context``). Two
trial questions are empty and are dropped as ``empty text``.
"""

from __future__ import annotations

from pathlib import Path

from modprompt.data.convert import cached, extractive_example, load_files, source_of, text_field, tidy
from modprompt.data.mrc import Role, TaskKind
from modprompt.data.readers import DataError, read_squad
from modprompt.data.task import Task, register

REPO = "ymcui/cmrc2018"
ROOT = "ymcui+cmrc2018/squad-style-data"
FILES = {"train": "cmrc2018_dev.json", "dev": "cmrc2018_trial.json"}


def _make(path: Path, rel: str):
    def convert(where: int, record: dict):
        context = text_field(record, "context", path, where, unit="question")
        question = tidy(text_field(record, "question", path, where, unit="question"))
        answers = record.get("answers")
        if (
            not isinstance(answers, list)
            or not answers
            or not all(isinstance(a, dict) and isinstance(a.get("text"), str) for a in answers)
        ):
            raise DataError(
                path, where, "field 'answers' should be a non-empty list of {text, answer_start}", unit="question"
            )
        start = answers[0].get("answer_start")
        if not isinstance(start, int):
            raise DataError(path, where, f"answer_start {start!r} is not an integer", unit="question")
        source = source_of(rel, record.get("id", where))
        return extractive_example("cmrc2018", question, context, [a["text"] for a in answers], start, source)

    return convert


def _loader(split: str):
    rel = f"{ROOT}/{FILES[split]}"
    return cached(
        lambda root, lenient: load_files(
            f"cmrc2018/{split}", [(root / rel, rel)], read_squad, _make, lenient, unit="question"
        )
    )


register(
    Task(
        "cmrc2018", TaskKind.EXTRACTIVE_QA, Role.UPSTREAM, "根据文章回答问题。", {s: _loader(s) for s in FILES}, source=REPO,
        licence="CC BY-SA 4.0", files=tuple(f"{ROOT}/{f}" for f in FILES.values()),
        description="抽取式阅读理解（CMRC 2018），train = 官方 dev，dev = 官方 trial",
    )
)  # fmt: skip

"""CCPM (THUNLP-AIPoet/CCPM): match a modern-Chinese translation with the classical verse it translates.

JSON lines ``{"translation", "choices" (4 verses), "answer" (index)}``; the passage is the translation and the
four verses are the options. Splits: train, dev (``valid.jsonl``); the public test file has no answers.
"""

from __future__ import annotations

from pathlib import Path

from modprompt.data.convert import cached, choice_index, load_files, options_field, source_of, text_field, tidy
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import read_jsonl
from modprompt.data.task import Task, register

REPO = "THUNLP-AIPoet/CCPM"
ROOT = "THUNLP-AIPoet+CCPM"
QUERY = "哪一句诗与这段译文的意思相符？"
FILES = {"train": "train.jsonl", "dev": "valid.jsonl"}


def _make(path: Path, rel: str):
    def convert(where: int, record: dict) -> MRCExample:
        translation = tidy(text_field(record, "translation", path, where))
        options = options_field(record, "choices", path, where)
        label = choice_index(options, record.get("answer"), path, where)
        return MRCExample(
            "ccpm", QUERY, translation, options, label, texts=(translation,), source=source_of(rel, where)
        )

    return convert


def _loader(split: str):
    rel = f"{ROOT}/{FILES[split]}"
    return cached(lambda root, lenient: load_files(f"ccpm/{split}", [(root / rel, rel)], read_jsonl, _make, lenient))


register(
    Task(
        "ccpm", TaskKind.MULTIPLE_CHOICE, Role.UPSTREAM, QUERY, {s: _loader(s) for s in FILES}, source=REPO,
        files=tuple(f"{ROOT}/{f}" for f in FILES.values()), description="古诗词匹配，4 选 1（CCPM）",
    )
)  # fmt: skip

"""Predictions of an adapted task on a user's file (``modprompt predict``): one JSON line per record.

Records are read with the task spec's reader and fields (:mod:`modprompt.data.spec`), but, unlike
training data, a record may leave out its label or answer, and no record is ever dropped or merged:
line i of the output answers record i of the input. A malformed record stops with an error naming the
file and line.

A built-in task has no spec; its records are JSON lines (or JSON, CSV, TSV with a header row) with
these fields:

* fixed label set (eprstmt, tnews, ...): ``text``, plus ``text_pair`` for sentence-pair tasks (NLI,
  paraphrase, similarity: bustm, ocnli); optional ``label``, one of the task's option words
  (``modprompt tasks --json`` lists them), e.g. ``{"text": "物流很快，质量很好", "label": "正面"}``;
* multiple choice (chid): ``text`` and ``options`` (a list), optional ``label`` (an option or its index);
* extractive QA: ``context`` and ``question``, optional ``answer``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modprompt.adapt.methods import AdaptMethod
from modprompt.data.builtin.convert import (
    LabelSet,
    choice_index,
    extractive_example,
    options_field,
    pair_passage,
    source_of,
    text_field,
    tidy,
)
from modprompt.data.mrc import MRCExample, TaskKind
from modprompt.data.readers import DataError, convert_records
from modprompt.data.spec import FORMATS, TaskSpec, read_spec, record_reader
from modprompt.data.task import Task, get_task
from modprompt.evaluate import Prediction, predict, score

logger = logging.getLogger(__name__)

PAIR_KINDS = (TaskKind.NLI, TaskKind.PARAPHRASE, TaskKind.SIMILARITY)


def builtin_record_spec(task: Task, path: str | Path) -> TaskSpec:
    """The record fields of a built-in task's prediction file (see the module docstring) as a spec."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(path, None, f"cannot tell the format from the suffix; use one of {sorted(FORMATS)}")
    common = {"name": task.name, "instruction": task.instruction, "files": {}, "kind": task.kind, "format": fmt}
    if task.label_words:
        fields = ("text", "text_pair") if task.kind in PAIR_KINDS else ("text",)
        words = {word: word for word in task.label_words}
        return TaskSpec(**common, text_fields=fields, label_field="label", label_words=words)
    if task.kind is TaskKind.MULTIPLE_CHOICE:
        return TaskSpec(**common, text_fields=("text",), options_field="options", answer_field="label")
    return TaskSpec(**common, context_field="context", question_field="question", answer_field="answer")


def record_spec(
    adapted: dict, input_path: str | Path, task_spec: str | Path | None = None, task: str | None = None
) -> TaskSpec:
    """How to read ``input_path`` for an adaptation whose saved config is ``adapted``.

    A user task is read with its spec: ``task_spec``, else the spec recorded at adaptation. A built-in
    task uses the record fields of the module docstring. ``task``, if given, must be the adapted task.
    """
    if task is not None and task != adapted["task"]:
        raise ValueError(f"this was adapted to task {adapted['task']!r}, not {task!r}")
    recorded = adapted.get("task_spec")
    if task_spec is None and recorded is not None:
        if not Path(recorded).is_file():
            raise FileNotFoundError(f"the task spec {recorded} recorded at adaptation is gone; pass --task-spec")
        task_spec = recorded
    if task_spec is not None:
        return read_spec(task_spec)
    return builtin_record_spec(get_task(adapted["task"]), input_path)


def _converter(spec: TaskSpec, path: Path, unit: str):
    """Record -> MRCExample for ``spec``, with the label or answer optional."""
    rel = str(path)
    labels = LabelSet.of(spec.label_words) if spec.label_words else None

    def convert(where: int, record: dict[str, Any]) -> MRCExample:
        def field(name: str) -> str:
            return text_field(record, name, path, where, unit)

        source = source_of(rel, where)
        if spec.kind is TaskKind.EXTRACTIVE_QA:
            context, question = field(spec.context_field), tidy(field(spec.question_field))
            answers = record.get(spec.answer_field)
            if answers is None:
                return MRCExample(spec.name, question, context, texts=(question, context), source=source)
            answers = [answers] if isinstance(answers, str) else answers
            if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                raise DataError(
                    path, where, f"field {spec.answer_field!r} should be a text or a list of texts", unit=unit
                )
            example = extractive_example(spec.name, question, context, answers, None, source)
            if not isinstance(example, MRCExample):
                raise DataError(path, where, f"answer {answers[0]!r} does not occur in the context", unit=unit)
            return example
        texts = tuple(tidy(field(k)) for k in spec.text_fields)
        passage = texts[0] if len(texts) == 1 else pair_passage(*texts)
        if spec.kind is TaskKind.MULTIPLE_CHOICE:
            options = options_field(record, spec.options_field, path, where, unit)
            answer = record.get(spec.answer_field)
            label = None if answer is None else choice_index(options, answer, path, where, unit)
            query = field(spec.question_field) if spec.question_field else spec.instruction
            return MRCExample(spec.name, query, passage, options, label, texts=texts, source=source)
        raw = record.get(spec.label_field)
        label = None if raw is None or raw == "" else labels.index(raw, path, where, unit)
        return MRCExample(spec.name, spec.instruction, passage, labels.words, label, texts=texts, source=source)

    return convert


def read_records(path: str | Path, spec: TaskSpec) -> list[MRCExample]:
    """Every record of ``path`` as an example of ``spec``'s task, in file order, labelled or not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    read, unit = record_reader(spec, path)
    return convert_records(path, read(path, lenient=False), _converter(spec, path, unit), unit=unit)


def _record(prediction: Prediction) -> dict:
    example = prediction.example
    line: dict[str, Any] = {"source": example.source, "prediction": prediction.text}
    if prediction.option is not None:
        line["option"] = prediction.option
        line["scores"] = dict(zip(example.options, prediction.scores))
    gold = example.answer_text
    line["label"] = gold
    line["correct"] = None if gold is None else prediction.text in (example.answers or (gold,))
    return line


def predict_file(
    method: AdaptMethod, input_path: str | Path, output_path: str | Path, spec: TaskSpec, batch_size: int = 16
) -> dict:
    """Predict every record of ``input_path``, write JSON lines to ``output_path``; returns a summary.

    The summary's ``metrics`` score the labelled records only (empty when none is labelled).
    """
    if spec.name != method.task:
        raise ValueError(f"the records are for task {spec.name!r}, but this was adapted to {method.task!r}")
    examples = read_records(input_path, spec)
    if not examples:
        raise ValueError(f"{input_path} holds no records")
    predictions = predict(method.forward, method.encoder(), examples, batch_size)
    output_path = Path(output_path)
    output_path.parent.mkdir(parents=True, exist_ok=True)
    with output_path.open("w", encoding="utf-8") as handle:
        for prediction in predictions:
            handle.write(json.dumps(_record(prediction), ensure_ascii=False) + "\n")
    labelled = [p for p in predictions if p.example.label is not None or p.example.answers]
    return {
        "task": method.task,
        "method": method.name,
        "input": str(input_path),
        "output": str(output_path),
        "records": len(predictions),
        "labelled": len(labelled),
        "metrics": score(labelled) if labelled else {},
    }

"""Predictions of an adapted task on a user's file (``modprompt predict``): one JSON line per record.

Records are read with the task spec's reader and fields (:mod:`modprompt.data.spec`), but, unlike
training data, a record may leave out its label or answer, and no record is ever dropped or merged:
line i of the output answers record i of the input (example i, for a spec whose ``expand`` makes several
of a record; ``source`` names both). A malformed record stops with an error naming the file and line,
unless ``lenient`` skips it (counted in the summary's ``skipped``).

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
from modprompt.data.mrc import MRCExample, TaskKind
from modprompt.data.readers import DataError, collect_skips, skip_summary
from modprompt.data.spec import FORMATS, TaskSpec, read_file, read_spec
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
    A missing input file is an error here, before anything loads a model.
    """
    input_file(input_path)
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


def input_file(path: str | Path) -> Path:
    """``path``, if a file to predict is there; else FileNotFoundError."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"input file not found: {path}")
    return path


def read_records(path: str | Path, spec: TaskSpec, lenient: bool = False) -> list[MRCExample]:
    """Every record of ``path`` as an example of ``spec``'s task, in file order, labelled or not.

    ``lenient`` (or the spec's ``lenient``) skips malformed records, counted in the log, instead of stopping.
    """
    return read_file(spec, input_file(path), labelled=False, lenient=lenient or spec.lenient)


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
    method: AdaptMethod,
    input_path: str | Path,
    output_path: str | Path,
    spec: TaskSpec,
    batch_size: int = 16,
    lenient: bool = False,
    progress: bool | None = None,
) -> dict:
    """Predict every record of ``input_path``, write JSON lines to ``output_path``; returns a summary.

    ``progress``: a bar over the batches (None: only when stderr is a terminal).

    The summary's ``metrics`` score the labelled records only (empty when none is labelled); ``skipped``
    counts the malformed records that ``lenient`` (or the spec's ``lenient``) left out, with the first problems.
    """
    if spec.name != method.task:
        raise ValueError(f"the records are for task {spec.name!r}, but this was adapted to {method.task!r}")
    with collect_skips() as skipped:
        examples = read_records(input_path, spec, lenient)
    if not examples:
        raise ValueError(f"{input_path} holds no records")
    predictions = predict(method.forward, method.encoder(), examples, batch_size, progress)
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
        "skipped": skip_summary(skipped),
    }

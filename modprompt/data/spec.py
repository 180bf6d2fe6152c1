"""User-defined tasks: a JSON spec file describes a labelled data set; :func:`load_spec` registers it as a Task.

A user task behaves like a built-in downstream task: role ``downstream``, few-shot splits sampled from its
``train`` split (``modprompt.data.fewshot``), the same cleaning rules (``modprompt.data.builtin.convert``).
Its files are read where the spec says (relative paths are relative to the spec file); ``data_root`` is not
used. Example, a classification task (see ``examples/own_task/``)::

    {
      "name": "kefu_intent",
      "instruction": "这位顾客想办理什么事？",
      "files": {"train": "train.jsonl", "test": "test.jsonl"},
      "text_fields": ["text"],
      "label_field": "label",
      "label_words": {"refund": "退款", "shipping": "物流", "address": "改地址", "invoice": "发票", "product": "商品咨询"}
    }

Fields:

* ``name`` (lowercase identifier), ``instruction`` (the query shown with every example), ``files``
  (``{split: path}``, ``train`` required), optional ``description``;
* ``format``: ``jsonl``, ``json`` (a JSON list of objects, or JSON lines as in FewCLUE's ``.json`` files),
  ``csv`` or ``tsv``; inferred from the file suffix when absent. CSV/TSV files need a header row, or
  ``columns`` naming their columns;
* one of three shapes, which also gives the default ``kind``:

  - labels: ``text_fields`` (one or two fields; two are shown as 句子一/句子二), ``label_field`` and
    ``label_words`` (raw label -> option word; the words must be distinct). ``kind`` may be
    ``classification`` (default), ``nli``, ``paraphrase``, ``similarity`` or ``relation``;
  - multiple choice: ``text_fields``, ``options_field`` (a list per record) and ``answer_field`` (an option
    index or the option text); optional ``question_field`` (a per-record query instead of the
    instruction). JSON formats only;
  - extractive QA: ``context_field``, ``question_field``, ``answer_field`` (a text or a list of texts, the
    first one gives the span) and optional ``answer_start_field``.

Every problem in a spec raises :class:`~modprompt.data.readers.DataError` naming the spec file and the field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from modprompt.data.builtin.convert import (
    Drop,
    LabelSet,
    cached,
    choice_index,
    extractive_example,
    load_files,
    option_converter,
    options_field,
    pair_passage,
    source_of,
    text_field,
    tidy,
)
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import DataError, read_delimited, read_json_records, read_jsonl
from modprompt.data.task import Task, all_tasks, register

FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv"}
LABEL_KINDS = (TaskKind.CLASSIFICATION, TaskKind.NLI, TaskKind.PARAPHRASE, TaskKind.SIMILARITY, TaskKind.RELATION)
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_FIELDS = {
    "name", "instruction", "files", "description", "format", "kind", "columns", "text_fields", "label_field",
    "label_words", "options_field", "answer_field", "question_field", "context_field", "answer_start_field",
}  # fmt: skip


@dataclass(frozen=True)
class TaskSpec:
    """A validated task spec; see the module docstring for the meaning of each field."""

    name: str
    instruction: str
    files: dict[str, Path]
    kind: TaskKind
    format: str | None = None
    columns: tuple[str, ...] | None = None
    text_fields: tuple[str, ...] = ()
    label_field: str | None = None
    label_words: dict[str, str] = field(default_factory=dict)
    options_field: str | None = None
    answer_field: str | None = None
    question_field: str | None = None
    context_field: str | None = None
    answer_start_field: str | None = None
    description: str = ""
    spec_path: Path | None = None


def load_spec(path: str | Path, *, replace: bool = False) -> Task:
    """Read a spec file, build its task and register it (``replace`` re-registers a user task of that name)."""
    task = build_task(read_spec(path))
    return register(task, replace=replace)


def read_spec(path: str | Path) -> TaskSpec:
    """Parse and validate a spec file; file paths are resolved against the spec's folder."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task spec not found: {path}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(raw, dict):
        raise DataError(path, None, "a task spec must be a JSON object")

    def bad(name: str, problem: str) -> DataError:
        return DataError(path, None, f"field {name!r}: {problem}")

    def string(name: str, required: bool = False) -> str | None:
        value = raw.get(name)
        if value is None:
            if required:
                raise bad(name, "is required")
            return None
        if not isinstance(value, str) or not value.strip():
            raise bad(name, f"should be a non-empty string, got {value!r}")
        return value

    def strings(name: str, sizes: tuple[int, ...]) -> tuple[str, ...]:
        value = raw.get(name)
        if not isinstance(value, list) or len(value) not in sizes or not all(isinstance(v, str) and v for v in value):
            raise bad(name, f"should be a list of {' or '.join(map(str, sizes))} field names, got {value!r}")
        return tuple(value)

    unknown = sorted(set(raw) - _FIELDS)
    if unknown:
        raise bad(unknown[0], f"unknown field; a spec has {sorted(_FIELDS)}")
    name = string("name", required=True)
    if not _NAME.fullmatch(name):
        raise bad("name", f"should be a lowercase identifier (letters, digits, _), got {name!r}")
    builtin = {t.name for t in all_tasks() if "spec" not in t.extras}
    if name in builtin:
        raise bad("name", f"{name!r} is a built-in task")
    instruction = string("instruction", required=True)

    files_raw = raw.get("files")
    if not isinstance(files_raw, dict) or not files_raw:
        raise bad("files", 'should be an object {split: path}, e.g. {"train": "train.jsonl", "test": "test.jsonl"}')
    if "train" not in files_raw:
        raise bad("files", f"needs a 'train' split (few-shot examples are drawn from it); it has {sorted(files_raw)}")
    files: dict[str, Path] = {}
    for split, file in files_raw.items():
        if not isinstance(file, str) or not file:
            raise bad("files", f"the path of split {split!r} should be a string, got {file!r}")
        resolved = (path.parent / file).resolve()
        if not resolved.is_file():
            raise bad("files", f"file of split {split!r} not found: {resolved}")
        files[split] = resolved

    fmt = string("format")
    if fmt is not None and fmt not in FORMATS.values():
        raise bad("format", f"should be one of {sorted(set(FORMATS.values()))}, got {fmt!r}")
    if fmt is None:
        inferred = {FORMATS.get(p.suffix.lower()) for p in files.values()}
        if None in inferred or len(inferred) != 1:
            raise bad(
                "format", f"cannot infer it from the file suffixes {sorted(p.name for p in files.values())}; give it"
            )
        fmt = inferred.pop()
    columns = strings("columns", tuple(range(1, 100))) if "columns" in raw else None
    if columns is not None and fmt not in ("csv", "tsv"):
        raise bad("columns", "only applies to csv and tsv files")

    shapes = [
        s
        for s, key in (("labels", "label_field"), ("choice", "options_field"), ("extractive", "context_field"))
        if key in raw
    ]
    if len(shapes) != 1:
        raise bad(
            "label_field",
            "give exactly one of 'label_field' (labels), 'options_field' (multiple choice) "
            "or 'context_field' (extractive QA)",
        )
    shape = shapes[0]
    kind_raw = string("kind")
    try:
        kind = TaskKind(kind_raw) if kind_raw else None
    except ValueError:
        raise bad("kind", f"should be one of {[k.value for k in TaskKind]}, got {kind_raw!r}") from None

    spec: dict[str, Any] = {"name": name, "instruction": instruction, "files": files, "format": fmt, "columns": columns}
    spec["description"] = string("description") or ""
    if shape == "labels":
        if kind is not None and kind not in LABEL_KINDS:
            raise bad(
                "kind", f"a task with 'label_field' is one of {[k.value for k in LABEL_KINDS]}, not {kind.value!r}"
            )
        words = raw.get("label_words")
        if (
            not isinstance(words, dict)
            or len(words) < 2
            or not all(isinstance(w, str) and w.strip() for w in words.values())
        ):
            raise bad("label_words", "should map every raw label to a non-empty option word, at least two labels")
        try:
            LabelSet.of(words)
        except ValueError as e:
            raise bad("label_words", str(e)) from None
        spec |= {"kind": kind or TaskKind.CLASSIFICATION, "text_fields": strings("text_fields", (1, 2))}
        spec |= {"label_field": string("label_field", required=True), "label_words": dict(words)}
    elif shape == "choice":
        if kind not in (None, TaskKind.MULTIPLE_CHOICE):
            raise bad("kind", f"a task with 'options_field' is multiple_choice, not {kind.value!r}")
        if fmt not in ("json", "jsonl"):
            raise bad("format", "multiple-choice records need a JSON format (the options are a list)")
        spec |= {"kind": TaskKind.MULTIPLE_CHOICE, "text_fields": strings("text_fields", (1, 2))}
        spec |= {
            "options_field": string("options_field", required=True),
            "answer_field": string("answer_field", required=True),
        }
        spec["question_field"] = string("question_field")
    else:
        if kind not in (None, TaskKind.EXTRACTIVE_QA):
            raise bad("kind", f"a task with 'context_field' is extractive_qa, not {kind.value!r}")
        spec |= {"kind": TaskKind.EXTRACTIVE_QA, "context_field": string("context_field", required=True)}
        spec |= {
            "question_field": string("question_field", required=True),
            "answer_field": string("answer_field", required=True),
        }
        spec["answer_start_field"] = string("answer_start_field")
    for key in ("label_words", "text_fields", "options_field", "question_field", "answer_start_field", "answer_field"):
        if key in raw and key not in spec:
            raise bad(key, f"does not apply to a {spec['kind'].value} task")
    return TaskSpec(**spec, spec_path=path)


def record_reader(spec: TaskSpec, path: Path) -> tuple[Callable[..., Any], str]:
    """The row reader for one file of the spec and the unit its positions are counted in."""
    if spec.format in ("csv", "tsv"):
        delimiter = "," if spec.format == "csv" else "\t"
        header = spec.columns is None

        def read(path: Path, *, lenient: bool):
            return read_delimited(path, delimiter=delimiter, header=header, fieldnames=spec.columns, lenient=lenient)

        return read, "line"
    if spec.format == "json":
        # ".json" task files are as often JSON lines (FewCLUE) as one JSON list.
        with path.open(encoding="utf-8-sig") as handle:
            if handle.read(4096).lstrip().startswith("["):
                return read_json_records, "record"
    return read_jsonl, "line"


def _make_convert(spec: TaskSpec, unit: str) -> Callable[[Path, str], Callable[[int, Any], MRCExample | Drop]]:
    if spec.kind is TaskKind.MULTIPLE_CHOICE:

        def choice(path: Path, rel: str):
            def convert(where: int, record: dict) -> MRCExample:
                texts = tuple(tidy(text_field(record, k, path, where, unit)) for k in spec.text_fields)
                options = options_field(record, spec.options_field, path, where, unit)
                if record.get(spec.answer_field) is None:
                    raise DataError(path, where, f"missing field {spec.answer_field!r}", unit=unit)
                label = choice_index(options, record[spec.answer_field], path, where, unit)
                query = (
                    text_field(record, spec.question_field, path, where, unit)
                    if spec.question_field
                    else spec.instruction
                )
                passage = texts[0] if len(texts) == 1 else pair_passage(*texts)
                return MRCExample(spec.name, query, passage, options, label, texts=texts, source=source_of(rel, where))

            return convert

        return choice
    if spec.kind is TaskKind.EXTRACTIVE_QA:

        def extractive(path: Path, rel: str):
            def convert(where: int, record: dict) -> MRCExample | Drop:
                context = text_field(record, spec.context_field, path, where, unit)
                question = tidy(text_field(record, spec.question_field, path, where, unit))
                answers = record.get(spec.answer_field)
                answers = [answers] if isinstance(answers, str) else answers
                if not isinstance(answers, list) or not answers or not all(isinstance(a, str) for a in answers):
                    raise DataError(
                        path, where, f"field {spec.answer_field!r} should be a text or a list of texts", unit=unit
                    )
                start = record.get(spec.answer_start_field) if spec.answer_start_field else None
                if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
                    raise DataError(path, where, f"field {spec.answer_start_field!r} should be an integer", unit=unit)
                example = extractive_example(spec.name, question, context, answers, start, source_of(rel, where))
                if example == Drop("answer not in context"):
                    raise DataError(path, where, f"answer {answers[0]!r} does not occur in the context", unit=unit)
                return example

            return convert

        return extractive
    labels = LabelSet.of(spec.label_words)
    return lambda path, rel: option_converter(
        spec.name, spec.instruction, labels, path, rel, spec.text_fields, spec.label_field, unit=unit
    )


def build_task(spec: TaskSpec) -> Task:
    """The :class:`Task` a spec describes (not yet registered)."""

    def loader(split: str):
        path = spec.files[split]
        read, unit = record_reader(spec, path)
        make = _make_convert(spec, unit)
        return cached(
            lambda root, lenient: load_files(
                f"{spec.name}/{split}", [(path, str(path))], read, make, lenient, unit=unit
            )
        )

    label_words = LabelSet.of(spec.label_words).words if spec.label_words else ()
    return Task(
        spec.name, spec.kind, Role.DOWNSTREAM, spec.instruction, {s: loader(s) for s in spec.files}, label_words,
        fewshot="sampled", source="", licence="user data", files=tuple(str(p) for p in spec.files.values()),
        description=spec.description, extras={"spec": str(spec.spec_path)},
    )  # fmt: skip

"""User-defined tasks: a JSON spec file describes a labelled data set; :func:`load_spec` registers it as a Task.

A user task behaves like a built-in downstream task: role ``downstream``, few-shot splits sampled from its
``train`` split (``modprompt.data.fewshot``), the same cleaning rules (``modprompt.data.convert``).
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

A passage followed by its questions, each with choices and an answer; each record is a JSON array
``[[turn, turn, ...], [{"question": ..., "choice": [...], "answer": ...}, ...], id]``
(see ``examples/dialogue_mc/``)::

    {
      "name": "duihua", "instruction": "根据对话选择正确答案。", "files": {"train": "train.json"},
      "expand": "[1]",
      "text_fields": ["join('\\n', record[0])"], "question_field": "item.question",
      "options_field": "item.choice", "answer_field": "item.answer"
    }

Fields:

* ``name`` (lowercase identifier), ``instruction`` (the query shown with every example), ``files``
  (``{split: path}``, ``train`` required), optional ``description``;
* ``format``: ``jsonl``, ``json`` (a JSON list of records, or JSON lines as in FewCLUE's ``.json`` files),
  ``csv`` or ``tsv``, ``squad`` (``data`` -> ``paragraphs`` -> ``qas`` -> ``answers``: one extractive
  example per question, the fields defaulting to :data:`SQUAD_FIELDS`), ``parquet``, or ``datasets`` (a
  folder written by 🤗 ``datasets``' ``save_to_disk``; a saved ``DatasetDict`` gives the member named by
  the split). Inferred from the file suffix (a folder: ``datasets``) when absent. CSV/TSV files need a
  header row, or ``columns`` naming their columns. Parquet and ``datasets`` need the ``formats`` extra;
* ``records`` (``json`` only): where the list of records sits in the document, e.g. ``"data"``;
* ``expand``: a path from a record to a list; each element becomes one example (one per question of a
  passage). Paths then see ``{"record": <the record>, "item": <the element>}``;
* ``lenient``: ``true`` skips malformed records (counted and logged) wherever the task is read;
* one of three shapes, which also gives the default ``kind``:

  - labels: ``text_fields`` (one or two fields; two are shown as 句子一/句子二), ``label_field`` and
    ``label_words`` (raw label -> option word; the words must be distinct). ``kind`` may be
    ``classification`` (default), ``nli``, ``paraphrase``, ``similarity`` or ``relation``;
  - multiple choice: ``text_fields``, ``options_field`` (a list per record) and ``answer_field`` (an option
    index or the option text); optional ``question_field`` (a per-record query instead of the
    instruction). Not for CSV/TSV;
  - extractive QA: ``context_field``, ``question_field``, ``answer_field`` (a text or a list of texts, the
    first one gives the span; an empty list is a question without a gold answer, dropped) and optional
    ``answer_start_field``.

Every ``*_field`` (and ``records``, ``expand``) is a JMESPath expression (:mod:`modprompt.data.fieldpath`):
a plain key (``text``), keys and positions into nested objects and arrays (``answers[0].text``, ``[1]``
for a record that is an array), or ``join('', sentences)`` for a passage given as a list of strings. In
CSV/TSV files fields are column names.

Every problem in a spec raises :class:`~modprompt.data.readers.DataError` naming the spec file and the
field; every problem in a record names the data file, the record (and the item inside it) and the path.
:func:`check_spec` reports what a spec yields before anything is trained (``modprompt tasks --check``).
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

from modprompt.data.convert import (
    Drop,
    LabelSet,
    cached,
    choice_index,
    extractive_example,
    load_files,
    options_field,
    pair_passage,
    source_of,
    tidy,
)
from modprompt.data.fieldpath import FieldPath, JMESPathError, compile_path, describe
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import (
    DataError,
    Skips,
    collect_skips,
    convert_records,
    json_records,
    read_delimited,
    read_json,
    read_jsonl,
    read_parquet,
    read_saved_dataset,
    read_squad,
    skip_summary,
)
from modprompt.data.task import Task, all_tasks, register

#: file suffix -> format, for specs (and prediction files) that do not name one
FORMATS = {".jsonl": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "tsv", ".parquet": "parquet"}
ALL_FORMATS = ("jsonl", "json", "csv", "tsv", "squad", "parquet", "datasets")
TABLE_FORMATS = ("csv", "tsv")  # flat rows of texts: fields are column names, not paths
#: the fields of ``"format": "squad"`` unless the spec gives them (one record per question, with ``context``)
SQUAD_FIELDS = {
    "context_field": "context",
    "question_field": "question",
    "answer_field": "answers[*].text",
    "answer_start_field": "answers[0].answer_start",
}
LABEL_KINDS = (TaskKind.CLASSIFICATION, TaskKind.NLI, TaskKind.PARAPHRASE, TaskKind.SIMILARITY, TaskKind.RELATION)
_PATHS = ("text_fields", "label_field", "options_field", "answer_field", "question_field", "context_field",
          "answer_start_field")  # fmt: skip
_NAME = re.compile(r"[a-z][a-z0-9_]*")
_FIELDS = {"name", "instruction", "files", "description", "format", "kind", "columns", "label_words", "records",
           "expand", "lenient", *_PATHS}  # fmt: skip


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
    records: str | None = None
    expand: str | None = None
    lenient: bool = False
    description: str = ""
    spec_path: Path | None = None

    def path(self, expression: str) -> FieldPath:
        """A field of this spec, compiled (a column name in CSV/TSV files, else a JMESPath expression)."""
        return compile_path(expression, literal=self.format in TABLE_FORMATS)


def load_spec(path: str | Path, *, replace: bool = False) -> Task:
    """Read a spec file, build its task and register it (``replace`` re-registers a user task of that name)."""
    task = build_task(read_spec(path))
    return register(task, replace=replace)


def read_spec(path: str | Path) -> TaskSpec:
    """Parse and validate a spec file; file paths are resolved against the spec's folder. Every field path
    is compiled here, so a bad one stops before any data is read."""
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

    def string(name: str, required: bool = False, default: str | None = None) -> str | None:
        value = raw.get(name)
        if value is None:
            if required and default is None:
                raise bad(name, "is required")
            return default
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
    builtin = {t.name for t in all_tasks() if t.builtin}
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
        if not resolved.exists():
            raise bad("files", f"file of split {split!r} not found: {resolved}")
        files[split] = resolved

    fmt = string("format")
    if fmt is not None and fmt not in ALL_FORMATS:
        raise bad("format", f"should be one of {list(ALL_FORMATS)}, got {fmt!r}")
    if fmt is None:
        inferred = {"datasets" if p.is_dir() else FORMATS.get(p.suffix.lower()) for p in files.values()}
        if None in inferred or len(inferred) != 1:
            raise bad(
                "format", f"cannot infer it from the file suffixes {sorted(p.name for p in files.values())}; give it"
            )
        fmt = inferred.pop()
    for split, file in files.items():
        if file.is_dir() != (fmt == "datasets"):
            wanted = "a folder written by save_to_disk" if fmt == "datasets" else "a file"
            found = "a folder" if file.is_dir() else "a file"
            raise bad("files", f"format {fmt!r} reads {wanted}, but split {split!r} is {found}: {file}")
    columns = strings("columns", tuple(range(1, 100))) if "columns" in raw else None
    if columns is not None and fmt not in TABLE_FORMATS:
        raise bad("columns", "only applies to csv and tsv files")
    if "records" in raw and fmt != "json":
        raise bad("records", "only applies to the json format (one JSON document holding the list of records)")
    if "expand" in raw and fmt in (*TABLE_FORMATS, "squad"):
        why = "already gives one example per question" if fmt == "squad" else "rows are flat"
        raise bad("expand", f"does not apply to the {fmt} format ({why})")
    lenient = raw.get("lenient", False)
    if not isinstance(lenient, bool):
        raise bad("lenient", f"should be true or false, got {lenient!r}")

    shapes = [
        s
        for s, key in (("labels", "label_field"), ("choice", "options_field"), ("extractive", "context_field"))
        if key in raw
    ]
    if fmt == "squad" and shapes in ([], ["extractive"]):
        shapes = ["extractive"]
    elif fmt == "squad":
        raise bad("format", "'squad' files hold extractive QA; leave out 'label_field' and 'options_field'")
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
    spec |= {"description": string("description") or "", "records": string("records"), "expand": string("expand")}
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
        if fmt in TABLE_FORMATS:
            raise bad("format", "multiple-choice records need a JSON format, Parquet or datasets (options are lists)")
        spec |= {"kind": TaskKind.MULTIPLE_CHOICE, "text_fields": strings("text_fields", (1, 2))}
        spec |= {
            "options_field": string("options_field", required=True),
            "answer_field": string("answer_field", required=True),
        }
        spec["question_field"] = string("question_field")
    else:
        if kind not in (None, TaskKind.EXTRACTIVE_QA):
            raise bad("kind", f"a task with 'context_field' is extractive_qa, not {kind.value!r}")
        defaults = SQUAD_FIELDS if fmt == "squad" else {}
        spec["kind"] = TaskKind.EXTRACTIVE_QA
        for key in ("context_field", "question_field", "answer_field", "answer_start_field"):
            spec[key] = string(key, required=key != "answer_start_field", default=defaults.get(key))
    for key in ("label_words", "text_fields", "options_field", "question_field", "answer_start_field", "answer_field"):
        if key in raw and key not in spec:
            raise bad(key, f"does not apply to a {spec['kind'].value} task")
    literal = fmt in TABLE_FORMATS
    for key in ("records", "expand", *_PATHS):
        value = spec.get(key)
        for expression in (value,) if isinstance(value, str) else value or ():
            try:
                compile_path(expression, literal=literal and key not in ("records", "expand"))
            except ValueError as e:
                raise bad(key, f"{expression!r}: {e}") from None
    return TaskSpec(**spec, lenient=lenient, spec_path=path)


# -- records -> rows -> examples -------------------------------------------------------------------


class Row(NamedTuple):
    """What a spec's paths are evaluated on: a record, or ``{"record": ..., "item": ...}`` with ``expand``."""

    view: Any
    item: int | None = None  # the element's position in the record's ``expand`` list


def _reader(spec: TaskSpec, path: Path, split: str | None) -> tuple[Callable[..., Iterator[tuple[int, Any]]], str]:
    """The reader of one file's records as the format gives them, and the unit their positions count."""
    fmt = spec.format
    if fmt in TABLE_FORMATS:
        delimiter, header = ("," if fmt == "csv" else "\t"), spec.columns is None
        return partial(read_delimited, delimiter=delimiter, header=header, fieldnames=spec.columns), "line"
    if fmt == "squad":
        return read_squad, "question"
    if fmt == "parquet":
        return read_parquet, "row"
    if fmt == "datasets":
        return partial(read_saved_dataset, split=split), "row"
    if fmt == "json" and spec.records is not None:
        return partial(_json_at_path, records=spec.path(spec.records)), "record"
    if fmt == "json" and path.is_file():
        # ".json" task files are as often JSON lines (FewCLUE) as one JSON list.
        with path.open(encoding="utf-8-sig") as handle:
            if handle.read(4096).lstrip().startswith("["):
                return lambda p, *, lenient: json_records(p, read_json(p), lenient=lenient, arrays=True), "record"
    return partial(read_jsonl, arrays=True), "line"


def _json_at_path(path: Path, *, records: FieldPath, lenient: bool) -> Iterator[tuple[int, Any]]:
    document = read_json(path)
    try:
        found = records.search(document)
    except JMESPathError as e:
        raise DataError(path, None, f"path {str(records)!r} ('records') cannot be evaluated: {e}") from None
    if found is None:
        problem = records.explain(document, "the document")
        raise DataError(path, None, f"path {str(records)!r} ('records') gives nothing: {problem}")
    return json_records(path, found, lenient=lenient, arrays=True, what=f"path {str(records)!r} ('records')")


def file_rows(
    spec: TaskSpec, path: Path, split: str | None = None
) -> tuple[Callable[..., Iterator[tuple[int, Row]]], str]:
    """``(read, unit)``: ``read(path, lenient=...)`` yields ``(where, Row)`` for every example-to-be of a file
    (each element of a record's ``expand`` list is one); ``unit`` names what ``where`` counts."""
    read, unit = _reader(spec, path, split)
    if spec.expand is None:
        return (lambda p, *, lenient: ((w, Row(r)) for w, r in read(p, lenient=lenient))), unit
    expand = spec.path(spec.expand)
    return (lambda p, *, lenient: _expanded(p, read(p, lenient=lenient), expand, unit, lenient)), unit


def _expanded(
    path: Path, records: Iterator[tuple[int, Any]], expand: FieldPath, unit: str, lenient: bool
) -> Iterator[tuple[int, Row]]:
    skips = Skips(str(path), lenient)
    for where, record in records:
        try:
            items = expand.search(record)
        except JMESPathError as e:
            skips.bad(DataError(path, where, f"path {str(expand)!r} ('expand') cannot be evaluated: {e}", unit=unit))
            continue
        if not isinstance(items, list):
            problem = expand.explain(record) if items is None else f"it gives {describe(items)}"
            problem = f"path {str(expand)!r} ('expand') should give a list: {problem}"
            skips.bad(DataError(path, where, problem, unit=unit))
            continue
        for index, item in enumerate(items):
            yield where, Row({"record": record, "item": item}, index)
    skips.report()


class _RowFields:
    """Reads one row's fields by path; its errors name the file, the record, the item and the path."""

    def __init__(self, spec: TaskSpec, path: Path, where: int, unit: str, row: Row) -> None:
        self.spec, self.path, self.where, self.unit, self.row = spec, path, where, unit, row

    def fail(self, problem: str) -> DataError:
        return DataError(self.path, self.where, problem, unit=self.unit, item=self.row.item)

    def get(self, expression: str, required: bool = True) -> Any:
        """The value at ``expression``; ``None`` only where it is not ``required``."""
        found = self.spec.path(expression)
        try:
            value = found.search(self.row.view)
        except JMESPathError as e:
            raise self.fail(f"path {expression!r} cannot be evaluated: {e}") from None
        if value is None and required:
            raise self.fail(f"path {expression!r} gives nothing: {found.explain(self.row.view)}")
        return value

    def text(self, expression: str) -> str:
        value = self.get(expression)
        if isinstance(value, str):
            return value
        hint = ""
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            hint = f"; to join a list of texts into one, write join('', {expression})"
        raise self.fail(f"path {expression!r} should give a text, got {describe(value)}{hint}")


def example_converter(
    spec: TaskSpec, path: Path, unit: str, *, labelled: bool = True
) -> Callable[[int, Row], MRCExample | Drop]:
    """Row -> :class:`MRCExample` (or a :class:`Drop` for cleaning) for one file of ``spec``.

    ``labelled=False`` (prediction files) makes the label or answer optional and never drops a row.
    """
    rel = str(path)
    labels = LabelSet.of(spec.label_words) if spec.label_words else None

    def convert(where: int, row: Row) -> MRCExample | Drop:
        fields = _RowFields(spec, path, where, unit, row)
        source = source_of(rel, where) if row.item is None else f"{source_of(rel, where)}/{row.item}"
        try:
            return _example(spec, labels, fields, source, labelled)
        except DataError as e:
            if row.item is None or e.item is not None:
                raise
            # The shared helpers (options, answers, labels) name the record; the item is added here.
            raise fields.fail(e.problem) from None

    return convert


def _example(
    spec: TaskSpec, labels: LabelSet | None, fields: _RowFields, source: str, labelled: bool
) -> MRCExample | Drop:
    """The example of one row (unlabelled where ``labelled`` is off and the row has no label or answer)."""
    get, text, fail = fields.get, fields.text, fields.fail
    if spec.kind is TaskKind.EXTRACTIVE_QA:
        context, question = text(spec.context_field), tidy(text(spec.question_field))
        unlabelled = MRCExample(spec.name, question, context, texts=(question, context), source=source)
        answers = get(spec.answer_field, required=labelled)
        if answers is None:
            return unlabelled
        answers = [answers] if isinstance(answers, str) else answers
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            raise fail(f"path {spec.answer_field!r} should give a text or a list of texts, got {describe(answers)}")
        if not answers:  # a question without a gold answer (SQuAD 2.0's unanswerable ones)
            return Drop("no gold label") if labelled else unlabelled
        start = get(spec.answer_start_field, required=False) if spec.answer_start_field else None
        if start is not None and (not isinstance(start, int) or isinstance(start, bool)):
            raise fail(f"path {spec.answer_start_field!r} should give an integer, got {describe(start)}")
        example = extractive_example(spec.name, question, context, answers, start, source)
        if example == Drop("answer not in context"):
            raise fail(
                f"answer {answers[0]!r} does not occur in the context (paths {spec.answer_field!r} and "
                f"{spec.context_field!r})"
            )
        return unlabelled if isinstance(example, Drop) and not labelled else example
    texts = tuple(tidy(text(k)) for k in spec.text_fields)
    passage = texts[0] if len(texts) == 1 else pair_passage(*texts)
    place = (fields.path, fields.where, fields.unit)
    if spec.kind is TaskKind.MULTIPLE_CHOICE:
        options = options_field({spec.options_field: get(spec.options_field)}, spec.options_field, *place)
        answer = get(spec.answer_field, required=labelled)
        label = None if answer is None else choice_index(options, answer, *place)
        query = text(spec.question_field) if spec.question_field else spec.instruction
        return MRCExample(spec.name, query, passage, options, label, texts=texts, source=source)
    raw = get(spec.label_field, required=labelled)
    label = None if raw is None or (raw == "" and not labelled) else labels.index(raw, *place)
    return MRCExample(spec.name, spec.instruction, passage, labels.words, label, texts=texts, source=source)


def read_file(
    spec: TaskSpec, path: str | Path, *, split: str | None = None, labelled: bool = True, lenient: bool = False
) -> list[MRCExample | Drop]:
    """Every example of one file of ``spec``'s layout, in file order, before cleaning.

    ``split`` picks the member of a saved ``DatasetDict``; ``labelled=False`` reads a prediction file
    (labels optional, nothing dropped). ``lenient`` skips malformed records (see
    :mod:`modprompt.data.readers`).
    """
    path = Path(path)
    read, unit = file_rows(spec, path, split)
    convert = example_converter(spec, path, unit, labelled=labelled)
    return convert_records(path, read(path, lenient=lenient), convert, lenient=lenient, unit=unit)


def load_split(
    spec: TaskSpec, split: str, *, lenient: bool = False, counts: Counter[str] | None = None
) -> list[MRCExample]:
    """One split of ``spec``, converted and cleaned; ``counts`` receives the cleaning's drops per reason."""
    path = spec.files[split]
    read, unit = file_rows(spec, path, split)
    return load_files(
        f"{spec.name}/{split}", [(path, str(path))], read, lambda p, rel: example_converter(spec, p, unit), lenient,
        unit=unit, counts=counts,
    )  # fmt: skip


def build_task(spec: TaskSpec) -> Task:
    """The :class:`Task` a spec describes (not yet registered). A spec with ``"lenient": true`` is read
    leniently whatever the caller asks."""

    def loader(split: str):
        return cached(lambda root, lenient: load_split(spec, split, lenient=lenient or spec.lenient))

    label_words = LabelSet.of(spec.label_words).words if spec.label_words else ()
    return Task(
        spec.name, spec.kind, Role.DOWNSTREAM, spec.instruction, {s: loader(s) for s in spec.files}, label_words,
        fewshot="sampled", source="", licence="user data", files=tuple(str(p) for p in spec.files.values()),
        description=spec.description, extras={"spec": str(spec.spec_path)},
    )  # fmt: skip


# -- modprompt tasks --check -----------------------------------------------------------------------


def check_spec(
    path: str | Path,
    load_tokenizer: Callable[[], Any],
    *,
    max_length: int | None = None,
    num_prompt_tokens: int | None = None,
    lenient: bool = False,
    shown: int = 3,
) -> dict[str, Any]:
    """What a spec yields, split by split, before any run (``modprompt tasks --check``).

    The spec and every split are read first, so a bad spec or record stops before ``load_tokenizer()`` is
    called (strict mode raises the record's :class:`DataError`; ``lenient`` skips and reports). Per split:
    examples before (``examples``) and after cleaning (``kept``), the cleaning's ``dropped`` per reason, the
    ``skipped`` malformed records, the ``labels`` distribution (label words, or for multiple choice the
    answer's position), ``shown`` examples in the MRC form, and ``tokens``: the median, 95th percentile and
    maximum of whole-example lengths under the tokenizer, and how many passages (and extractive answers)
    ``max_length`` cuts. ``max_length`` and ``num_prompt_tokens`` default to ``modprompt adapt``'s, and
    ``max_length`` is raised as ``adapt`` raises it when queries and options leave too little passage.
    """
    spec = read_spec(path)
    lenient = lenient or spec.lenient
    parts: dict[str, tuple[list[MRCExample], Counter[str], list[DataError]]] = {}
    for split in spec.files:
        counts: Counter[str] = Counter()
        with collect_skips() as skipped:
            examples = load_split(spec, split, lenient=lenient, counts=counts)
        parts[split] = (examples, counts, skipped)

    from modprompt.adapt.config import AdaptConfig
    from modprompt.adapt.methods import DEFAULT_NUM_TOKENS
    from modprompt.data.encoding import EncodingConfig, MRCEncoder

    defaults = AdaptConfig(method="mp2")
    max_length = max_length or defaults.max_length
    num_prompt_tokens = DEFAULT_NUM_TOKENS if num_prompt_tokens is None else num_prompt_tokens
    tokenizer = load_tokenizer()
    every = [e for examples, _, _ in parts.values() for e in examples]
    whole = MRCEncoder(tokenizer, EncodingConfig(1 << 30, num_prompt_tokens))
    fixed = whole.fixed_length(every)
    max_length = max(max_length, fixed + defaults.min_passage_tokens) if every else max_length
    cutting = MRCEncoder(tokenizer, EncodingConfig(max_length, num_prompt_tokens))
    report: dict[str, Any] = {"spec": str(spec.spec_path), "task": spec.name, "kind": spec.kind.value}
    report |= {"format": spec.format, "lenient": lenient, "max_length": max_length, "splits": {}}
    for split, (examples, counts, skipped) in parts.items():
        report["splits"][split] = {
            "examples": len(examples) + sum(counts.values()),
            "kept": len(examples),
            "dropped": dict(sorted(counts.items())),
            "skipped": skip_summary(skipped),
            "labels": _label_counts(spec, examples),
            "shown": [_shown(e) for e in examples[:shown]],
            "tokens": _token_report(whole, cutting, examples, spec.kind is TaskKind.EXTRACTIVE_QA),
        }
    return report


def _label_counts(spec: TaskSpec, examples: list[MRCExample]) -> dict[str, int] | None:
    if spec.kind is TaskKind.EXTRACTIVE_QA:
        return None
    if spec.label_words:
        counts = Counter(e.label for e in examples)
        return {word: counts[i] for i, word in enumerate(LabelSet.of(spec.label_words).words)}
    counts = Counter(e.label for e in examples)
    return {f"option {i + 1}": counts[i] for i in sorted(counts)}


def _shown(example: MRCExample) -> dict[str, Any]:
    return {"source": example.source, "query": example.query, "passage": example.passage,
            "options": list(example.options), "answer": example.answer_text}  # fmt: skip


def _token_report(whole, cutting, examples: list[MRCExample], extractive: bool) -> dict[str, Any] | None:
    """Lengths of the uncut examples, what encoding at ``cutting``'s max_length cuts, and for extractive QA the
    answers that no window holds either (adapt reads long passages in windows)."""
    if not examples:
        return None
    import numpy as np

    lengths = np.array([len(e.input_ids) for e in whole.encode_all(examples, report=False)])
    cut = cutting.encode_all(examples, report=False)
    tokens = {"median": float(np.median(lengths)), "p95": round(float(np.percentile(lengths, 95)), 1),
              "max": int(lengths.max()), "passages_cut": sum(e.truncated for e in cut)}  # fmt: skip
    if extractive:
        tokens["answers_cut"] = sum(e.answer_lost for e in cut)
        tokens["answers_inexact"] = sum(e.answer_span is not None and not e.answer_exact for e in cut)
        windowed = type(cutting)(cutting.tokenizer, dataclasses.replace(cutting.config, windows=True))
        tokens["answers_in_no_window"] = sum(e.answer_lost for e in windowed.encode_all(examples, report=False))
    return tokens

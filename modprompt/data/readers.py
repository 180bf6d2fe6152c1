"""Readers for the raw task files: JSON lines, whole JSON, SQuAD-style QA, CSV/TSV, blank-line separated
records, zip members, Parquet and folders written by 🤗 ``datasets``' ``save_to_disk``.

Every reader yields ``(where, record)`` pairs, ``where`` being the 1-based line number of the record (the
record's first line for multi-line records) or, for whole-JSON lists, SQuAD questions, Parquet and
``datasets`` rows, the 0-based record index. Parquet and ``datasets``
need the ``formats`` extra (``pip install 'modprompt[formats]'``); they are imported only when such a file
is read. Anything wrong with a record raises :class:`DataError`, which names the file, the line
(or record) and what is wrong; converters raise it too, e.g. for an unknown label.

Lenient mode (``lenient=True``): a record that cannot be parsed (a broken JSON line, a row with the wrong
number of fields, ...) is skipped instead of raising; the skipped records are counted and, once the file
has been read, the count is logged with ``logging.warning`` together with the file name and the first
problems. :func:`convert_records` applies the same rule to records that parse but cannot be converted (an
unknown label, a missing field). Strict mode (the default) stops at the first bad record, so nothing is
lost silently. A missing file is always an error (:class:`FileNotFoundError` naming the path).
:func:`collect_skips` hands the skipped records' errors to a caller that reports them (``modprompt tasks
--check``, the ``skipped`` entry of the ``adapt``/``predict``/``bbt`` results).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


class DataError(ValueError):
    """A malformed record or file; the message names the file, the line or record, and the problem.

    ``item`` is the position of an example inside its record, for records that hold several (a passage
    with its questions: ``modprompt.data.spec``'s ``expand``).
    """

    def __init__(
        self, path: str | Path, where: int | None, message: str, *, unit: str = "line", item: int | None = None
    ) -> None:
        self.path = str(path)
        self.where = where
        self.item = item
        self.problem = message
        place = self.path if where is None else f"{self.path}, {unit} {where}"
        if item is not None:
            place += f", item {item}"
        super().__init__(f"{place}: {message}")


#: how many problems a lenient-mode warning quotes (the count covers all of them)
QUOTED_PROBLEMS = 3

_collected: ContextVar[list[DataError] | None] = ContextVar("modprompt_skipped_records", default=None)


@contextmanager
def collect_skips() -> Iterator[list[DataError]]:
    """Within the block, every record a lenient reader or converter skips is appended to the yielded list.

    Loaders memoise what they read (``modprompt.data.convert.cached``): a split read before the
    block is not read again and adds nothing.
    """
    skipped: list[DataError] = []
    token = _collected.set(skipped)
    try:
        yield skipped
    finally:
        _collected.reset(token)


def skip_summary(skipped: Sequence[DataError], quoted: int = 5) -> dict[str, Any]:
    """``{"records": n, "first": [...]}``: how many records were skipped and the first problems, as text."""
    return {"records": len(skipped), "first": [str(e) for e in skipped[:quoted]]}


class Skips:
    """Counts the records skipped in lenient mode for one file and logs the count once (strict: raises)."""

    def __init__(self, path: str, lenient: bool) -> None:
        self.path = path
        self.lenient = lenient
        self.count = 0
        self.quoted: list[DataError] = []

    def bad(self, error: DataError) -> None:
        """Raise ``error`` in strict mode; count it (and hand it to :func:`collect_skips`) in lenient mode."""
        if not self.lenient:
            raise error
        self.count += 1
        if len(self.quoted) < QUOTED_PROBLEMS:
            self.quoted.append(error)
        collected = _collected.get()
        if collected is not None:
            collected.append(error)

    def report(self, what: str = "malformed") -> None:
        if self.count:
            more = f" (and {self.count - len(self.quoted)} more)" if self.count > len(self.quoted) else ""
            logger.warning(
                "%s: lenient mode skipped %d %s record(s): %s%s",
                self.path, self.count, what, "; ".join(map(str, self.quoted)), more,
            )  # fmt: skip


def display_name(path: str | Path, member: str | None = None) -> str:
    """How a file (or a member inside a zip) is named in errors and logs."""
    return f"{path}[{member}]" if member else str(path)


def read_text(path: str | Path, member: str | None = None) -> str:
    """The whole text of a UTF-8 file (a leading BOM is dropped), or of ``member`` inside the zip ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    if member is None:
        data = path.read_bytes()
    else:
        with zipfile.ZipFile(path) as archive:
            try:
                data = archive.read(member)
            except KeyError:
                raise DataError(path, None, f"zip has no member {member!r}; it has {archive.namelist()}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(display_name(path, member), line, f"not UTF-8 text ({e.reason})") from None


def _lines(text: str) -> Iterator[tuple[int, str]]:
    # str.splitlines would also split on U+2028, U+0085 and friends, which occur inside real texts.
    for number, line in enumerate(text.split("\n"), start=1):
        yield number, line.rstrip("\r")


def _record_types(arrays: bool) -> tuple[tuple[type, ...], str]:
    return ((dict, list), "a JSON object or array") if arrays else ((dict,), "a JSON object")


def read_jsonl(path: str | Path, *, lenient: bool = False, arrays: bool = False) -> Iterator[tuple[int, Any]]:
    """One JSON object per line (``arrays``: or a JSON array); blank lines are ignored."""
    name = str(path)
    skips = Skips(name, lenient)
    types, expected = _record_types(arrays)
    for number, line in _lines(read_text(path)):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            skips.bad(DataError(name, number, f"invalid JSON ({e.msg} at column {e.colno})"))
            continue
        if not isinstance(record, types):
            skips.bad(DataError(name, number, f"expected {expected}, got {type(record).__name__}"))
            continue
        yield number, record
    skips.report()


def read_json(path: str | Path) -> Any:
    """A whole JSON document."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise DataError(path, e.lineno, f"invalid JSON ({e.msg} at column {e.colno})") from None


def read_json_records(path: str | Path, *, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    """A whole-JSON file holding a list of objects; ``where`` is the 0-based index in that list."""
    return json_records(path, read_json(path), lenient=lenient)


def json_records(
    path: str | Path, records: Any, *, lenient: bool = False, arrays: bool = False, what: str = "the file"
) -> Iterator[tuple[int, Any]]:
    """The records of a JSON list ``records`` read from ``path`` (``what`` says where the list was found).

    Every record must be an object (``arrays``: or an array); ``where`` is the 0-based index in the list.
    """
    if not isinstance(records, list):
        found = "nothing" if records is None else f"a {type(records).__name__}"
        raise DataError(path, None, f"expected a JSON list of records in {what}, found {found}")
    return _checked_records(str(path), records, lenient, arrays)


def _checked_records(name: str, records: list, lenient: bool, arrays: bool) -> Iterator[tuple[int, Any]]:
    skips = Skips(name, lenient)
    types, expected = _record_types(arrays)
    for index, record in enumerate(records):
        if not isinstance(record, types):
            skips.bad(DataError(name, index, f"expected {expected}, got {type(record).__name__}", unit="record"))
            continue
        yield index, record
    skips.report()


def read_squad(path: str | Path, *, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    """A SQuAD-style QA file (``data`` -> ``paragraphs`` -> ``qas``) flattened into one record per question.

    A record is the question object with its paragraph's ``context`` added; ``where`` counts questions
    from 0 over the file. What a question must hold is the converter's business (it honours lenient
    mode); only the nesting is checked here.
    """
    del lenient  # a malformed question is reported by the converter
    document = read_json(path)
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise DataError(path, None, "expected a SQuAD-style object with a 'data' list")
    index = 0
    for a, article in enumerate(document["data"]):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise DataError(path, None, f"data[{a}] should be an object with a 'paragraphs' list")
        for p, paragraph in enumerate(paragraphs):
            questions = paragraph.get("qas") if isinstance(paragraph, dict) else None
            if not isinstance(questions, list):
                raise DataError(path, None, f"data[{a}].paragraphs[{p}] should be an object with a 'qas' list")
            for qa in questions:
                yield index, {**qa, "context": paragraph.get("context")} if isinstance(qa, dict) else qa
                index += 1


def read_parquet(path: str | Path, *, lenient: bool = False) -> Iterator[tuple[int, dict]]:
    """The rows of a Parquet file as dicts (nested columns as dicts and lists); ``where`` is the 0-based row."""
    del lenient  # every row of a readable Parquet file is a well-formed record
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path}")
    pq = _optional("pyarrow.parquet", "Parquet files")
    try:
        table = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError variants
        raise DataError(path, None, f"not a readable Parquet file ({e})") from None
    index = 0
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            yield index, row
            index += 1


def read_saved_dataset(
    path: str | Path, *, split: str | None = None, lenient: bool = False
) -> Iterator[tuple[int, dict]]:
    """The rows of a folder written by ``datasets``' ``save_to_disk``; ``where`` is the 0-based row.

    A folder holding a ``DatasetDict`` (``dataset_dict.json``) gives its ``split`` member.
    """
    del lenient  # as for Parquet: the rows are typed, so each one is a well-formed record
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {path}")
    datasets = _optional("datasets", "folders written by datasets' save_to_disk")
    try:
        dataset = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(path, None, f"not a folder written by save_to_disk ({e})") from None
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise DataError(path, None, f"the saved DatasetDict has no split {split!r}; it has {sorted(dataset)}")
        dataset = dataset[split]
    for index, row in enumerate(dataset):
        yield index, row


def _optional(module: str, what: str):
    """Import an optional dependency, or say which extra brings it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(f"reading {what} needs {module.split('.')[0]}: pip install 'modprompt[formats]'") from None


def read_delimited(
    path: str | Path,
    *,
    delimiter: str = "\t",
    header: bool = False,
    fieldnames: Sequence[str] | None = None,
    quoted: bool | None = None,
    member: str | None = None,
    lenient: bool = False,
) -> Iterator[tuple[int, dict[str, str] | list[str]]]:
    """CSV or TSV rows: dicts keyed by the header row (``header``) or by ``fieldnames``, else lists of fields.

    ``fieldnames`` names the columns of a file without a header (with ``header`` too, it overrides the
    header's names). With column names every row must have exactly that many fields. ``quoted`` turns on
    CSV double-quote handling (default: on for commas, off for tabs, because TSV task files contain
    unbalanced quote characters inside their texts). Blank lines are ignored.
    """
    name = display_name(path, member)
    text = read_text(path, member)
    skips = Skips(name, lenient)
    if quoted is None:
        quoted = delimiter == ","
    rows = _csv_rows(text, delimiter, name) if quoted else _split_lines(text, delimiter)
    names = list(fieldnames) if fieldnames is not None else None
    header_seen = not header
    for number, fields in rows:
        if not header_seen:
            header_seen = True
            names = names or [f.strip() for f in fields]
            continue
        if names is None:
            yield number, fields
        elif len(fields) != len(names):
            skips.bad(
                DataError(name, number, f"expected {len(names)} fields separated by {delimiter!r}, got {len(fields)}")
            )
        else:
            yield number, dict(zip(names, fields))  # noqa: B905 (the lengths were just compared)
    if not header_seen:
        raise DataError(name, None, "empty file: no header row")
    skips.report()


def _split_lines(text: str, delimiter: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank lines split at ``delimiter``, with their line numbers."""
    for number, line in _lines(text):
        if line and not line.isspace():
            yield number, line.split(delimiter)


def _csv_rows(text: str, delimiter: str, name: str) -> Iterator[tuple[int, list[str]]]:
    """Non-blank CSV records (quoted fields may span lines), with the number of their first line."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    start = 1
    try:
        for fields in reader:
            if "".join(fields).strip():
                yield start, fields
            start = reader.line_num + 1
    except csv.Error as e:
        raise DataError(name, start, f"unreadable CSV ({e})") from None


def read_blocks(path: str | Path, *, lenient: bool = False) -> Iterator[tuple[int, list[str]]]:
    """Records separated by blank lines; yields the first line number and the record's lines."""
    del lenient  # any text parses as blocks; what a block must hold is the converter's business
    block: list[str] = []
    start = 0
    for number, line in _lines(read_text(path)):
        if line.strip():
            if not block:
                start = number
            block.append(line)
        elif block:
            yield start, block
            block = []
    if block:
        yield start, block


def convert_records(
    path: str | Path,
    rows: Iterable[tuple[int, Any]],
    convert: Callable[[int, Any], T],
    *,
    lenient: bool = False,
    unit: str = "line",
) -> list[T]:
    """Apply ``convert(where, record)`` to every row.

    A :class:`DataError` from ``convert`` propagates in strict mode and is counted and skipped in lenient
    mode. A ``KeyError``/``TypeError``/``ValueError`` raised by ``convert`` (a record of the wrong shape) is
    turned into a :class:`DataError` naming the file and line first.
    """
    name = str(path)
    skips = Skips(name, lenient)
    out: list[T] = []
    for where, record in rows:
        try:
            out.append(convert(where, record))
        except DataError as e:
            skips.bad(e)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as e:
            problem = f"missing field {e}" if isinstance(e, KeyError) else f"malformed record ({e})"
            skips.bad(DataError(name, where, problem, unit=unit))
    skips.report("unconvertible")
    return out

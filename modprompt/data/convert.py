"""Conversion steps shared by every built-in task (``modprompt.data.builtin``) and by user tasks (``modprompt.data.spec``).

Raw record -> :class:`MRCExample` -> cleaning. Cleaning is not error handling: it removes records that are
well-formed but unusable or redundant, counts them per reason and logs the counts (``logging.info``):

* ``empty text``: an input text (any of ``texts``) is empty or only whitespace;
* ``no gold label``: the record has no gold label (OCNLI's ``-``, annotators without a majority);
* ``answer not in context``: an extractive answer whose text does not occur in its context;
* ``exact duplicate``: the same input (query, passage and options, whitespace removed) with the same answer
  as an earlier record of the same split; the first is kept;
* ``conflicting labels``: an input that occurs with different answers in the same split; every copy is
  dropped, since no answer can be trusted. Relation extraction is multi-label by nature (FinRE pairs
  ``合作`` with ``签约``, ``合并`` with ``重组``): there only the copies answering the null relation are dropped
  (``null relation beside a real one``) and each distinct real relation is kept as its own example.

Cleaning works within one split; overlap between splits of one task is left alone except where a loader
says otherwise (THUCNews, few-shot sampling).

Data sets without an official split are split by :func:`hashed_split`: a record goes to ``test`` or ``dev``
(5% each) or ``train`` (90%) by the MD5 hash of its whitespace-free texts. The split is deterministic,
independent of file order, and puts copies of one text in the same split.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

from modprompt.data.mrc import MRCExample
from modprompt.data.readers import DataError, convert_records
from modprompt.data.task import SplitLoader

logger = logging.getLogger(__name__)

PAIR_TEMPLATE = "句子一：{}\n句子二：{}"
BLANK = "____"  # stands for the gap in cloze passages (CHID's #idiom#)
_ZERO_WIDTH = "\ufeff\u200b"  # BOMs and zero-width spaces sit inside some texts; str.split/strip keep them


def normalise(text: str) -> str:
    """Text without whitespace or zero-width characters: the form compared for duplicates and leakage."""
    if "\ufeff" in text or "\u200b" in text:
        text = text.replace("\ufeff", "").replace("\u200b", "")
    return "".join(text.split())


def tidy(text: str) -> str:
    """Text without leading and trailing whitespace and zero-width characters (the form put in examples)."""
    return text.strip().strip(_ZERO_WIDTH).strip()


def pair_passage(first: str, second: str) -> str:
    return PAIR_TEMPLATE.format(first, second)


class Drop(NamedTuple):
    """Returned by a converter instead of an example for a record that cleaning removes (with the reason)."""

    reason: str


@dataclass(frozen=True)
class LabelSet:
    """A fixed label set: the option words in option order and the raw file labels that map onto them."""

    words: tuple[str, ...]
    index_of: Mapping[str, int]

    @classmethod
    def of(cls, raw_to_word: Mapping[Any, str]) -> LabelSet:
        """Build from ``{raw label: word}``; the option order is the mapping's order; words must be distinct."""
        words = tuple(dict.fromkeys(raw_to_word.values()))
        if len(words) != len(raw_to_word):
            repeated = [w for w, n in Counter(raw_to_word.values()).items() if n > 1]
            raise ValueError(f"label words must be distinct; repeated: {repeated}")
        if any(not w.strip() for w in words):
            raise ValueError("label words must not be empty")
        return cls(words, {str(raw): words.index(word) for raw, word in raw_to_word.items()})

    def index(self, raw: Any, path: str | Path, where: int, unit: str = "line") -> int:
        key = str(raw).strip() if raw is not None else None
        if key not in self.index_of:
            raise DataError(path, where, f"unknown label {raw!r}; expected one of {sorted(self.index_of)}", unit=unit)
        return self.index_of[key]


#: label sets and queries shared by tasks of several sources
POLARITY = LabelSet.of({"0": "负面", "1": "正面"})
SAME_MEANING = LabelSet.of({"0": "不同", "1": "相同"})
YES_NO = LabelSet.of({"0": "否", "1": "是"})
NLI = LabelSet.of({"entailment": "蕴含", "neutral": "中立", "contradiction": "矛盾"})
NLI_QUERY = "句子一和句子二是什么关系？"
PARAPHRASE_QUERY = "这两句话的意思相同吗？"


def text_field(record: Mapping[str, Any], name: str, path: str | Path, where: int, unit: str = "line") -> str:
    """A text field of a record; a missing or non-text field is a :class:`DataError`."""
    value = record.get(name)
    if type(value) is str:
        return value
    if value is None:
        raise DataError(path, where, f"missing field {name!r}", unit=unit)
    if not isinstance(value, str):
        raise DataError(path, where, f"field {name!r} should be text, got {type(value).__name__}", unit=unit)
    return value


def hashed_split(texts: Iterable[str]) -> str:
    """``"test"``, ``"dev"`` or ``"train"`` (5/5/90%) by the MD5 hash of the whitespace-free texts."""
    digest = hashlib.md5("\t".join(normalise(t) for t in texts).encode("utf-8")).digest()
    bucket = int.from_bytes(digest[:4], "big") % 100
    return "test" if bucket < 5 else "dev" if bucket < 10 else "train"


_normalise_query = lru_cache(maxsize=65536)(normalise)  # most queries are a task's fixed instruction


def clean(
    examples: Iterable[MRCExample | Drop],
    name: str,
    *,
    null_option: str | None = None,
    counts: Counter[str] | None = None,
) -> list[MRCExample]:
    """Apply the cleaning rules of this module's docstring to one split, logging what was removed.

    ``examples`` may contain :class:`Drop` markers from the converter; they are counted with the rest.
    ``null_option`` marks a multi-label relation task and names its null relation. ``counts``, if given,
    is updated with the number of examples removed per reason (for reports such as ``tasks --check``).
    """
    dropped: Counter[str] = Counter()
    # An input is (query, passage, options) without whitespace. Options are compared as given, through a small
    # token per distinct tuple: label-set tasks share one tuple object, so this avoids re-hashing it per record.
    option_tokens: dict[tuple, int] = {}
    token_of_id: dict[int, tuple[tuple, int]] = {}  # keeps the tuple, so that its id cannot be reused
    first_answer: dict[tuple, Any] = {}
    conflicted: set[tuple] = set()
    usable: list[tuple[tuple, Any, MRCExample]] = []
    for example in examples:
        if isinstance(example, Drop):
            dropped[example.reason] += 1
            continue
        if not example.texts or not all(map(str.strip, example.texts)):
            dropped["empty text"] += 1
            continue
        options = example.options
        known = token_of_id.get(id(options))
        if known is not None and known[0] is options:
            token = known[1]
        else:
            token = option_tokens.setdefault(options, len(option_tokens))
            token_of_id[id(options)] = (options, token)
        key = (_normalise_query(example.query), normalise(example.passage), token)
        answer = example.label if example.span is None else example.span
        if first_answer.setdefault(key, answer) != answer:
            conflicted.add(key)
        usable.append((key, answer, example))
    kept: list[MRCExample] = []
    seen: set[tuple] = set()
    for key, answer, example in usable:
        if (key, answer) in seen:
            dropped["exact duplicate"] += 1
            continue
        seen.add((key, answer))
        if key in conflicted:
            if null_option is None:
                dropped["conflicting labels"] += 1
                continue
            if example.answer_text == null_option:
                dropped["null relation beside a real one"] += 1
                continue
        kept.append(example)
    if counts is not None:
        counts.update(dropped)
    if dropped:
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(dropped.items()))
        logger.info("%s: kept %d of %d records (%s)", name, len(kept), len(kept) + sum(dropped.values()), reasons)
    return kept


def load_files(
    name: str,
    files: Iterable[tuple[Path, str]],
    read: Callable[..., Iterable[tuple[int, Any]]],
    make_convert: Callable[[Path, str], Callable[[int, Any], MRCExample | Drop]],
    lenient: bool,
    *,
    unit: str = "line",
    null_option: str | None = None,
    counts: Counter[str] | None = None,
) -> list[MRCExample]:
    """Read, convert and clean the files ``(path, path relative to the data root)`` that make up one split.

    ``read(path, lenient=...)`` yields the rows of a file and ``make_convert(path, rel)`` gives the row
    converter for it (see :func:`modprompt.data.readers.convert_records`). The files are cleaned together,
    so copies shared between them count as duplicates. ``counts`` as for :func:`clean`.
    """
    converted: list[MRCExample | Drop] = []
    for path, rel in files:
        converted += convert_records(
            path, read(path, lenient=lenient), make_convert(path, rel), lenient=lenient, unit=unit
        )
    return clean(converted, name, null_option=null_option, counts=counts)


def cached(loader: Callable[[Path, bool], Sequence[MRCExample]]) -> Callable[[Path, bool], list[MRCExample]]:
    """Memoise a split loader per ``(data_root, lenient)``; callers get a fresh list each time."""
    memo = lru_cache(maxsize=None)(lambda root, lenient: tuple(loader(root, lenient)))

    def load(data_root: Path, lenient: bool = False) -> list[MRCExample]:
        return list(memo(Path(data_root).resolve(), bool(lenient)))

    return load


def hashed_splits(name: str, convert_all: Callable[[Path, bool], list[MRCExample | Drop]]) -> dict[str, SplitLoader]:
    """``train``/``dev``/``test`` loaders for a data set without an official split (see :func:`hashed_split`).

    ``convert_all(data_root, lenient)`` converts the whole data set once; records it drops before there is
    a text to hash are counted under ``train``.
    """

    @lru_cache(maxsize=None)
    def partition(root: Path, lenient: bool) -> dict[str, list[MRCExample]]:
        parts: dict[str, list[MRCExample | Drop]] = {"train": [], "dev": [], "test": []}
        for item in convert_all(root, lenient):
            parts["train" if isinstance(item, Drop) else hashed_split(item.texts)].append(item)
        return {split: clean(items, f"{name}/{split}") for split, items in parts.items()}

    def loader(split: str) -> SplitLoader:
        return cached(lambda root, lenient: partition(root, lenient)[split])

    return {split: loader(split) for split in ("train", "dev", "test")}


def source_of(rel: str, where: int) -> str:
    return f"{rel}:{where}"


def option_converter(
    task: str,
    query: str,
    labels: LabelSet,
    path: Path,
    rel: str,
    text_keys: Sequence[str],
    label_key: str,
    *,
    unit: str = "line",
    no_gold: Iterable[str] = (),
) -> Callable[[int, Mapping[str, Any]], MRCExample | Drop]:
    """Converter for a fixed-label-set task: one text (the passage) or two (joined by :data:`PAIR_TEMPLATE`).

    Raw labels listed in ``no_gold`` (e.g. OCNLI's ``-``) become ``Drop("no gold label")``.
    """
    no_gold = frozenset(no_gold)

    index_of, words = labels.index_of, labels.words

    def convert(where: int, record: Mapping[str, Any]) -> MRCExample | Drop:
        # The hot loop of loading (hundreds of thousands of records): the common case avoids helper calls.
        texts = tuple([tidy(text_field(record, key, path, where, unit)) for key in text_keys])
        raw = record.get(label_key)
        label = index_of.get(raw) if type(raw) is str else None
        if label is None:
            if raw is None:
                raise DataError(path, where, f"missing field {label_key!r}", unit=unit)
            if str(raw).strip() in no_gold:
                return Drop("no gold label")
            label = labels.index(raw, path, where, unit)
        passage = texts[0] if len(texts) == 1 else PAIR_TEMPLATE.format(*texts)
        return MRCExample(task, query, passage, words, label, texts=texts, source=f"{rel}:{where}")

    return convert


def choice_index(options: Sequence[str], answer: Any, path: str | Path, where: int, unit: str = "line") -> int:
    """The index of a multiple-choice answer given as an index (int) or as the option text (str)."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        if 0 <= answer < len(options):
            return answer
        raise DataError(path, where, f"answer index {answer} outside the {len(options)} options", unit=unit)
    if isinstance(answer, str) and answer in options:
        return options.index(answer)
    raise DataError(path, where, f"answer {answer!r} is neither an option index nor one of the options", unit=unit)


def options_field(
    record: Mapping[str, Any], name: str, path: str | Path, where: int, unit: str = "line"
) -> tuple[str, ...]:
    """A list of at least two distinct, non-empty option strings."""
    options = record.get(name)
    if not isinstance(options, list) or len(options) < 2 or not all(isinstance(o, str) and o.strip() for o in options):
        raise DataError(path, where, f"field {name!r} should be a list of at least two non-empty strings", unit=unit)
    if len(set(options)) != len(options):
        raise DataError(path, where, f"field {name!r} repeats an option: {options}", unit=unit)
    return tuple(options)


def extractive_example(
    task: str,
    question: str,
    context: str,
    answers: Sequence[str],
    start: int | None,
    source: str,
) -> MRCExample | Drop:
    """An extractive QA example whose span is the first answer.

    The span is taken at ``start`` when the answer text is there; otherwise the occurrence of the answer text
    nearest to ``start`` (the first one without a ``start``) is used, which repairs offsets counted in
    another unit (CMRC 2018's misaligned answers). An answer absent from the context is dropped.
    """
    answers = tuple(dict.fromkeys(a for a in map(tidy, answers) if a))
    if not answers:
        return Drop("empty text")
    first = answers[0]
    if start is None or context[start : start + len(first)] != first:
        found = [m.start() for m in re.finditer(re.escape(first), context)]
        if not found:
            return Drop("answer not in context")
        start = min(found, key=lambda s: abs(s - start)) if start is not None else found[0]
    return MRCExample(
        task,
        question,
        context,
        span=(start, start + len(first)),
        answers=answers,
        texts=(question, context),
        source=source,
    )

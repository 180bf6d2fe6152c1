"""Keep downstream evaluation data out of pre-training: drop upstream examples whose texts occur downstream.

The downstream side is every split of every built-in downstream task (the FewCLUE few-shot files, their
``*_few_all`` files and ``test_public``, and all of ChnSentiCorp), collected from the ``texts`` of the examples
as loaded, i.e. after cleaning: an input that cleaning removed from a downstream split (ChnSentiCorp's texts
with conflicting labels) is never trained or evaluated on, so seeing it upstream leaks nothing. Texts are
compared in :func:`leak_key` form: Unicode NFKC, case-folded, without punctuation, symbols, whitespace or
invisible characters, so that a review copied with full-width punctuation, another case or other spacing
still counts as the same text.

Rule, per upstream example:

* one text (a review, a title, a relation sentence, a CCPM translation): dropped if it equals any
  downstream text, whichever task or position it has there;
* several texts (a sentence pair; CSL's abstract and keywords; a CMRC question and context): dropped if its
  set of texts equals the text set of a downstream example (so a swapped pair counts), or if any one of its
  texts that is at least :data:`MIN_SHARED_CHARS` characters long equals a downstream text. Shorter shared
  texts (``好的``, ``谢谢``) are too common to mean that the pair was seen; long ones mean the downstream
  sentence was read during pre-training, which is the leak that matters.

The downstream text index is built once per data root (``functools.lru_cache``).
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from modprompt.data.mrc import MRCExample, Role
from modprompt.data.task import all_tasks

logger = logging.getLogger(__name__)

#: a text shared by a pair example and a downstream example is a leak from this length on (characters of its
#: :func:`leak_key`)
MIN_SHARED_CHARS = 10

# Punctuation (P*), symbols (S*), separators (Z*) and control/format characters (C*) are what copies of one
# text differ in; letters, marks and digits are what they share.
_DROPPED_CATEGORIES = ("P", "S", "Z", "C")


class _DroppedCharacters(dict):
    """A ``str.translate`` table that drops the characters of :data:`_DROPPED_CATEGORIES`, filled on first sight.

    ``modprompt tasks`` and pre-training compute a million keys; one translate per text, with each code point's
    category looked up once, costs a third less than asking for every character's category."""

    def __missing__(self, code: int) -> int | None:
        kept = None if unicodedata.category(chr(code)).startswith(_DROPPED_CATEGORIES) else code
        self[code] = kept
        return kept


_DROPPED = _DroppedCharacters()


def leak_key(text: str) -> str:
    """The form in which texts are compared for leakage (see the module docstring)."""
    return unicodedata.normalize("NFKC", text).casefold().translate(_DROPPED)


@dataclass(frozen=True)
class DownstreamIndex:
    """The downstream texts (in :func:`leak_key` form) and text sets that upstream examples are checked against."""

    texts: frozenset[str]
    text_sets: frozenset[frozenset[str]]

    @classmethod
    def of(cls, examples: list[MRCExample]) -> DownstreamIndex:
        texts: set[str] = set()
        text_sets: set[frozenset[str]] = set()
        for example in examples:
            normalised = [leak_key(t) for t in example.texts]
            texts.update(normalised)
            if len(normalised) > 1:
                text_sets.add(frozenset(normalised))
        return cls(frozenset(texts), frozenset(text_sets))

    def leaks(self, example: MRCExample) -> bool:
        """Whether an upstream example shares its input with downstream data (see the module docstring)."""
        normalised = [leak_key(t) for t in example.texts]
        if len(normalised) == 1:
            return bool(normalised[0]) and normalised[0] in self.texts
        if frozenset(normalised) in self.text_sets:
            return True
        return any(len(t) >= MIN_SHARED_CHARS and t in self.texts for t in normalised)


def downstream_index(data_root: str | Path) -> DownstreamIndex:
    """The index of every split of the built-in downstream tasks under ``data_root`` (cached)."""
    return _index(Path(data_root).resolve())


@lru_cache(maxsize=None)
def _index(data_root: Path) -> DownstreamIndex:
    examples = [
        example
        for task in all_tasks(Role.DOWNSTREAM)
        if task.builtin
        for split in task.splits
        for example in task.load(split, data_root)
    ]
    index = DownstreamIndex.of(examples)
    logger.info("downstream leakage index: %d texts, %d text sets", len(index.texts), len(index.text_sets))
    return index


def drop_leaked(examples: list[MRCExample], index: DownstreamIndex, name: str = "") -> tuple[list[MRCExample], int]:
    """The examples that do not leak, and how many were dropped (logged when any were)."""
    kept = [e for e in examples if not index.leaks(e)]
    dropped = len(examples) - len(kept)
    if dropped:
        logger.info("%s: dropped %d of %d examples that occur in downstream data", name, dropped, len(examples))
    return kept, dropped

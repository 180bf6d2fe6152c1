"""Task metrics: accuracy for option tasks; exact match and F1 for extractive QA.

Exact match and F1 follow the CMRC 2018 evaluation: text is lower-cased, punctuation and spaces are
removed, F1 is over characters (Chinese has no word boundaries), and each prediction is scored
against its best-matching gold answer.
"""

from __future__ import annotations

import string
import unicodedata
from collections import Counter
from collections.abc import Sequence

_PUNCT = set(string.punctuation) | set("，。！？、；：“”‘’（）《》〈〉【】『』「」﹃﹄〔〕…—－～·")


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    if len(predictions) != len(labels):
        raise ValueError(f"{len(predictions)} predictions for {len(labels)} labels")
    if not labels:
        return 0.0
    return sum(int(p == y) for p, y in zip(predictions, labels)) / len(labels)


def _normalise(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).lower()
    return "".join(ch for ch in text if ch not in _PUNCT and not ch.isspace())


def _f1(prediction: str, gold: str) -> float:
    pred, ref = _normalise(prediction), _normalise(gold)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def exact_match_f1(predictions: Sequence[str], answers: Sequence[Sequence[str]]) -> dict[str, float]:
    """Mean exact match and character F1 (as percentages' fractions in [0, 1]) over examples."""
    if len(predictions) != len(answers):
        raise ValueError(f"{len(predictions)} predictions for {len(answers)} answer lists")
    if not predictions:
        return {"exact_match": 0.0, "f1": 0.0}
    em = f1 = 0.0
    for pred, golds in zip(predictions, answers):
        em += max(float(_normalise(pred) == _normalise(g)) for g in golds)
        f1 += max(_f1(pred, g) for g in golds)
    return {"exact_match": em / len(predictions), "f1": f1 / len(predictions)}

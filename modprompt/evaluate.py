"""Predictions and metrics for any model that maps a batch to start/end logits.

Every method (modular prompts, prompt tuning, fine-tuning, a black-box candidate) is evaluated
through the same function, so a table compares methods and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from modprompt.data.encoding import EncodedExample, MRCEncoder, span_to_text
from modprompt.data.mrc import MRCExample
from modprompt.head import option_scores, scored_spans
from modprompt.metrics import accuracy, exact_match_f1
from modprompt.progress import Progress

#: ``forward(batch, tasks) -> (start_logits, end_logits)`` for a collated batch and its examples' tasks.
Forward = Callable[[dict, list[str]], tuple[torch.Tensor, torch.Tensor]]


@dataclass
class Prediction:
    example: MRCExample
    text: str  # the predicted option or span text
    option: int | None = None  # the predicted option index (option tasks)
    scores: list[float] | None = None  # per-option log-scores (option tasks)
    span: tuple[int, int] | None = None  # the predicted span's [start, end) in characters of the passage (extractive)


def _batches(items: Sequence, size: int):
    for i in range(0, len(items), size):
        yield items[i : i + size]


@torch.no_grad()
def predict(
    forward: Forward,
    encoder: MRCEncoder,
    examples: Sequence[MRCExample],
    batch_size: int = 16,
    progress: bool | None = None,
) -> list[Prediction]:
    """Predict every example: the best option, or the best passage span mapped back to text.

    ``progress``: a bar over the batches (None: only when stderr is a terminal, and only for more than four
    batches).

    With the encoder's windows on, a long passage is scored window by window and its prediction is the best
    span of all its windows: span scores are log-probabilities normalised within each window, compared across
    windows as transformers' question-answering pipeline compares its per-window probabilities; a tie goes to
    the earlier window.
    """
    windows = encoder.encode_windows(examples)
    encoded = [(index, w) for index, ws in enumerate(windows) for w in ws]
    # Sorting by length keeps padding (wasted compute) small; results are put back in input order.
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][1].input_ids))
    by_index: dict[int, Prediction] = {}
    best_span: dict[int, tuple[float, int]] = {}  # example -> (score, -window) of its best span so far
    chunks = list(_batches(order, batch_size))
    show = progress if len(chunks) > 4 else False
    with Progress(len(chunks), "predict", "batch", show).shown() as bar:
        for chunk in chunks:
            items: list[EncodedExample] = [encoded[i][1] for i in chunk]
            batch = encoder.collate(items)
            start, end = forward(batch, [e.example.task for e in items])
            if any(e.option_spans for e in items):
                scores = option_scores(start, end, batch)
            spans = scored_spans(start, end, batch) if any(not e.option_spans for e in items) else None
            for row, item in enumerate(items):
                index = encoded[chunk[row]][0]
                if item.option_spans:
                    row_scores = scores[row, : len(item.option_spans)]
                    best = int(row_scores.argmax())
                    by_index[index] = Prediction(item.example, item.example.options[best], best, row_scores.tolist())
                else:
                    first, last, value = spans[row]
                    key = (value, -item.window)
                    if index not in best_span or key > best_span[index]:
                        best_span[index] = key
                        offsets, p_start = item.passage_offsets, item.passage_span[0]
                        span = (offsets[first - p_start][0], offsets[last - p_start][1])
                        by_index[index] = Prediction(item.example, span_to_text(item, first, last), span=span)
            bar.step()
    return [by_index[i] for i in range(len(windows))]


def score(predictions: Sequence[Prediction]) -> dict[str, float]:
    """Accuracy for option tasks; exact match and F1 for extractive ones (both when mixed)."""
    metrics: dict[str, float] = {"examples": len(predictions)}
    options = [p for p in predictions if p.option is not None and p.example.label is not None]
    spans = [p for p in predictions if p.option is None and p.example.answers]
    if options:
        metrics["accuracy"] = accuracy([p.option for p in options], [p.example.label for p in options])
    if spans:
        metrics.update(exact_match_f1([p.text for p in spans], [p.example.answers for p in spans]))
    return metrics


def evaluate(
    forward: Forward,
    encoder: MRCEncoder,
    examples: Sequence[MRCExample],
    batch_size: int = 16,
    progress: bool | None = None,
) -> dict[str, float]:
    """:func:`score` of :func:`predict`'s predictions."""
    return score(predict(forward, encoder, examples, batch_size, progress))


def main_metric(metrics: dict[str, float]) -> float:
    """The one number a task is ranked by: accuracy, else F1."""
    return metrics["accuracy"] if "accuracy" in metrics else metrics.get("f1", 0.0)

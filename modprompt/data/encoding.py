"""MRC examples to token ids and batches, for any Hugging Face tokenizer with offsets.

Layout, the same for every backbone kind::

    [first] [placeholder x n] query [sep] passage [sep] option_1 [sep] ... option_m [closing]

``first`` is the tokenizer's cls token, else its bos token. The n placeholders are where MP2's deep
prompt vectors go. ``sep`` is the tokenizer's sep token, else the token(s) of ``"\\n"``; ``closing`` is
sep, else eos, else nothing. Query and passage come before the options so a causal model's option
tokens see both. Every segment is tokenized on its own, so option spans are exact by construction and
passage offsets refer to the passage alone. Only the passage is ever truncated (its end is cut).

**Windows** (``EncodingConfig.windows``, off by default): an extractive passage that does not fit is read in
overlapping windows instead of being cut, each laid out as above with its part of the passage, neighbours
sharing ``doc_stride`` tokens, as transformers' question-answering pipeline splits a long context
(``pipelines/question_answering.py`` of transformers 4.x: its tokenizer call with ``stride=doc_stride`` and
``return_overflowing_tokens``); the overlap here is at most half a window, so every window moves on by at
least half (the pipeline's default ``doc_stride`` is ``min(max_seq_len // 2, 128)``).
:meth:`MRCEncoder.encode_windows` gives every window of every example; :meth:`MRCEncoder.encode_all` one
encoding per example (the first window holding its answer). Option tasks are never windowed: their passage is
cut as before. Off, every example has one window, exactly the cut encoding, which is what pre-training has
always trained on.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from modprompt.data.mrc import MRCExample

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class EncodingConfig:
    """Layout settings; ``windows`` and ``doc_stride`` only change extractive passages longer than a window."""

    max_length: int = 256
    num_prompt_tokens: int = 0  # placeholders right after the first token
    windows: bool = False  # a long extractive passage in overlapping windows rather than cut at its end
    doc_stride: int = 128  # tokens shared by neighbouring windows (at most half a window)

    def __post_init__(self) -> None:
        if self.doc_stride < 0:
            raise ValueError(f"doc_stride must be at least 0, got {self.doc_stride}")


@dataclass
class EncodedExample:
    """One example as token ids, with every span the span head and the metrics need.

    Token spans are absolute positions in ``input_ids``; ``option_spans`` and ``answer_span`` are
    inclusive ``(first, last)``, ``passage_span`` is ``[start, end)``. ``passage_offsets`` holds the
    character offsets, within the passage, of each kept passage token. With windows, this is window
    ``window`` of ``num_windows``: the passage tokens it keeps, ``answer_lost`` when its answer is not among them.
    """

    input_ids: list[int]
    option_spans: list[tuple[int, int]]
    answer_span: tuple[int, int] | None
    passage_span: tuple[int, int]
    passage_offsets: list[tuple[int, int]]
    truncated: bool
    answer_lost: bool  # a gold extractive span no kept passage token covers; answer_span is then None
    answer_exact: bool  # answer_span's characters are exactly the gold answer
    example: MRCExample
    window: int = 0
    num_windows: int = 1


def span_to_text(encoded: EncodedExample, start: int, end: int) -> str:
    """The passage text under the inclusive token span ``start..end`` (absolute positions)."""
    p_start, p_end = encoded.passage_span
    if not p_start <= start <= end < p_end:
        raise ValueError(f"token span ({start}, {end}) is not inside the passage tokens [{p_start}, {p_end})")
    offsets = encoded.passage_offsets
    return encoded.example.passage[offsets[start - p_start][0] : offsets[end - p_start][1]]


def _covering_tokens(offsets: Sequence[tuple[int, int]], span: tuple[int, int]) -> tuple[int, int] | None:
    """First and last token overlapping the character span ``[start, end)``; None if no token does."""
    start, end = span
    hits = [i for i, (a, b) in enumerate(offsets) if a < b and a < end and b > start]
    return (hits[0], hits[-1]) if hits else None


class MRCEncoder:
    """Turns :class:`MRCExample` objects into :class:`EncodedExample` objects and padded batches."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        config: EncodingConfig = EncodingConfig(),
        device: torch.device | str | None = None,
    ) -> None:
        """``device``: where :meth:`collate` puts its batches (the model's device; None: the CPU)."""
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        if not tokenizer.is_fast:
            raise ValueError(f"tokenizer {name!r} gives no character offsets; a fast (tokenizers) tokenizer is needed")
        first = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        if first is None:
            raise ValueError(f"tokenizer {name!r} has neither a cls nor a bos token to start a sequence with")
        placeholder = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else tokenizer.pad_token_id
        if config.num_prompt_tokens and placeholder is None:
            raise ValueError(f"tokenizer {name!r} has neither an unk nor a pad token to hold prompt positions")
        if tokenizer.sep_token_id is not None:
            sep = [tokenizer.sep_token_id]
        else:
            sep = tokenizer("\n", add_special_tokens=False)["input_ids"]
            if not sep:
                raise ValueError(f"tokenizer {name!r} has no sep token and turns '\\n' into no tokens")
        closing = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.config = config
        self.prefix = [first] + [placeholder] * config.num_prompt_tokens
        self.sep = sep
        self.closing = [] if closing is None else [closing]
        self.device = torch.device(device) if device is not None else None

    def _tokenize(self, texts: Sequence[str]) -> dict[str, tuple[list[int], list[tuple[int, int]]]]:
        """ids and offsets of each distinct text, tokenized in one batch call."""
        unique = list(dict.fromkeys(texts))
        if not unique:
            return {}
        # verbose=False: whole passages may exceed model_max_length; they are cut below, not here.
        out = self.tokenizer(unique, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        return {
            text: (ids, [tuple(o) for o in offs])
            for text, ids, offs in zip(unique, out["input_ids"], out["offset_mapping"])
        }

    def _encode_batch(self, examples: Sequence[MRCExample]) -> list[list[EncodedExample]]:
        tokens = self._tokenize(
            [ex.query for ex in examples] + [ex.passage for ex in examples] + [o for ex in examples for o in ex.options]
        )
        return [self._encode_one(ex, tokens) for ex in examples]

    def _window_starts(self, passage_tokens: int, room: int) -> list[int]:
        """First passage token of each window of ``room`` tokens; the last window ends at the passage's end."""
        if passage_tokens <= room or room < 2:
            return [0]
        step = room - min(self.config.doc_stride, room // 2)
        starts = [0]
        while starts[-1] + room < passage_tokens:
            starts.append(starts[-1] + step)
        return starts

    def _encode_one(
        self, ex: MRCExample, tokens: dict[str, tuple[list[int], list[tuple[int, int]]]]
    ) -> list[EncodedExample]:
        """Every window of one example: one, unless windows are on and an extractive passage does not fit."""
        query_ids = tokens[ex.query][0]
        passage_ids, passage_offsets = tokens[ex.passage]
        option_ids = [tokens[o][0] for o in ex.options]
        for i, ids in enumerate(option_ids):
            if not ids:
                raise ValueError(f"{ex.source}: option {i} ({ex.options[i]!r}) gives no tokens")
        fixed = self._fixed(query_ids, option_ids)
        max_length = self.config.max_length
        if fixed > max_length:
            raise ValueError(
                f"{ex.source}: query ({len(query_ids)} tokens), {len(option_ids)} options "
                f"({sum(map(len, option_ids))} tokens) and special tokens take {fixed} tokens, "
                f"more than max_length {max_length}"
            )
        room = max_length - fixed
        windowed = self.config.windows and not ex.options
        starts = self._window_starts(len(passage_ids), room) if windowed else [0]
        # Cover the gold span within the whole passage first, so an answer a cut or a window's edge only partly
        # removes is reported lost rather than shortened.
        covering = _covering_tokens(passage_offsets, ex.span) if ex.span is not None else None
        return [
            self._encode_window(ex, query_ids, passage_ids, passage_offsets, option_ids, covering, first,
                                min(len(passage_ids) - first, room), i, len(starts))  # fmt: skip
            for i, first in enumerate(starts)
        ]

    def _encode_window(
        self,
        ex: MRCExample,
        query_ids: list[int],
        passage_ids: list[int],
        passage_offsets: list[tuple[int, int]],
        option_ids: list[list[int]],
        covering: tuple[int, int] | None,
        first: int,
        kept: int,
        window: int,
        num_windows: int,
    ) -> EncodedExample:
        """The example with passage tokens ``first`` to ``first + kept`` (window ``window`` of ``num_windows``)."""
        input_ids = self.prefix + query_ids + self.sep
        passage_span = (len(input_ids), len(input_ids) + kept)
        input_ids = input_ids + passage_ids[first : first + kept]
        option_spans = []
        for ids in option_ids:
            input_ids = input_ids + self.sep
            option_spans.append((len(input_ids), len(input_ids) + len(ids) - 1))
            input_ids = input_ids + ids
        input_ids = input_ids + self.closing

        answer_span, answer_lost, answer_exact = None, False, False
        if ex.label is not None:
            answer_span, answer_exact = option_spans[ex.label], True
        elif ex.span is not None:
            if covering is None or covering[0] < first or covering[1] >= first + kept:
                answer_lost = True
            else:
                start, last = covering
                answer_span = (passage_span[0] + start - first, passage_span[0] + last - first)
                text = ex.passage[passage_offsets[start][0] : passage_offsets[last][1]]
                answer_exact = text == ex.answer_text
        return EncodedExample(
            input_ids=input_ids,
            option_spans=option_spans,
            answer_span=answer_span,
            passage_span=passage_span,
            passage_offsets=passage_offsets[first : first + kept],
            truncated=kept < len(passage_ids),
            answer_lost=answer_lost,
            answer_exact=answer_exact,
            example=ex,
            window=window,
            num_windows=num_windows,
        )

    def _fixed(self, query_ids: list[int], option_ids: list[list[int]]) -> int:
        """Tokens an example takes besides its passage: specials, placeholders, query and options."""
        return (
            len(self.prefix)
            + len(query_ids)
            + len(self.sep)
            + sum(len(self.sep) + len(ids) for ids in option_ids)
            + len(self.closing)
        )

    def fixed_length(self, examples: Sequence[MRCExample]) -> int:
        """The most tokens any of ``examples`` needs besides its passage (0 for none).

        Tasks with long label lists (IFLYTEK's 119 options take ~380 Gemma tokens) need a larger
        ``max_length`` than short ones; this says how much before anything is cut or refused.
        """
        tokens = self._tokenize([ex.query for ex in examples] + [o for ex in examples for o in ex.options])
        return max(
            (self._fixed(tokens[ex.query][0], [tokens[o][0] for o in ex.options]) for ex in examples), default=0
        )

    def encode(self, example: MRCExample) -> EncodedExample:
        """Encode one example (see the module docstring for the layout): :meth:`encode_all` of it alone."""
        return self.encode_all([example], report=False)[0]

    def encode_all(
        self, examples: Sequence[MRCExample], chunk_size: int = 1024, report: bool = True
    ) -> list[EncodedExample]:
        """Encode many examples, one encoding each, warning how many were truncated, lost their answer or have
        an inexact span.

        With windows, an example's encoding is its first window holding the answer (else its first window), so
        ``answer_lost`` means that no window holds it. ``report=False`` keeps quiet: a training loop encodes
        every batch anew and would repeat it.
        """
        return [representative(w) for w in self.encode_windows(examples, chunk_size, report)]

    def encode_windows(
        self, examples: Sequence[MRCExample], chunk_size: int = 1024, report: bool = True
    ) -> list[list[EncodedExample]]:
        """Every window of each example, in passage order (one window each with windows off, or when it fits);
        warns as :meth:`encode_all` does."""
        windows: list[list[EncodedExample]] = []
        for i in range(0, len(examples), chunk_size):
            windows.extend(self._encode_batch(examples[i : i + chunk_size]))
        if report:
            self._report(windows)
        return windows

    def _report(self, windows: Sequence[Sequence[EncodedExample]]) -> None:
        """Warn how many passages were cut (or split), answers lost and answer spans inexact."""
        encoded = [representative(w) for w in windows]
        truncated = sum(e.truncated for e in encoded)
        lost = sum(e.answer_lost for e in encoded)
        inexact = sum(e.answer_span is not None and not e.answer_exact for e in encoded)
        if not (truncated or lost or inexact):
            return
        if self.config.windows:
            # An option task's passage is cut even with windows on: only extractive passages are split.
            split = sum(len(w) > 1 for w in windows)
            logger.warning(
                "encoded %d examples in %d windows (max_length %d): %d passages split into windows, %d cut, "
                "%d answers in no window, %d answer spans inexact",
                len(encoded), sum(map(len, windows)), self.config.max_length, split, truncated - split, lost,
                inexact,
            )  # fmt: skip
        else:
            logger.warning(
                "encoded %d examples (max_length %d): %d passages truncated, %d answers lost, %d answer spans inexact",
                len(encoded),
                self.config.max_length,
                truncated,
                lost,
                inexact,
            )

    def collate(
        self, encoded: Sequence[EncodedExample], pad_id: int | None = None, pad_to_multiple_of: int = 1
    ) -> dict[str, torch.Tensor]:
        """Right-pad a batch to its longest example (rounded up to ``pad_to_multiple_of``).

        ``pad_id`` defaults to the tokenizer's pad token, else 0: padded positions are masked out, so
        the id only has to exist in the vocabulary. Candidates mark where an answer may start or end:
        option first/last tokens for option tasks, every kept passage token for extractive QA.
        Missing answers and labels are -100. The batch is on the encoder's ``device``.
        """
        if not encoded:
            raise ValueError("cannot collate an empty batch")
        if pad_id is None:
            pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        batch = len(encoded)
        length = max(len(e.input_ids) for e in encoded)
        length = -(-length // pad_to_multiple_of) * pad_to_multiple_of
        num_options = max(len(e.option_spans) for e in encoded)

        input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        start_candidates = torch.zeros((batch, length), dtype=torch.bool)
        end_candidates = torch.zeros((batch, length), dtype=torch.bool)
        start_positions = torch.full((batch,), IGNORE_INDEX, dtype=torch.long)
        end_positions = torch.full((batch,), IGNORE_INDEX, dtype=torch.long)
        option_starts = torch.zeros((batch, num_options), dtype=torch.long)
        option_ends = torch.zeros((batch, num_options), dtype=torch.long)
        option_mask = torch.zeros((batch, num_options), dtype=torch.bool)
        labels = torch.full((batch,), IGNORE_INDEX, dtype=torch.long)

        for row, e in enumerate(encoded):
            n = len(e.input_ids)
            input_ids[row, :n] = torch.tensor(e.input_ids, dtype=torch.long)
            attention_mask[row, :n] = 1
            if e.option_spans:
                starts = torch.tensor([s for s, _ in e.option_spans], dtype=torch.long)
                ends = torch.tensor([t for _, t in e.option_spans], dtype=torch.long)
                k = len(e.option_spans)
                option_starts[row, :k], option_ends[row, :k], option_mask[row, :k] = starts, ends, True
                start_candidates[row, starts] = True
                end_candidates[row, ends] = True
            else:
                start_candidates[row, e.passage_span[0] : e.passage_span[1]] = True
                end_candidates[row, e.passage_span[0] : e.passage_span[1]] = True
            if e.answer_span is not None:
                start_positions[row], end_positions[row] = e.answer_span
            if e.example.label is not None:
                labels[row] = e.example.label

        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "start_candidates": start_candidates,
            "end_candidates": end_candidates,
            "start_positions": start_positions,
            "end_positions": end_positions,
            "option_starts": option_starts,
            "option_ends": option_ends,
            "option_mask": option_mask,
            "labels": labels,
        }
        # Built row by row on the CPU (cheap there), then moved in one go.
        if self.device is not None and self.device.type != "cpu":
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch


def representative(windows: Sequence[EncodedExample]) -> EncodedExample:
    """The one encoding that stands for an example's ``windows``: the first holding its answer, else the first."""
    return next((w for w in windows if w.answer_span is not None), windows[0])


def training_windows(windows: Sequence[Sequence[EncodedExample]]) -> list[EncodedExample]:
    """What training learns from, given each example's windows: every window that holds its answer.

    An example none of whose windows holds its answer keeps its first window (its loss is ignored, as it is for
    a cut answer without windows); with windows off this is each example's one encoding.
    """
    return [item for ws in windows for item in ([w for w in ws if w.answer_span is not None] or ws[:1])]


def drop_unreachable(examples: list[MRCExample], encoder: MRCEncoder) -> tuple[list[MRCExample], int]:
    """The examples without those whose extractive answer the encoder's truncation cuts away (with windows: that
    no window holds), and their count.

    Such an example has no answer span to train on (its loss is ignored), so in a training set it only
    inflates the count of examples seen. Option examples always keep their answer and are kept.
    """
    extractive = [i for i, e in enumerate(examples) if e.span is not None]
    if not extractive:
        return examples, 0
    encoded = encoder.encode_all([examples[i] for i in extractive], report=False)
    lost = {i for i, e in zip(extractive, encoded) if e.answer_lost}
    return [e for i, e in enumerate(examples) if i not in lost], len(lost)

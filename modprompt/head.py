"""The MRC head: start/end logits over tokens, one head for every task.

The softmax over start (and end) positions runs over the candidate positions only: an option task's
candidates are its options' first (last) tokens, an extractive task's the passage tokens. The span
loss is the sum of the start and end cross-entropies over those candidates; an option's score is the
product of its start and end probabilities (a sum of log-probabilities), and the prediction is the
best-scoring option.

Where this differs from MP2: MP2's start and end cross-entropy runs over every token of the input. Over
the candidates only, an option task's loss is a classification loss among its options (no probability
is spent on tokens that can never be the answer, such as the query's), and training and prediction
look at the same set of positions. The two agree when the candidates are all the tokens.

**Two heads.** :class:`SpanHead` (``"linear"``) reads a span's start at its first token and its end at its
last, independently. On a causal (decoder) backbone a token's state has seen only the tokens before it, so
the start of a span is scored without seeing the span. :class:`BilinearSpanHead` (``"bilinear"``) scores each
span as a whole, adding to the linear start and end logits a bilinear term between the start's and the end's
states, with one softmax over the valid spans: the end state has seen the whole span, and through that term
it can say where its span began. Its first logit tensor is a (batch, start, end) one; :func:`span_loss`,
:func:`option_scores` and :func:`best_spans` take either form, and give exactly what they always gave for the
linear head's (batch, tokens) logits.

What the blind start costs, and why the linear head is the default all the same:

* On tiny backbones trained from scratch, backbone and head together (``benchmarks/results/causal-span.md``:
  a synthetic task whose answer is the word ending with a given character, so only tokens after the start tell
  where it is), the linear head on the tiny decoder reaches 0.55–0.65 exact match (BPE and char tokenizer) and
  the bilinear one 0.98–0.99, the bidirectional tiny encoder 0.99 with either; on the mirror task (the word
  *starting* with it) the bilinear head is also the better one on every backbone. The passage given twice
  (every token of the second copy has seen all of the first) reached 0.07 in the same budget and costs twice
  the passage tokens. The end's logit times the start's given the end (``P(end) · P(start | end)``) fixed the
  first task but lost the mirror one, on the encoder as well: normalising the start per end throws away the
  start's own evidence, which one softmax over whole spans keeps.
* On the real backbone, frozen, as modprompt's users have it (``benchmarks/results/span-probe.md``: a fresh
  head alone trained on Gemma 3 270M's last-layer states for CMRC 2018, 16 to 1024 training questions, three
  seeds), the blind start shows, the linear head's most likely start being the gold one about half as often as
  its most likely end (0.043 against 0.076 at 1024 questions, 0.017 against 0.051 at 256), but the bilinear head
  does not get it back (start 0.031 at 1024) and scores 0.02–0.03 F1 *below* the linear head at every size
  (0.130 against 0.161 at 1024; 0.114 against 0.131 at 16). With prompt tuning at 16 questions it was also
  below, on one seed (F1 0.116 against 0.142, ``benchmarks/results/cmrc-adapt.md``). As we read it, the bilinear
  term needs a backbone that learns to write the span's start into its end state, which a frozen one, or one
  tuned on a few dozen examples, does not.

So :class:`SpanHead` is the default head everywhere (``AdaptConfig.span_head``), and the bilinear one is there
to choose where a backbone is trained with the head on enough data. Every prompt bank so far (the released
``gemma-3-270m`` one included) and every pre-finetuned model has the linear head, and keeps it.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from modprompt.data.encoding import IGNORE_INDEX


class SpanHead(nn.Module):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, tokens, hidden) -> start and end logits, each (batch, tokens)."""
        start, end = self.proj(hidden).unbind(-1)
        return start, end


class BilinearSpanHead(nn.Module):
    """Each span scored as a whole: :class:`SpanHead`'s start and end logits plus a bilinear term between the
    start's and the end's states, one softmax over every valid span.

    ``pair[b, s, e] = w_start·h_s + (K h_s)·(Q h_e) / sqrt(rank)`` and ``end[b, e] = w_end·h_e``; a span's
    logit is ``pair[s, e] + end[e]``. The end state has seen the whole span on any backbone, so through the
    bilinear term it can say where its span began, which a causal start cannot see. ``proj`` has
    :class:`SpanHead`'s shape and role, and ``query`` starts at zero, so a fresh head starts from the linear
    head's logits (normalised over valid spans rather than over starts and ends apart).
    """

    def __init__(self, hidden_size: int, rank: int = 32) -> None:
        super().__init__()
        self.proj = nn.Linear(hidden_size, 2)
        self.key = nn.Linear(hidden_size, rank, bias=False)
        self.query = nn.Linear(hidden_size, rank, bias=False)
        nn.init.zeros_(self.query.weight)
        self.rank = rank

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(batch, tokens, hidden) -> pair logits (batch, start, end) and end logits (batch, tokens)."""
        start, end = self.proj(hidden).unbind(-1)
        pair = self.key(hidden) @ self.query(hidden).transpose(1, 2) / math.sqrt(self.rank)
        return start.unsqueeze(2) + pair, end


#: span heads by the name configs use (``AdaptConfig.span_head``)
SPAN_HEADS: dict[str, type[nn.Module]] = {"linear": SpanHead, "bilinear": BilinearSpanHead}


def make_span_head(kind: str, hidden_size: int) -> nn.Module:
    """A fresh span head of ``kind`` (a key of :data:`SPAN_HEADS`)."""
    if kind not in SPAN_HEADS:
        raise ValueError(f"unknown span head {kind!r}; known: {sorted(SPAN_HEADS)}")
    return SPAN_HEADS[kind](hidden_size)


def span_log_probs(pair_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """log P(span) of every (start, end): (batch, start, end), one softmax over the valid spans (a start
    candidate at or before an end candidate), -inf elsewhere; from a pair head's logits."""
    tokens = end_logits.shape[1]
    positions = torch.arange(tokens, device=end_logits.device)
    valid = batch["start_candidates"].unsqueeze(2) & batch["end_candidates"].unsqueeze(1)
    valid = valid & (positions.unsqueeze(1) <= positions.unsqueeze(0))
    logits = (pair_logits + end_logits.unsqueeze(1)).masked_fill(~valid, float("-inf"))
    return logits.flatten(1).log_softmax(-1).view_as(logits)


def candidate_log_probs(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the candidate positions; -inf elsewhere."""
    return logits.masked_fill(~candidates, float("-inf")).log_softmax(-1)


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Start plus end cross-entropy over candidate positions; examples without an answer are ignored.

    A pair head's (batch, start, end) logits give -log P(span) of the gold span instead.
    """
    if start_logits.dim() == 3:
        lp = span_log_probs(start_logits, end_logits, batch).flatten(1)
        answered = batch["start_positions"] != IGNORE_INDEX
        gold = batch["start_positions"].clamp(min=0) * end_logits.shape[1] + batch["end_positions"].clamp(min=0)
        gold_lp = lp.gather(1, gold.unsqueeze(1)).squeeze(1)
        loss = torch.where(answered, -gold_lp, torch.zeros_like(gold_lp))
        if reduction == "none":
            return loss
        return loss.sum() / answered.sum().clamp(min=1)
    start_lp = candidate_log_probs(start_logits, batch["start_candidates"])
    end_lp = candidate_log_probs(end_logits, batch["end_candidates"])
    loss = nn.functional.nll_loss(start_lp, batch["start_positions"], ignore_index=IGNORE_INDEX, reduction="none")
    loss = loss + nn.functional.nll_loss(end_lp, batch["end_positions"], ignore_index=IGNORE_INDEX, reduction="none")
    if reduction == "none":
        return loss
    answered = batch["start_positions"] != IGNORE_INDEX
    return loss.sum() / answered.sum().clamp(min=1)


def option_scores(start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """log P(start) + log P(end) at each option's boundaries: (batch, options), -inf for padding.

    A pair head's (batch, start, end) logits give log P(span) of each option's span instead.
    """
    if start_logits.dim() == 3:
        lp = span_log_probs(start_logits, end_logits, batch).flatten(1)
        scores = lp.gather(1, batch["option_starts"] * end_logits.shape[1] + batch["option_ends"])
    else:
        start_lp = candidate_log_probs(start_logits, batch["start_candidates"])
        end_lp = candidate_log_probs(end_logits, batch["end_candidates"])
        scores = start_lp.gather(1, batch["option_starts"]) + end_lp.gather(1, batch["option_ends"])
    return scores.masked_fill(~batch["option_mask"], float("-inf"))


def best_spans(
    start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict, max_answer_tokens: int = 64
) -> list[tuple[int, int]]:
    """The highest-scoring valid span (start <= end, at most ``max_answer_tokens``) per example."""
    return [(start, end) for start, end, _ in scored_spans(start_logits, end_logits, batch, max_answer_tokens)]


def scored_spans(
    start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict, max_answer_tokens: int = 64
) -> list[tuple[int, int, float]]:
    """:func:`best_spans` with each span's score: log P(start) + log P(end) over the example's candidates
    (a pair head's log P(span) over its valid spans).

    The score is a log-probability normalised within the example, so spans of different windows of one
    passage can be compared (as transformers' question-answering pipeline compares per-window probabilities).
    """
    if start_logits.dim() == 3:
        scores = span_log_probs(start_logits, end_logits, batch)  # (batch, start, end)
    else:
        start_lp = candidate_log_probs(start_logits, batch["start_candidates"])
        end_lp = candidate_log_probs(end_logits, batch["end_candidates"])
        scores = start_lp.unsqueeze(2) + end_lp.unsqueeze(1)  # (batch, start, end)
    tokens = scores.shape[-1]
    idx = torch.arange(tokens, device=scores.device)
    valid = (idx.unsqueeze(0) >= idx.unsqueeze(1)) & (idx.unsqueeze(0) - idx.unsqueeze(1) < max_answer_tokens)
    scores = scores.masked_fill(~valid, float("-inf")).flatten(1)
    flat = scores.argmax(-1)
    best = scores.gather(1, flat.unsqueeze(1)).squeeze(1).detach()
    return [(int(f) // tokens, int(f) % tokens, float(b)) for f, b in zip(flat, best)]

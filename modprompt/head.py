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
"""

from __future__ import annotations

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


def candidate_log_probs(logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
    """Log-softmax over the candidate positions; -inf elsewhere."""
    return logits.masked_fill(~candidates, float("-inf")).log_softmax(-1)


def span_loss(start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict, reduction: str = "mean") -> torch.Tensor:
    """Start plus end cross-entropy over candidate positions; examples without an answer are ignored."""
    start_lp = candidate_log_probs(start_logits, batch["start_candidates"])
    end_lp = candidate_log_probs(end_logits, batch["end_candidates"])
    loss = nn.functional.nll_loss(start_lp, batch["start_positions"], ignore_index=IGNORE_INDEX, reduction="none")
    loss = loss + nn.functional.nll_loss(end_lp, batch["end_positions"], ignore_index=IGNORE_INDEX, reduction="none")
    if reduction == "none":
        return loss
    answered = batch["start_positions"] != IGNORE_INDEX
    return loss.sum() / answered.sum().clamp(min=1)


def option_scores(start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """log P(start) + log P(end) at each option's boundaries: (batch, options), -inf for padding."""
    start_lp = candidate_log_probs(start_logits, batch["start_candidates"])
    end_lp = candidate_log_probs(end_logits, batch["end_candidates"])
    scores = start_lp.gather(1, batch["option_starts"]) + end_lp.gather(1, batch["option_ends"])
    return scores.masked_fill(~batch["option_mask"], float("-inf"))


def best_spans(
    start_logits: torch.Tensor, end_logits: torch.Tensor, batch: dict, max_answer_tokens: int = 64
) -> list[tuple[int, int]]:
    """The highest-scoring valid span (start <= end, at most ``max_answer_tokens``) per example."""
    start_lp = candidate_log_probs(start_logits, batch["start_candidates"])
    end_lp = candidate_log_probs(end_logits, batch["end_candidates"])
    scores = start_lp.unsqueeze(2) + end_lp.unsqueeze(1)  # (batch, start, end)
    tokens = scores.shape[-1]
    idx = torch.arange(tokens, device=scores.device)
    valid = (idx.unsqueeze(0) >= idx.unsqueeze(1)) & (idx.unsqueeze(0) - idx.unsqueeze(1) < max_answer_tokens)
    flat = scores.masked_fill(~valid, float("-inf")).flatten(1).argmax(-1)
    return [(int(f) // tokens, int(f) % tokens) for f in flat]

"""The span head's scoring on hand-made logits: option scores, the best span and the span loss, worked out by hand.

Logits are logs of chosen weights, so each softmax over the candidates is a ratio of small integers. Position 0
is never a candidate and carries a huge logit, which only the candidate mask keeps out.
"""

from __future__ import annotations

import math

import torch

from modprompt.data.encoding import IGNORE_INDEX
from modprompt.head import best_spans, option_scores, span_loss

HUGE = 100.0


def logits(*weights: float) -> list[float]:
    """Position 0's huge logit, then log(weight) at each following position."""
    return [HUGE, *(math.log(w) for w in weights)]


def mask(*positions: int, tokens: int = 4) -> list[bool]:
    return [i in positions for i in range(tokens)]


def option_batch() -> tuple[torch.Tensor, torch.Tensor, dict]:
    """One option example over 4 tokens: option A spans tokens 1-2, option B tokens 2-3, a third slot is padding.

    Start candidates 1, 2 with weights 1, 3 (P = 1/4, 3/4); end candidates 2, 3 with weights 1, 4 (P = 1/5, 4/5).
    """
    start = torch.tensor([logits(1.0, 3.0, 1.0)])
    end = torch.tensor([logits(1.0, 1.0, 4.0)])
    batch = {
        "start_candidates": torch.tensor([mask(1, 2)]),
        "end_candidates": torch.tensor([mask(2, 3)]),
        "option_starts": torch.tensor([[1, 2, 0]]),
        "option_ends": torch.tensor([[2, 3, 0]]),
        "option_mask": torch.tensor([[True, True, False]]),
    }
    return start, end, batch


def test_option_scores_are_start_plus_end_log_probabilities_over_the_candidates():
    scores = option_scores(*option_batch())
    expected = torch.tensor([[math.log(1 / 4 * 1 / 5), math.log(3 / 4 * 4 / 5), float("-inf")]])
    assert torch.allclose(scores, expected)
    assert scores.argmax(-1).tolist() == [1]


def test_span_loss_is_the_gold_options_negative_log_probability_averaged_over_answered_examples():
    start, end, batch = option_batch()
    batch = {k: v.expand(2, -1) for k, v in batch.items()}
    batch["start_positions"] = torch.tensor([2, IGNORE_INDEX])  # the second example has no answer
    batch["end_positions"] = torch.tensor([3, IGNORE_INDEX])
    start, end = start.expand(2, -1), end.expand(2, -1)
    assert torch.allclose(span_loss(start, end, batch), torch.tensor(-math.log(3 / 4 * 4 / 5)))
    per_example = span_loss(start, end, batch, reduction="none")
    assert torch.allclose(per_example, torch.tensor([-math.log(3 / 4 * 4 / 5), 0.0]))


def test_best_span_is_the_best_valid_pair():
    # Passage tokens 1-3 are the candidates. Example 1: start P 1/4, 2/4, 1/4; end P 3/5, 1/5, 1/5. The best
    # pair overall, start 2 and end 1 (6/20), ends before it starts; the best valid one is (1, 1) at 3/20.
    # Example 2: start P .6, .1, .3; end P .1, .2, .7: (1, 3) at .42 beats (3, 3) at .21 and (1, 2) at .12.
    start = torch.tensor([logits(1.0, 2.0, 1.0), logits(6.0, 1.0, 3.0)])
    end = torch.tensor([logits(3.0, 1.0, 1.0), logits(1.0, 2.0, 7.0)])
    passage = torch.tensor([mask(1, 2, 3)] * 2)
    batch = {"start_candidates": passage, "end_candidates": passage}
    assert best_spans(start, end, batch) == [(1, 1), (1, 3)]
    # At most 2 tokens: (1, 3) is 3 tokens long, so example 2's best is (3, 3) (.21, against (1, 2)'s .12).
    assert best_spans(start, end, batch, max_answer_tokens=2) == [(1, 1), (3, 3)]

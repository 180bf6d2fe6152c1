"""The span heads' scoring on hand-made logits: option scores, the best span and the span loss, worked out by hand;
the bilinear head's pair logits, and what its start sees on a causal backbone.

Logits are logs of chosen weights, so each softmax over the candidates is a ratio of small integers. Position 0
is never a candidate and carries a huge logit, which only the candidate mask keeps out.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from modprompt.backbone import Backbone, load_backbone
from modprompt.data.encoding import IGNORE_INDEX, EncodingConfig, MRCEncoder
from modprompt.head import (
    BilinearSpanHead,
    SpanHead,
    best_spans,
    make_span_head,
    option_scores,
    scored_spans,
    span_log_probs,
    span_loss,
)

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


# --- the bilinear (pair) head -----------------------------------------------------------------


def pair_batch() -> dict:
    """One example over 4 tokens, position 0 no candidate; starts 1, 2 and ends 2, 3 are the candidates."""
    return {"start_candidates": torch.tensor([mask(1, 2)]), "end_candidates": torch.tensor([mask(2, 3)])}


def test_pair_logits_are_one_softmax_over_the_valid_spans():
    # Valid spans (start candidate <= end candidate): (1, 2), (1, 3), (2, 2), (2, 3), with weights 1, 2, 3, 4 (the
    # pair logit plus the end logit), so P = 1/10, 2/10, 3/10, 4/10; position 0's huge logits never count.
    weight = {(1, 2): 1.0, (1, 3): 2.0, (2, 2): 3.0, (2, 3): 4.0}
    pair = torch.full((1, 4, 4), HUGE)
    for (s, e), w in weight.items():
        pair[0, s, e] = math.log(w) - 0.5 * e  # the end logit below adds 0.5 * e back
    end = torch.tensor([[HUGE, 0.5, 1.0, 1.5]])
    batch = pair_batch()
    lp = span_log_probs(pair, end, batch)
    for (s, e), w in weight.items():
        assert torch.isclose(lp[0, s, e], torch.tensor(math.log(w / 10)))
    assert torch.isinf(lp[0, 3, 2]) and torch.isinf(lp[0, 0, 0])  # ends before it starts; not a candidate
    assert scored_spans(pair, end, batch)[0][:2] == (2, 3)
    assert math.isclose(scored_spans(pair, end, batch)[0][2], math.log(4 / 10), rel_tol=1e-6)
    batch.update(start_positions=torch.tensor([1]), end_positions=torch.tensor([3]))
    assert torch.isclose(span_loss(pair, end, batch), torch.tensor(-math.log(2 / 10)))
    options = {"option_starts": torch.tensor([[1, 2]]), "option_ends": torch.tensor([[2, 3]])}
    batch.update(options, option_mask=torch.ones(1, 2, dtype=torch.bool))
    assert torch.allclose(option_scores(pair, end, batch), torch.tensor([[math.log(1 / 10), math.log(4 / 10)]]))
    batch["start_positions"] = torch.tensor([IGNORE_INDEX])  # no answer: no loss, and a finite gradient
    pair.requires_grad_(True)
    loss = span_loss(pair, end, batch)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(pair.grad).all()


def test_a_fresh_bilinear_head_picks_the_linear_heads_spans():
    torch.manual_seed(0)
    hidden = torch.randn(3, 6, 8)
    linear, bilinear = SpanHead(8), BilinearSpanHead(8)
    bilinear.proj.load_state_dict(linear.proj.state_dict())  # its query starts at zero: no pair term yet
    passage = torch.tensor([[False, True, True, True, True, False]] * 3)
    batch = {"start_candidates": passage, "end_candidates": passage}
    assert best_spans(*bilinear(hidden), batch) == best_spans(*linear(hidden), batch)


def test_the_linear_head_computes_what_it_always_did():
    torch.manual_seed(0)
    head, hidden = SpanHead(8), torch.randn(2, 5, 8)
    start, end = head(hidden)
    expected = hidden @ head.proj.weight.T + head.proj.bias
    assert start.shape == (2, 5) and torch.equal(start, expected[..., 0]) and torch.equal(end, expected[..., 1])
    assert set(head.state_dict()) == {"proj.weight", "proj.bias"}  # the tensors every saved bank holds


def test_heads_by_name():
    assert isinstance(make_span_head("bilinear", 8), BilinearSpanHead) and type(make_span_head("linear", 8)) is SpanHead
    with pytest.raises(ValueError, match="unknown span head"):
        make_span_head("cubic", 8)


def test_on_a_causal_backbone_the_bilinear_start_reads_later_tokens(tiny_decoder):
    # Two inputs that differ only at position 6: a causal backbone's states before it are the same, so the linear
    # head's start logit at position 2 is too; the bilinear start of a span from 2 to an end at or after 6 is not.
    backbone = load_backbone(tiny_decoder)
    torch.manual_seed(0)
    linear, bilinear = SpanHead(backbone.hidden_size), BilinearSpanHead(backbone.hidden_size)
    torch.nn.init.normal_(bilinear.query.weight)  # a trained head's query is not zero
    ids = torch.tensor([[2, 40, 41, 42, 43, 44, 45, 46, 47], [2, 40, 41, 42, 43, 44, 99, 46, 47]])
    with torch.no_grad():
        hidden = backbone(ids, torch.ones_like(ids))
        start, _ = linear(hidden)
        pair, _ = bilinear(hidden)
    assert torch.equal(hidden[0, :6], hidden[1, :6]) and torch.equal(start[0, 2], start[1, 2])
    assert torch.equal(pair[0, 2, :6], pair[1, 2, :6])  # ends before the change: nothing differs
    assert not torch.isclose(pair[0, 2, 6:], pair[1, 2, 6:]).any()


def test_the_span_probe_reads_each_window_s_states_back_and_trains_from_its_cache(tiny_decoder, data_root, tmp_path,
                                                                                  monkeypatch):  # fmt: skip
    # benchmarks/span_probe.py trains heads on cached states: a batch's cached states must be the backbone's own,
    # row by row whatever the batch's order and padding, and a second run must not run the backbone again.
    benchmarks = Path(__file__).parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(benchmarks)  # as when run as a script: it imports machine beside it
    spec = importlib.util.spec_from_file_location("span_probe", benchmarks / "span_probe.py")
    probe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(probe)
    argv = ["span_probe.py", "--backbone", str(tiny_decoder), "--data", str(data_root), "--sizes", "2", "4",
            "--seeds", "0", "--steps", "50", "--test-limit", "3", "--work", str(tmp_path), "--out", str(tmp_path / "r")]  # fmt: skip
    monkeypatch.setattr("sys.argv", argv)
    probe.main()
    result = json.loads((tmp_path / "r.json").read_text())
    assert [(c["train_questions"], c["head"]) for c in result["cells"]] == [
        (2, "linear"), (2, "bilinear"), (4, "linear"), (4, "bilinear")]  # fmt: skip
    assert all(0 <= c["f1"] <= 1 and c["chosen_step"] in (0, 50) for c in result["cells"])

    (cache,) = tmp_path.glob("*.safetensors")
    states = probe.load_file(cache)
    backbone = load_backbone(tiny_decoder)
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(max_length=256, windows=True))
    task = probe.resolve_task(None, probe.SPEC.resolve())
    _, dev, _ = probe.fewshot_splits(task, 0, data_root, k_per_label=4)
    windows = [w for ws in encoder.encode_windows(dev) for w in ws][::-1]
    batch = encoder.collate(windows)
    with torch.no_grad():
        live = backbone(batch["input_ids"], batch["attention_mask"])
    mask = batch["attention_mask"].bool()
    assert torch.allclose(probe.padded_states(states, batch)[mask], live[mask], atol=1e-5)

    monkeypatch.setattr(Backbone, "forward", lambda *a: pytest.fail("the backbone ran again"))
    probe.main()  # every state from the cache

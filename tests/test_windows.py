"""Long extractive passages in overlapping windows: their layout, the answers they hold, what training draws
from, and prediction over every window. Tokenizer-level, with hand-made logits where a model would run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerFast

from modprompt.adapt import loop
from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import AdaptMethod, Stage
from modprompt.adapt.predict import predict_file
from modprompt.adapt.run import adapt
from modprompt.backbone import load_backbone
from modprompt.data.spec import read_spec
from modprompt.data.encoding import EncodingConfig, MRCEncoder, span_to_text, training_windows
from modprompt.data.mrc import MRCExample
from modprompt.evaluate import predict

QUERY = "哪里下雨？"
ANSWER = "上海的大雨"


@pytest.fixture(params=["char", "bpe"])
def tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return request.getfixturevalue(f"{request.param}_tok")


def filler(segments: int, start: int = 0) -> str:
    return "".join(f"第{i}段说的是北京的天气。" for i in range(start, start + segments))


def encoder(tok: PreTrainedTokenizerFast, windows: bool = True, doc_stride: int = 128) -> MRCEncoder:
    return MRCEncoder(tok, EncodingConfig(max_length=48, windows=windows, doc_stride=doc_stride))


def question(passage: str, answer: str | None = ANSWER, at: int | None = None) -> MRCExample:
    if answer is None:
        return MRCExample("t", QUERY, passage)
    start = passage.index(answer) if at is None else at
    return MRCExample("t", QUERY, passage, span=(start, start + len(answer)), answers=(answer,))


def test_an_answer_in_a_later_window_is_found_and_decodes_back(tok):
    ex = question(filler(30) + ANSWER + "。")
    assert encoder(tok, windows=False).encode(ex).answer_lost  # cut at max_length, the answer is gone
    windows = encoder(tok).encode_windows([ex])[0]
    assert len(windows) > 2
    assert [(w.window, w.num_windows) for w in windows] == [(i, len(windows)) for i in range(len(windows))]
    holding = [w for w in windows if w.answer_span is not None]
    assert holding and holding[-1].window == len(windows) - 1 and not windows[0].answer_span
    for w in holding:
        assert span_to_text(w, *w.answer_span) == ANSWER and w.answer_exact and not w.answer_lost
    assert all(w.answer_lost for w in windows if w.answer_span is None)
    one = encoder(tok).encode(ex)  # the example's one encoding is its first window holding the answer
    assert one == holding[0] and not one.answer_lost
    batch = encoder(tok).collate(holding[:1])
    assert (batch["start_positions"].item(), batch["end_positions"].item()) == holding[0].answer_span


@pytest.mark.parametrize("doc_stride", [8, 128])
def test_windows_share_doc_stride_tokens_at_most_half_a_window_and_cover_the_passage(tok, doc_stride):
    passage = filler(30)
    windows = encoder(tok, doc_stride=doc_stride).encode_windows([question(passage, None)])[0]
    whole = [tuple(o) for o in tok(passage, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]]
    room = windows[0].passage_span[1] - windows[0].passage_span[0]
    overlap = min(doc_stride, room // 2)
    assert all(len(w.input_ids) <= 48 for w in windows)
    assert all(w.input_ids[: w.passage_span[0]] == windows[0].input_ids[: windows[0].passage_span[0]] for w in windows)
    starts = [whole.index(w.passage_offsets[0]) for w in windows]
    assert starts == [i * (room - overlap) for i in range(len(windows))]
    for a, b in zip(windows, windows[1:]):
        assert a.passage_offsets[-overlap:] == b.passage_offsets[:overlap]
    assert windows[-1].passage_offsets[-1] == whole[-1]  # the last window reaches the passage's end
    assert all(w.passage_offsets == whole[s : s + len(w.passage_offsets)] for w, s in zip(windows, starts))


def test_windows_off_or_a_passage_that_fits_is_the_cut_encoding(tok):
    short = question("今天北京。" + ANSWER + "。")
    assert encoder(tok).encode_windows([short]) == [[encoder(tok, windows=False).encode(short)]]
    long = question(filler(30) + ANSWER + "。")
    (only,) = encoder(tok, windows=False).encode_windows([long])[0]
    assert only == encoder(tok, windows=False).encode(long) and only.truncated and only.answer_lost


def test_option_tasks_are_never_windowed(tok):
    ex = MRCExample("t", "天气如何？", filler(30), options=("晴", "雨"), label=1)
    (only,) = encoder(tok).encode_windows([ex])[0]
    assert only.truncated and only.answer_span == only.option_spans[1]


def test_training_uses_only_the_windows_that_hold_the_answer(tok):
    passage = filler(30) + ANSWER + "。"
    windows = encoder(tok).encode_windows([question(passage, None)])[0]
    # an answer in the overlap of the first two windows: the first token the second window starts with
    first = next(o for o in windows[1].passage_offsets if o[0] < o[1])
    shared = question(passage, passage[first[0] : first[1]], at=first[0])
    at_end = question(passage)
    nowhere = question(passage, passage[:-1], at=0)  # longer than any window
    per_example = encoder(tok).encode_windows([shared, at_end, nowhere])
    items = training_windows(per_example)
    assert [(w.example is shared, w.window) for w in items if w.example is shared] == [(True, 0), (True, 1)]
    assert [w.window for w in items if w.example is at_end] == [w.window for w in per_example[1] if w.answer_span]
    assert all(w.answer_span is not None for w in items if w.example is not nowhere)
    (kept,) = [w for w in items if w.example is nowhere]  # none holds it: its first window, loss ignored
    assert kept.window == 0 and kept.answer_lost and kept.answer_span is None


def test_fit_draws_its_steps_from_the_answer_windows_and_sizes_the_budget_by_examples(char_tok, monkeypatch):
    passage = filler(30) + ANSWER + "。"
    train = [question(passage), question("今天北京。" + ANSWER + "。")]
    seen = {}

    def run_stage(method, stage, enc, items, dev, config, index=0, *, budget=None, num_examples=None, **_):
        seen.update(items=list(items), budget=budget, num_examples=num_examples)
        return {"steps": 0, "step_budget": budget, "examples_seen": 0, "train_seconds": 0.0, "dev_seconds": 0.0,
                "dev_evaluations": 0, "best_dev": None, "best_run_step": 0}  # fmt: skip

    class Method:
        name = "fake"

        def stages(self) -> list[Stage]:
            return [Stage("only", [])]

    monkeypatch.setattr(loop, "run_stage", run_stage)
    config = AdaptConfig("route-only", batch_size=1, max_epochs=3)
    summary = loop.fit(Method(), encoder(char_tok), train, [], config, progress=False)
    windows = encoder(char_tok).encode_windows(train)
    expected = training_windows(windows)
    assert seen["items"] == expected and all(w.answer_span for w in expected)
    assert len(expected) < sum(map(len, windows))  # the long passage's other windows are not trained on
    assert seen["num_examples"] == 2 and seen["budget"] == 2 * 3  # epochs of the 2 examples, not of the windows
    assert summary["train_windows"] == len(expected)


def marker_logits(tok: PreTrainedTokenizerFast, weights: dict[str, float]):
    """A forward whose start and end logits are ``weights[char]`` at that character's token, 0 elsewhere."""
    ids = {}
    for char, weight in weights.items():
        (token,) = tok(char, add_special_tokens=False)["input_ids"]
        ids[token] = weight

    def forward(batch: dict, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        logits = torch.zeros(batch["input_ids"].shape)
        for token, weight in ids.items():
            logits = logits + weight * (batch["input_ids"] == token)
        return logits, logits.clone()

    return forward


def test_prediction_takes_the_best_span_over_all_windows(tok):
    # 甲 early in the first window with logit 3, 乙 only in a late window with logit 6: each window's span scores
    # are log-probabilities within it, so 乙's window wins; cut at max_length, only 甲 is there to find.
    passage = filler(1) + "甲。" + filler(25, 1) + "乙。" + filler(2, 26)
    examples = [question(passage, None), question("今天甲。北京乙。", None)]
    forward = marker_logits(tok, {"甲": 3.0, "乙": 6.0})
    first = encoder(tok).encode_windows(examples)[0][0]
    assert "甲" in passage[: first.passage_offsets[-1][1]] and "乙" not in passage[: first.passage_offsets[-1][1]]
    assert [p.text for p in predict(forward, encoder(tok), examples, batch_size=2)] == ["乙", "乙"]
    assert [p.text for p in predict(forward, encoder(tok, windows=False), examples)] == ["甲", "乙"]


def test_a_tie_between_windows_goes_to_the_earlier_one(tok):
    # All logits 0 and every window full: each window's best span has the same score, bit for bit, so the first
    # window's (its first token) is kept. The filler's length is searched for one that fills the last window.
    def full(segments: int) -> bool:
        windows = encoder(tok).encode_windows([question(filler(segments), None)])[0]
        return len(windows) > 2 and len(windows[0].input_ids) == len(windows[-1].input_ids) == 48

    ex = question(filler(next(n for n in range(20, 80) if full(n))), None)
    (prediction,) = predict(marker_logits(tok, {}), encoder(tok), [ex])
    assert prediction.span[0] == 0


@pytest.mark.usefixtures("one_thread")
def test_adapt_and_predict_read_a_user_task_in_windows(tiny_decoder, data_root, tmp_path):
    # examples/squad_qa at a max_length its passages do not fit: training draws from the windows holding answers,
    # the reloaded adaptation predicts over every window and scores the test file as the run did.
    spec = Path(__file__).resolve().parents[1] / "examples" / "squad_qa" / "baike_qa.json"
    fast = {"k_per_label": 4, "num_tokens": 4, "max_steps": 2, "eval_every": 2, "batch_size": 4, "max_length": 40,
            "min_passage_tokens": 8}  # fmt: skip
    backbone = load_backbone(tiny_decoder)
    runs = {}
    for passages in ("windows", "cut"):
        config = AdaptConfig("pt", long_passages=passages, **fast)
        runs[passages] = adapt(config, None, data_root, task_spec=spec, backbone=backbone, out=tmp_path / passages)
    windowed, cut = runs["windows"], runs["cut"]
    assert windowed["train_windows"] > windowed["examples"]["train"] == cut["train_windows"]
    method = AdaptMethod.from_pretrained(tmp_path / "windows", backbone=backbone)
    assert method.encoder().config.windows
    assert not AdaptMethod.from_pretrained(tmp_path / "cut", backbone=backbone).encoder().config.windows
    summary = predict_file(method, spec.parent / "test.json", tmp_path / "p.jsonl", read_spec(spec))
    assert summary["metrics"] == windowed["test"]


def test_the_warning_tells_split_passages_from_cut_option_passages(tok, caplog):
    long_question = question(filler(30) + ANSWER + "。")
    long_choice = MRCExample("t", QUERY, filler(30), options=("是", "否"), label=0)
    with caplog.at_level("WARNING", logger="modprompt.data.encoding"):
        encoder(tok).encode_all([long_question, long_choice, question(ANSWER + "。")])
    assert "1 passages split into windows, 1 cut, 0 answers in no window" in caplog.text

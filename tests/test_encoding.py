"""MRC examples to token ids and batches, on a character-level and a byte-level BPE tokenizer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import tiny
import torch
from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerFast

from modprompt.data.encoding import EncodedExample, EncodingConfig, MRCEncoder, span_to_text
from modprompt.data.mrc import MRCExample

CMRC_DEV = "ymcui+cmrc2018/squad-style-data/cmrc2018_dev.json"
#: Measured: questions whose first answer's byte-level BPE covering span is exactly the answer.
BPE_EXACT_CMRC_DEV = 3069
CMRC_DEV_ALIGNED = 3216

TNEWS_WORDS = ("故事", "文化", "娱乐", "体育", "财经", "房产", "汽车", "教育", "科技", "军事", "旅游", "国际", "股票", "农业", "电竞")


@pytest.fixture(params=["char", "bpe"])
def tok(request: pytest.FixtureRequest) -> PreTrainedTokenizerFast:
    return request.getfixturevalue(f"{request.param}_tok")


def ids(tokenizer: PreTrainedTokenizerFast, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def long_passage() -> str:
    return "".join(f"第{i}段说的是北京的天气。" for i in range(60))


@pytest.fixture(scope="module")
def cmrc_dev(data_root: Path) -> list[MRCExample]:
    """CMRC 2018 dev questions with their first answer as the gold span (misaligned answers skipped)."""
    path = data_root / CMRC_DEV
    examples, misaligned = [], 0
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for paragraph in article["paragraphs"]:
            context = paragraph["context"]
            for qa in paragraph["qas"]:
                first = qa["answers"][0]
                start, text = first["answer_start"], first["text"]
                if context[start : start + len(text)] != text:
                    misaligned += 1
                    continue
                examples.append(
                    MRCExample(
                        task="cmrc2018",
                        query=qa["question"],
                        passage=context,
                        span=(start, start + len(text)),
                        answers=tuple(a["text"] for a in qa["answers"]),
                        source=f"{path}:{qa['id']}",
                    )
                )
    assert misaligned == 3  # TASKS.md: 3 dev questions have a misaligned first answer
    assert len(examples) == CMRC_DEV_ALIGNED
    return examples


# --- the tiny tokenizers themselves ------------------------------------------------------------


def test_char_tokenizer_gives_one_token_per_chinese_character(char_tok: PreTrainedTokenizerFast) -> None:
    text = "北京是中华人民共和国的首都"
    assert char_tok.convert_ids_to_tokens(ids(char_tok, text)) == list(text)
    assert char_tok.convert_ids_to_tokens(char_tok("你好")["input_ids"]) == ["[CLS]", "你", "好", "[SEP]"]
    # Letters and digits split into single characters instead of one [UNK] per word.
    assert char_tok.convert_ids_to_tokens(ids(char_tok, "iPhone 1990")) == [
        "i", "##p", "##h", "##o", "##n", "##e", "1", "##9", "##9", "##0"
    ]  # fmt: skip


def test_bpe_tokenizer_merges_across_characters(bpe_tok: PreTrainedTokenizerFast) -> None:
    text = "战国无双系列的正统第三续作是由光荣开发的"
    enc = bpe_tok(text, add_special_tokens=False, return_offsets_mapping=True)
    widths = [b - a for a, b in enc["offset_mapping"]]
    assert max(widths) >= 2 and len(enc["input_ids"]) < len(text)
    assert bpe_tok.decode(enc["input_ids"]) == text
    with_specials = bpe_tok(text)["input_ids"]
    assert with_specials[0] == bpe_tok.bos_token_id and with_specials[1:] == enc["input_ids"]
    assert (bpe_tok.pad_token_id, bpe_tok.eos_token_id, bpe_tok.bos_token_id, bpe_tok.unk_token_id) == (0, 1, 2, 3)
    assert bpe_tok.sep_token_id is None and bpe_tok.cls_token_id is None


def test_committed_tiny_tokenizers_are_what_their_recipe_makes(
    tmp_path: Path, data_root: Path, char_tok: PreTrainedTokenizerFast, bpe_tok: PreTrainedTokenizerFast
) -> None:
    assert tiny.char_tokenizer(tmp_path / "c", data_root).get_vocab() == char_tok.get_vocab()
    made = tiny.bpe_tokenizer(tmp_path / "b", data_root)
    assert made.get_vocab() == bpe_tok.get_vocab()
    merges = [json.loads(tok.backend_tokenizer.to_str())["model"]["merges"] for tok in (made, bpe_tok)]
    assert merges[0] == merges[1]


# --- layout -----------------------------------------------------------------------------------


def test_layout_char_tokenizer_by_hand(char_tok: PreTrainedTokenizerFast) -> None:
    ex = MRCExample(task="t", query="天气怎么样？", passage="今天下雨了。", options=("晴", "雨天"), label=1)
    e = MRCEncoder(char_tok, EncodingConfig()).encode(ex)
    tokens = "[CLS] 天 气 怎 么 样 ？ [SEP] 今 天 下 雨 了 。 [SEP] 晴 [SEP] 雨 天 [SEP]".split()
    assert e.input_ids == char_tok.convert_tokens_to_ids(tokens)
    assert e.option_spans == [(15, 15), (17, 18)]
    assert e.answer_span == (17, 18) and e.answer_exact
    assert e.passage_span == (8, 14)
    assert e.passage_offsets == [(i, i + 1) for i in range(6)]
    assert not e.truncated and not e.answer_lost


def test_layout_bpe_tokenizer_uses_bos_newline_and_eos(bpe_tok: PreTrainedTokenizerFast) -> None:
    ex = MRCExample(task="t", query="天气怎么样？", passage="今天下雨了。", options=("晴", "雨天"), label=0)
    e = MRCEncoder(bpe_tok, EncodingConfig()).encode(ex)
    newline = ids(bpe_tok, "\n")
    assert newline == [bpe_tok.convert_tokens_to_ids("Ċ")]
    q, p, o1, o2 = (ids(bpe_tok, t) for t in ("天气怎么样？", "今天下雨了。", "晴", "雨天"))
    assert e.input_ids == [bpe_tok.bos_token_id, *q, *newline, *p, *newline, *o1, *newline, *o2, bpe_tok.eos_token_id]
    assert e.passage_span == (1 + len(q) + 1, 1 + len(q) + 1 + len(p))
    assert e.answer_span == e.option_spans[0]


def test_option_spans_hold_exactly_the_option_tokens(tok: PreTrainedTokenizerFast) -> None:
    options = (*TNEWS_WORDS, "iPhone 手机", "3.5分", "好评！")
    ex = MRCExample(task="t", query="这条新闻属于哪一类？", passage="苹果发布新款手机，股价上涨3.5%。", options=options, label=16)
    encoder = MRCEncoder(tok, EncodingConfig(max_length=512))
    e = encoder.encode(ex)
    assert len(e.option_spans) == len(options)
    for (first, last), option in zip(e.option_spans, options):
        assert e.input_ids[first : last + 1] == ids(tok, option)
        assert e.input_ids[first - 1 : first] == encoder.sep[-1:]
        decoded = tok.decode(e.input_ids[first : last + 1])
        # WordPiece decoding lowercases and puts spaces between Chinese characters.
        expected = option if tok.cls_token is None else option.lower()
        assert decoded.replace(" ", "") == expected.replace(" ", "")
    assert e.option_spans[-1][1] == len(e.input_ids) - 2  # only the closing token follows the last option
    assert e.answer_span == e.option_spans[16]


def test_placeholders_sit_at_positions_1_to_n(tok: PreTrainedTokenizerFast) -> None:
    ex = MRCExample(task="t", query="哪个对？", passage="一段文字。", options=("对", "错"), label=1)
    plain = MRCEncoder(tok, EncodingConfig()).encode(ex)
    n = 5
    e = MRCEncoder(tok, EncodingConfig(num_prompt_tokens=n)).encode(ex)
    assert e.input_ids[0] == plain.input_ids[0]
    assert e.input_ids[1 : n + 1] == [tok.unk_token_id] * n
    assert e.input_ids[n + 1 :] == plain.input_ids[1:]
    assert e.option_spans == [(a + n, b + n) for a, b in plain.option_spans]
    assert e.passage_span == (plain.passage_span[0] + n, plain.passage_span[1] + n)


# --- extractive QA on real data ---------------------------------------------------------------


def test_char_tokenizer_recovers_every_cmrc_dev_answer(
    char_tok: PreTrainedTokenizerFast, cmrc_dev: list[MRCExample]
) -> None:
    encoded = MRCEncoder(char_tok, EncodingConfig(max_length=4096)).encode_all(cmrc_dev)
    assert not any(e.truncated or e.answer_lost for e in encoded)
    assert all(e.answer_exact for e in encoded)
    assert all(span_to_text(e, *e.answer_span) == e.example.answer_text for e in encoded)


def test_bpe_tokenizer_covers_every_cmrc_dev_answer(
    bpe_tok: PreTrainedTokenizerFast, cmrc_dev: list[MRCExample]
) -> None:
    encoded = MRCEncoder(bpe_tok, EncodingConfig(max_length=4096)).encode_all(cmrc_dev)
    assert not any(e.truncated or e.answer_lost for e in encoded)
    texts = [span_to_text(e, *e.answer_span) for e in encoded]
    assert all(e.example.answer_text in text for e, text in zip(encoded, texts))
    assert [e.answer_exact for e in encoded] == [text == e.example.answer_text for e, text in zip(encoded, texts)]
    exact = sum(e.answer_exact for e in encoded)
    assert exact == BPE_EXACT_CMRC_DEV, f"{exact}/{len(encoded)} exact"
    # The minimal cover never includes a token that lies wholly outside the answer.
    for e in encoded:
        first, last = (i - e.passage_span[0] for i in e.answer_span)
        start, end = e.example.span
        assert e.passage_offsets[first][1] > start and e.passage_offsets[last][0] < end


def test_span_to_text_rejects_spans_outside_the_passage(char_tok: PreTrainedTokenizerFast) -> None:
    e = MRCEncoder(char_tok).encode(MRCExample(task="t", query="问", passage="甲乙丙丁", span=(1, 3)))
    assert e.passage_span == (3, 7) and e.answer_span == (4, 5)
    assert span_to_text(e, 3, 6) == "甲乙丙丁"
    for start, end in ((2, 4), (5, 7), (5, 4)):
        with pytest.raises(ValueError, match="not inside the passage"):
            span_to_text(e, start, end)


# --- truncation and errors --------------------------------------------------------------------


def test_truncation_cuts_only_the_passage_end(tok: PreTrainedTokenizerFast) -> None:
    ex = MRCExample(task="t", query="这段话说了什么？", passage=long_passage(), options=("北京", "上海", "广州"), label=0)
    e = MRCEncoder(tok, EncodingConfig(max_length=64)).encode(ex)
    full = MRCEncoder(tok, EncodingConfig(max_length=4096)).encode(ex)
    assert e.truncated and not full.truncated and len(e.input_ids) == 64
    (p0, p1), (f0, f1) = e.passage_span, full.passage_span
    kept = p1 - p0
    assert 0 < kept < f1 - f0
    assert e.input_ids[:p0] == full.input_ids[:f0]  # first token, query, separator
    assert e.input_ids[p1:] == full.input_ids[f1:]  # options and closing token
    assert e.input_ids[p0:p1] == full.input_ids[f0 : f0 + kept]  # the passage's beginning
    assert e.passage_offsets == full.passage_offsets[:kept]
    assert [e.input_ids[a : b + 1] for a, b in e.option_spans] == [ids(tok, o) for o in ex.options]
    assert e.answer_span == e.option_spans[0] and not e.answer_lost


def test_truncation_loses_answers_beyond_the_cut(tok: PreTrainedTokenizerFast) -> None:
    passage = long_passage()
    encoder = MRCEncoder(tok, EncodingConfig(max_length=48))
    cut = encoder.encode(MRCExample(task="t", query="天气如何？", passage=passage)).passage_offsets[-1][1]
    assert 10 < cut < len(passage) - 10

    def encode(span: tuple[int, int]) -> EncodedExample:
        return encoder.encode(MRCExample(task="t", query="天气如何？", passage=passage, span=span))

    inside = encode((1, 2))
    assert inside.truncated and not inside.answer_lost and "0" in span_to_text(inside, *inside.answer_span)
    for span in ((len(passage) - 4, len(passage) - 1), (cut - 1, cut + 1)):  # beyond, and straddling the cut
        lost = encode(span)
        assert lost.truncated and lost.answer_lost and lost.answer_span is None and not lost.answer_exact
        assert encoder.collate([lost])["start_positions"].tolist() == [-100]


def test_options_that_do_not_fit_raise_naming_the_source(tok: PreTrainedTokenizerFast) -> None:
    ex = MRCExample(
        task="t", query="选哪个？", passage="短文。", options=("一个很长很长的选项甲", "一个很长很长的选项乙"), label=0,
        source="tnews/dev.json:7",
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"tnews/dev\.json:7.*more than max_length 16"):
        MRCEncoder(tok, EncodingConfig(max_length=16)).encode(ex)
    assert MRCEncoder(tok, EncodingConfig(max_length=64)).encode(ex).option_spans


def test_empty_option_raises(tok: PreTrainedTokenizerFast) -> None:
    ex = MRCExample(task="t", query="选？", passage="文。", options=("对", ""), label=0, source="x.tsv:3")
    with pytest.raises(ValueError, match=r"x\.tsv:3: option 1"):
        MRCEncoder(tok).encode(ex)


def test_tokenizer_without_cls_or_bos_is_refused(bpe_tok: PreTrainedTokenizerFast) -> None:
    backend = Tokenizer.from_str(bpe_tok.backend_tokenizer.to_str())
    bare = PreTrainedTokenizerFast(tokenizer_object=backend, name_or_path="bare-bpe")
    with pytest.raises(ValueError, match="'bare-bpe' has neither a cls nor a bos"):
        MRCEncoder(bare)


def test_encode_all_warns_about_truncation_and_lost_answers(
    char_tok: PreTrainedTokenizerFast, caplog: pytest.LogCaptureFixture
) -> None:
    passage = long_passage()
    examples = [
        MRCExample(task="t", query="问", passage=passage, span=(len(passage) - 3, len(passage) - 1)),
        MRCExample(task="t", query="问", passage=passage, span=(0, 2)),
        MRCExample(task="t", query="问", passage="短", options=("是", "否"), label=0),
    ]
    with caplog.at_level(logging.WARNING, logger="modprompt.data.encoding"):
        encoded = MRCEncoder(char_tok, EncodingConfig(max_length=32)).encode_all(examples)
    assert [(e.truncated, e.answer_lost) for e in encoded] == [(True, True), (True, False), (False, False)]
    assert "3 examples (max_length 32): 2 passages truncated, 1 answers lost, 0 answer spans inexact" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="modprompt.data.encoding"):
        MRCEncoder(char_tok).encode_all(examples[2:])
    assert caplog.text == ""


# --- batches ----------------------------------------------------------------------------------


def test_collate_is_consistent(char_tok: PreTrainedTokenizerFast) -> None:
    encoder = MRCEncoder(char_tok, EncodingConfig(max_length=40))
    examples = [
        MRCExample(task="t", query="天气怎么样？", passage="今天下雨了。", options=("晴", "雨天"), label=1),
        MRCExample(task="t", query="哪类？", passage="球队赢了。", options=("体育", "财经", "娱乐"), label=0),
        MRCExample(task="t", query="谁赢了？", passage="湖人队赢了比赛。", span=(0, 3)),
        MRCExample(task="t", query="哪类？", passage="股价涨了。", options=("体育", "财经")),  # unlabelled
        MRCExample(task="t", query="在哪？", passage=long_passage(), span=(200, 202)),  # lost to truncation
    ]
    encoded = encoder.encode_all(examples)
    lengths = [len(e.input_ids) for e in encoded]
    assert lengths[0] == 20 and lengths[4] == 40 and encoded[4].answer_lost
    batch = encoder.collate(encoded, pad_to_multiple_of=8)

    assert batch["input_ids"].shape == (5, 40)
    assert batch["attention_mask"].sum(1).tolist() == lengths
    for row, e in enumerate(encoded):
        n = len(e.input_ids)
        assert batch["input_ids"][row, :n].tolist() == e.input_ids
        assert (batch["input_ids"][row, n:] == char_tok.pad_token_id).all()
        starts = batch["start_candidates"][row].nonzero().flatten().tolist()
        ends = batch["end_candidates"][row].nonzero().flatten().tolist()
        if e.option_spans:
            assert starts == [a for a, _ in e.option_spans] and ends == [b for _, b in e.option_spans]
        else:
            assert starts == ends == list(range(*e.passage_span))
    assert batch["start_positions"].tolist() == [17, encoded[1].option_spans[0][0], 6, -100, -100]
    assert batch["end_positions"].tolist() == [18, encoded[1].option_spans[0][1], 8, -100, -100]
    assert batch["labels"].tolist() == [1, 0, -100, -100, -100]
    assert batch["option_mask"].tolist() == [
        [True, True, False], [True, True, True], [False] * 3, [True, True, False], [False] * 3
    ]  # fmt: skip
    assert batch["option_starts"][0].tolist() == [15, 17, 0] and batch["option_ends"][0].tolist() == [15, 18, 0]
    assert (batch["option_starts"][~batch["option_mask"]] == 0).all()
    bools = {"start_candidates", "end_candidates", "option_mask"}
    assert {key: t.dtype for key, t in batch.items()} == {key: torch.bool if key in bools else torch.long for key in batch}
    assert len(batch) == 10
    assert encoder.collate(encoded[:1])["input_ids"].shape == (1, 20)  # no rounding unless asked
    assert encoder.collate(encoded[2:3])["option_starts"].shape == (1, 0)

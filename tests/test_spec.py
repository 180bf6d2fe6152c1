"""User tasks from a JSON spec: round trip, every format and shape, errors that name the spec field or the record."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from modprompt.data.mrc import Role, TaskKind
from modprompt.data.readers import DataError
from modprompt.data.registry import load_examples
from modprompt.data.spec import load_spec, read_spec
from modprompt.data.task import all_tasks, get_task

OWN_TASK = Path(__file__).resolve().parents[1] / "examples" / "own_task" / "kefu_intent.json"


def write_spec(folder: Path, spec: dict, name: str = "spec.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


SENTIMENT = [
    {"text": "很好用", "label": "pos"},
    {"text": "太差了", "label": "neg"},
    {"text": "一般般吧", "label": "neg"},
]


def label_spec(**changes) -> dict:
    spec = {"name": "demo", "instruction": "这条评论的情感是？", "files": {"train": "train.jsonl"},
            "text_fields": ["text"], "label_field": "label", "label_words": {"neg": "负面", "pos": "正面"}}  # fmt: skip
    spec.update(changes)
    return {k: v for k, v in spec.items() if v is not None}


def test_own_task_round_trip():
    task = load_spec(OWN_TASK)
    assert get_task("kefu_intent") is task and task in all_tasks(Role.DOWNSTREAM)
    assert task.kind is TaskKind.CLASSIFICATION and task.fewshot == "sampled" and task.num_options == 5
    assert task.label_words == ("退款", "物流", "改地址", "发票", "商品咨询")
    assert task.extras["spec"] == str(OWN_TASK) and set(task.splits) == {"train", "test"}
    train = load_examples("kefu_intent", "train", ".")
    assert len(train) == 50 and len(load_examples("kefu_intent", "test", ".")) == 20
    first = train[0]
    assert first.query == "这位顾客想办理什么事？" and first.passage == "衣服尺码不合适，我想申请退货退款"
    assert first.options == task.label_words and first.answer_text == "退款" and first.texts == (first.passage,)
    assert first.source == f"{OWN_TASK.parent / 'train.jsonl'}:1"


def test_registering_twice_needs_replace():
    load_spec(OWN_TASK)
    with pytest.raises(ValueError, match="already registered"):
        load_spec(OWN_TASK)
    assert load_spec(OWN_TASK, replace=True).name == "kefu_intent"


def test_csv_sentence_pair_task(tmp_path):
    (tmp_path / "train.csv").write_text(
        "premise,hypothesis,gold\n他在跑步,他在运动,蕴含\n他在跑步,他在睡觉,矛盾\n", encoding="utf-8"
    )
    spec = label_spec(files={"train": "train.csv"}, text_fields=["premise", "hypothesis"], label_field="gold",
                      label_words={"蕴含": "蕴含", "矛盾": "矛盾"}, kind="nli")  # fmt: skip
    task = load_spec(write_spec(tmp_path, spec))
    assert task.kind is TaskKind.NLI
    first, second = load_examples("demo", "train", ".")
    assert first.passage == "句子一：他在跑步\n句子二：他在运动" and first.texts == ("他在跑步", "他在运动")
    assert (first.answer_text, second.answer_text) == ("蕴含", "矛盾")


def test_tsv_without_header_uses_columns(tmp_path):
    (tmp_path / "train.tsv").write_text("pos\t很好用\nneg\t太差了\n", encoding="utf-8")
    load_spec(write_spec(tmp_path, label_spec(files={"train": "train.tsv"}, columns=["label", "text"])))
    assert [e.answer_text for e in load_examples("demo", "train", ".")] == ["正面", "负面"]


@pytest.mark.parametrize("layout", ["list", "lines"])
def test_json_file_as_list_or_as_lines(tmp_path, layout):
    body = (
        json.dumps(SENTIMENT, ensure_ascii=False) if layout == "list" else "\n".join(json.dumps(r) for r in SENTIMENT)
    )
    (tmp_path / "train.json").write_text(body, encoding="utf-8")
    load_spec(write_spec(tmp_path, label_spec(files={"train": "train.json"})))
    examples = load_examples("demo", "train", ".")
    assert [e.answer_text for e in examples] == ["正面", "负面", "负面"]
    assert examples[1].source.endswith("train.json:" + ("1" if layout == "list" else "2"))


def test_multiple_choice_task(tmp_path):
    records = [{"q": "哪个是水果？", "ctx": "市场里有很多东西。", "opts": ["苹果", "桌子", "汽车"], "ans": "苹果"},
               {"q": "哪个会飞？", "ctx": "天上有东西。", "opts": ["鱼", "鸟"], "ans": 1}]  # fmt: skip
    write_jsonl(tmp_path / "train.jsonl", records)
    spec = {"name": "demo_mc", "instruction": "选出答案。", "files": {"train": "train.jsonl"}, "text_fields": ["ctx"],
            "options_field": "opts", "answer_field": "ans", "question_field": "q"}  # fmt: skip
    task = load_spec(write_spec(tmp_path, spec))
    assert task.kind is TaskKind.MULTIPLE_CHOICE and task.num_options is None
    first, second = load_examples("demo_mc", "train", ".")
    assert first.query == "哪个是水果？" and first.options == ("苹果", "桌子", "汽车") and first.answer_text == "苹果"
    assert second.answer_text == "鸟" and second.passage == "天上有东西。"


def test_extractive_task(tmp_path):
    records = [{"c": "北京是中国的首都，上海是最大的城市。", "q": "中国的首都是哪里？", "a": "北京"},
               {"c": "他出生于1990年，1990年是马年。", "q": "马年是哪一年？", "a": ["1990年"], "s": 10}]  # fmt: skip
    write_jsonl(tmp_path / "train.jsonl", records)
    spec = {"name": "demo_qa", "instruction": "回答问题。", "files": {"train": "train.jsonl"}, "context_field": "c",
            "question_field": "q", "answer_field": "a", "answer_start_field": "s"}  # fmt: skip
    load_spec(write_spec(tmp_path, spec))
    first, second = load_examples("demo_qa", "train", ".")
    assert first.span == (0, 2) and first.answers == ("北京",) and first.query == "中国的首都是哪里？"
    assert second.span == (10, 15) and second.answer_text == "1990年"  # the occurrence at answer_start, not the first


def test_extractive_answer_missing_from_context_names_the_line(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", [{"c": "今天天气很好。", "q": "天气怎样？", "a": "下雨"}])
    spec = {"name": "demo_qa", "instruction": "回答问题。", "files": {"train": "train.jsonl"}, "context_field": "c",
            "question_field": "q", "answer_field": "a"}  # fmt: skip
    load_spec(write_spec(tmp_path, spec))
    with pytest.raises(DataError, match=r"train.jsonl, line 1: answer '下雨' does not occur in the context"):
        load_examples("demo_qa", "train", ".")


# ---- bad records in a user's files ---------------------------------------------------------------------------


def test_broken_json_line_names_file_and_line(tmp_path):
    (tmp_path / "train.jsonl").write_text(
        '{"text": "很好", "label": "pos"}\n{"text": "坏了", "label": \n', encoding="utf-8"
    )
    load_spec(write_spec(tmp_path, label_spec()))
    with pytest.raises(DataError) as err:
        load_examples("demo", "train", ".")
    assert str(tmp_path / "train.jsonl") in str(err.value) and "line 2" in str(err.value)


def test_unknown_label_names_file_line_and_label(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", SENTIMENT + [{"text": "还行", "label": "neutral"}])
    load_spec(write_spec(tmp_path, label_spec()))
    with pytest.raises(
        DataError, match=r"train.jsonl, line 4: unknown label 'neutral'; expected one of \['neg', 'pos'\]"
    ):
        load_examples("demo", "train", ".")


def test_lenient_mode_skips_bad_records_and_reports_the_count(tmp_path, caplog):
    body = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in SENTIMENT) + "{broken\n"
    body += json.dumps({"text": "还行", "label": "neutral"}, ensure_ascii=False) + "\n"
    (tmp_path / "train.jsonl").write_text(body, encoding="utf-8")
    load_spec(write_spec(tmp_path, label_spec()))
    with caplog.at_level(logging.WARNING):
        examples = load_examples("demo", "train", ".", lenient=True)
    assert len(examples) == 3
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2 and all("skipped 1" in w and "train.jsonl" in w for w in warnings)
    assert any("line 4" in w for w in warnings) and any("'neutral'" in w for w in warnings)


# ---- bad specs: the error names the spec file and the field --------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"name": None}, "name", "is required"),
        ({"name": "My Task"}, "name", "lowercase identifier"),
        ({"name": "tnews"}, "name", "built-in task"),
        ({"instruction": ""}, "instruction", "non-empty string"),
        ({"files": {"dev": "train.jsonl"}}, "files", "needs a 'train' split"),
        ({"files": {"train": "missing.jsonl"}}, "files", "not found"),
        ({"files": ["train.jsonl"]}, "files", "should be an object"),
        ({"files": {"train": "train.txt"}}, "format", "cannot infer"),
        ({"format": "xml"}, "format", "should be one of"),
        ({"label_words": {"neg": "一般", "pos": "一般"}}, "label_words", "distinct"),
        ({"label_words": {"pos": "正面"}}, "label_words", "at least two"),
        ({"label_words": None}, "label_words", "should map"),
        ({"text_fields": ["a", "b", "c"]}, "text_fields", "1 or 2 field names"),
        ({"label_field": None}, "label_field", "exactly one of"),
        ({"options_field": "opts"}, "label_field", "exactly one of"),
        ({"kind": "multiple_choice"}, "kind", "is one of"),
        ({"kind": "poetry"}, "kind", "should be one of"),
        ({"columns": ["text", "label"]}, "columns", "only applies to csv and tsv"),
        ({"lable_field": "label"}, "lable_field", "unknown field"),
        ({"answer_start_field": "s"}, "answer_start_field", "does not apply"),
    ],
)
def test_bad_spec_names_the_field(tmp_path, changes, field, problem):
    write_jsonl(tmp_path / "train.jsonl", SENTIMENT)
    (tmp_path / "train.txt").write_text("x", encoding="utf-8")
    path = write_spec(tmp_path, label_spec(**changes))
    with pytest.raises(DataError) as err:
        read_spec(path)
    assert str(path) in str(err.value) and f"field {field!r}" in str(err.value) and problem in str(err.value)


def test_spec_that_is_not_json_or_missing(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text('{"name": "demo",\n "files": }', encoding="utf-8")
    with pytest.raises(DataError, match=r"spec.json, line 2: invalid JSON"):
        read_spec(path)
    with pytest.raises(FileNotFoundError, match="task spec not found"):
        read_spec(tmp_path / "nowhere.json")
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(DataError, match="a task spec must be a JSON object"):
        read_spec(path)


def test_multiple_choice_needs_a_json_format(tmp_path):
    (tmp_path / "train.csv").write_text("ctx,opts,ans\n文,甲,0\n", encoding="utf-8")
    spec = {"name": "demo_mc", "instruction": "选。", "files": {"train": "train.csv"}, "text_fields": ["ctx"],
            "options_field": "opts", "answer_field": "ans"}  # fmt: skip
    with pytest.raises(DataError, match=r"field 'format': multiple-choice records need a JSON format"):
        read_spec(write_spec(tmp_path, spec))

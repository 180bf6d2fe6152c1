"""User tasks from a JSON spec: round trip, every format and shape, errors that name the spec field or the record."""

from __future__ import annotations

import json
import logging
import re
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
    assert not task.builtin and get_task("eprstmt").builtin  # downstream, but not one of the built-in suite
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


# ---- layouts: SQuAD, nested records and arrays, records paths, Parquet, save_to_disk ---------------------------

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PASSAGE = "长江发源于各拉丹冬峰，在上海注入东海。上海是长江口的城市。"
SQUAD = {"version": "v1.0", "data": [
    {"title": "长江", "paragraphs": [{"context": PASSAGE, "qas": [
        {"id": "q0", "question": "长江发源于哪里？", "answers": [{"text": "各拉丹冬峰", "answer_start": 5}]},
        # answer_start points at the second 上海; a second gold answer is kept for EM/F1
        {"id": "q1", "question": " 哪座城市在长江口？", "answers": [{"text": "上海", "answer_start": 19},
                                                          {"text": "上海市", "answer_start": 19}]},
    ]}]},
    {"title": "空", "paragraphs": [{"context": "没有问题的段落。", "qas": []},
                                   {"context": "今天下雨。", "qas": [{"id": "q2", "question": "天气？", "answers": []}]}]},
]}  # fmt: skip
DIALOGUES = [
    [["男：明天去爬山吗？", "女：周六有雨，改到周日吧。"],
     [{"question": "他们哪天爬山？", "choice": ["周六", "周日", "周五"], "answer": "周日"},
      {"question": "周六天气怎样？", "choice": ["晴天", "下雨"], "answer": "下雨"}], "d-1"],
    [["女：这件多少钱？", "男：三百二十块。"],
     [{"question": "衣服多少钱？", "choice": ["三百块", "三百二十块"], "answer": "三百二十块"}], "d-2"],
]  # fmt: skip
MC_SPEC = {"name": "demo_dialogue", "instruction": "根据对话选择正确答案。", "files": {"train": "train.json"},
           "expand": "[1]", "text_fields": ["join('\n', record[0])"], "question_field": "item.question",
           "options_field": "item.choice", "answer_field": "item.answer"}  # fmt: skip


def write_json(path: Path, document) -> Path:
    path.write_text(json.dumps(document, ensure_ascii=False), encoding="utf-8")
    return path


def squad_spec(**changes) -> dict:
    spec = {"name": "demo_squad", "instruction": "根据文章回答问题。", "format": "squad", "files": {"train": "train.json"}}
    return {k: v for k, v in {**spec, **changes}.items() if v is not None}


def test_squad_layout(tmp_path):
    write_json(tmp_path / "train.json", SQUAD)
    task = load_spec(write_spec(tmp_path, squad_spec()))
    assert task.kind is TaskKind.EXTRACTIVE_QA
    # q2 has no gold answer: dropped as such (test_check_reports_every_split counts it)
    first, second = load_examples("demo_squad", "train", ".")
    assert (first.query, first.passage, first.span, first.answer_text) == ("长江发源于哪里？", PASSAGE, (5, 10), "各拉丹冬峰")
    assert second.query == "哪座城市在长江口？" and second.span == (19, 21) and second.answers == ("上海", "上海市")
    assert first.source == f"{tmp_path / 'train.json'}:0" and second.source.endswith("train.json:1")


def test_the_builtin_cmrc_reader_is_the_squad_format(data_root, tmp_path):
    trial = data_root / "ymcui+cmrc2018/squad-style-data/cmrc2018_trial.json"
    (tmp_path / "train.json").symlink_to(trial)
    load_spec(write_spec(tmp_path, squad_spec(name="my_cmrc")))
    mine = load_examples("my_cmrc", "train", ".")
    builtin = load_examples("cmrc2018", "dev", data_root)
    assert len(mine) == len(builtin) == 1000
    assert [(e.query, e.passage, e.span, e.answers) for e in mine] == [
        (e.query, e.passage, e.span, e.answers) for e in builtin
    ]


def test_nested_multiple_choice_records_that_are_arrays(tmp_path):
    write_json(tmp_path / "train.json", DIALOGUES)
    task = load_spec(write_spec(tmp_path, MC_SPEC))
    assert task.kind is TaskKind.MULTIPLE_CHOICE
    first, second, third = load_examples("demo_dialogue", "train", ".")
    assert first.passage == second.passage == "男：明天去爬山吗？\n女：周六有雨，改到周日吧。"
    assert (first.query, first.options, first.answer_text) == ("他们哪天爬山？", ("周六", "周日", "周五"), "周日")
    assert (second.label, third.answer_text, third.options) == (1, "三百二十块", ("三百块", "三百二十块"))
    assert first.source.endswith("train.json:0/0") and second.source.endswith(":0/1") and third.source.endswith(":1/0")


def test_nested_objects_in_json_lines_with_positions(tmp_path):
    records = [{"doc": {"title": "茶", "sentences": ["茶起源于中国。", "唐代陆羽著有《茶经》。"]},
                "qs": [{"q": "谁写了《茶经》？", "opts": [{"t": "陆羽"}, {"t": "李白"}], "gold": 0}]}]  # fmt: skip
    write_jsonl(tmp_path / "train.jsonl", records)
    spec = {"name": "demo_nested", "instruction": "选择。", "files": {"train": "train.jsonl"}, "expand": "qs",
            "text_fields": ["record.doc.title", "join('', record.doc.sentences)"], "question_field": "item.q",
            "options_field": "item.opts[*].t", "answer_field": "item.gold"}  # fmt: skip
    load_spec(write_spec(tmp_path, spec))
    (example,) = load_examples("demo_nested", "train", ".")
    assert example.texts == ("茶", "茶起源于中国。唐代陆羽著有《茶经》。") and example.passage.startswith("句子一：茶\n句子二：")
    assert example.options == ("陆羽", "李白") and example.answer_text == "陆羽" and example.source.endswith("jsonl:1/0")


def test_records_path_and_keys_that_are_not_identifiers(tmp_path):
    write_json(tmp_path / "train.json", {"版本": 2, "数据": [{"评论": {"内容": "很好用"}, "标签": "pos"},
                                                         {"评论": {"内容": "太差了"}, "标签": "neg"}]})  # fmt: skip
    spec = label_spec(files={"train": "train.json"}, records='"数据"', text_fields=['"评论"."内容"'], label_field="标签")
    load_spec(write_spec(tmp_path, spec))
    assert [(e.passage, e.answer_text) for e in load_examples("demo", "train", ".")] == [("很好用", "正面"), ("太差了", "负面")]


HF_ROWS = [  # 🤗 datasets' squad layout: flat rows, answers as {text: [...], answer_start: [...]}
    {"id": "a", "context": PASSAGE, "question": "长江在哪里入海？", "answers": {"text": ["上海"], "answer_start": [12]}},
    {"id": "b", "context": PASSAGE, "question": "长江发源于哪里？", "answers": {"text": ["各拉丹冬峰"], "answer_start": [5]}},
]
HF_FIELDS = {"context_field": "context", "question_field": "question", "answer_field": "answers.text",
             "answer_start_field": "answers.answer_start[0]"}  # fmt: skip


def test_parquet_files(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(HF_ROWS), tmp_path / "train.parquet")
    spec = {"name": "demo_pq", "instruction": "回答。", "files": {"train": "train.parquet"}, **HF_FIELDS}
    assert read_spec(write_spec(tmp_path, spec)).format == "parquet"
    load_spec(tmp_path / "spec.json")
    first, second = load_examples("demo_pq", "train", ".")
    assert (first.span, first.answer_text, second.span) == ((12, 14), "上海", (5, 10))
    assert first.source == f"{tmp_path / 'train.parquet'}:0"


def test_save_to_disk_folders(tmp_path):
    import datasets

    datasets.Dataset.from_list(HF_ROWS).save_to_disk(str(tmp_path / "single"))
    datasets.DatasetDict(
        {"train": datasets.Dataset.from_list(HF_ROWS[:1]), "test": datasets.Dataset.from_list(HF_ROWS[1:])}
    ).save_to_disk(str(tmp_path / "both"))
    spec = {"name": "demo_ds", "instruction": "回答。", "files": {"train": "single"}, **HF_FIELDS}
    assert read_spec(write_spec(tmp_path, spec)).format == "datasets"
    load_spec(tmp_path / "spec.json")
    assert [e.answer_text for e in load_examples("demo_ds", "train", ".")] == ["上海", "各拉丹冬峰"]
    load_spec(write_spec(tmp_path, {**spec, "files": {"train": "both", "test": "both"}}), replace=True)
    assert [e.answer_text for e in load_examples("demo_ds", "test", ".")] == ["各拉丹冬峰"]
    assert load_examples("demo_ds", "train", ".")[0].source == f"{tmp_path / 'both'}:0"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_example_answer_spans_decode_to_the_answer(kind, request):
    from modprompt.data.encoding import EncodingConfig, MRCEncoder, span_to_text

    encoder = MRCEncoder(request.getfixturevalue(f"{kind}_tok"), EncodingConfig(512, 4))
    task = load_spec(EXAMPLES / "squad_qa" / "baike_qa.json")
    examples = load_examples(task.name, "train", ".") + load_examples(task.name, "test", ".")
    assert len(examples) == 43
    encoded = encoder.encode_all(examples)
    assert [span_to_text(e, *e.answer_span) for e in encoded] == [e.answer_text for e in examples]
    # Hand-checked: the question about 苏堤 and its answer, 28 characters into the passage.
    (sudi,) = [e for e in examples if e.query == "苏堤是谁主持修筑的？"]
    assert sudi.span == (sudi.passage.index("苏轼"), sudi.passage.index("苏轼") + 2) and sudi.answer_text == "苏轼"
    mc = load_spec(EXAMPLES / "dialogue_mc" / "duihua_mc.json")
    choices = load_examples(mc.name, "train", ".")
    assert len(choices) == 32 and len(load_examples(mc.name, "test", ".")) == 9
    for example, enc in zip(choices, encoder.encode_all(choices), strict=True):
        start, end = enc.option_spans[example.label]
        assert encoder.tokenizer.decode(enc.input_ids[start : end + 1]).replace(" ", "") == example.answer_text


# ---- malformed records in the new layouts: strict stops naming file, record and path; lenient skips ------------


def _dialogues(change) -> list:
    records = json.loads(json.dumps(DIALOGUES))
    change(records)
    return records


def _set(path: str, value):
    def change(records):
        target, *keys = path.split("/")
        obj = records[int(target)]
        for key in keys[:-1]:
            obj = obj[int(key)] if isinstance(obj, list) else obj[key]
        last = keys[-1]
        if value is KeyError:
            del obj[last]
        else:
            obj[int(last) if isinstance(obj, list) else last] = value

    return change


@pytest.mark.parametrize(
    ("change", "place", "problem", "kept"),
    [
        (_set("1/1/0/question", KeyError), "record 1, item 0",
         r"path 'item.question' gives nothing: 'item' has no key 'question' \(its keys: 'answer', 'choice'\)", 2),
        (_set("0/1/1/choice", "晴天,下雨"), "record 0, item 1",
         r"field 'item.choice' should be a list of at least two non-empty strings", 2),
        # a record-level field fails for each of the record's items: both are skipped
        (_set("0/0", "男：明天去爬山吗？"), "record 0, item 0",
         r"path \"join\('\\n', record\[0\]\)\" cannot be evaluated: In function join\(\)", 1),
        (_set("0/1/0/answer", 5), "record 0, item 0", r"answer index 5 outside the 3 options", 2),
        (_set("0/1/0/answer", "周一"), "record 0, item 0", r"answer '周一' is neither an option index nor one of", 2),
        (_set("1/1", {"question": "衣服多少钱？"}), "record 1",
         r"path '\[1\]' \('expand'\) should give a list: it gives an object", 2),
        (lambda records: records[1].__delitem__(slice(1, None)), "record 1",
         r"path '\[1\]' \('expand'\) should give a list: position \[1\] is out of range: the record has 1 item", 2),
        (lambda records: records.__setitem__(1, "d-2"), "record 1", r"expected a JSON object or array, got str", 2),
    ],
)  # fmt: skip
def test_malformed_nested_record(tmp_path, caplog, change, place, problem, kept):
    from modprompt.data.readers import collect_skips

    write_json(tmp_path / "train.json", _dialogues(change))
    load_spec(write_spec(tmp_path, MC_SPEC))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train.json'}, {place}: ") + problem):
        load_examples("demo_dialogue", "train", ".")
    with collect_skips() as skipped, caplog.at_level(logging.WARNING):
        examples = load_examples("demo_dialogue", "train", ".", lenient=True)
    assert len(examples) == kept and re.search(problem, str(skipped[0]))
    assert len(skipped) == 3 - kept if "item" in place else len(skipped) == 1
    assert any(f"lenient mode skipped {len(skipped)}" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    ("changes", "mutate", "problem"),
    [
        ({}, lambda d: d["data"][0]["paragraphs"][0]["qas"][0]["answers"][0].update(text="黄河"),
         r"question 0: answer '黄河' does not occur in the context \(paths 'answers\[\*\].text' and 'context'\)"),
        ({}, lambda d: d["data"][0]["paragraphs"][0]["qas"][1].pop("question"),
         r"question 1: path 'question' gives nothing: the record has no key 'question'"),
        ({}, lambda d: d["data"][0]["paragraphs"][0]["qas"][1]["answers"][0].update(answer_start="19"),
         r"question 1: path 'answers\[0\].answer_start' should give an integer, got a text"),
        ({"question_field": "question[0]"}, lambda d: None,
         r"question 0: path 'question\[0\]' gives nothing: 'question' is a text, not a list to take \[0\] of"),
        ({"context_field": "title"}, lambda d: None, r"question 0: path 'title' gives nothing: the record has no key"),
    ],
)  # fmt: skip
def test_malformed_squad_question(tmp_path, changes, mutate, problem):
    document = json.loads(json.dumps(SQUAD))
    mutate(document)
    write_json(tmp_path / "train.json", document)
    load_spec(write_spec(tmp_path, squad_spec(**changes)))
    with pytest.raises(DataError, match=re.escape(f"{tmp_path / 'train.json'}, ") + problem):
        load_examples("demo_squad", "train", ".")
    assert len(load_examples("demo_squad", "train", ".", lenient=True)) == (0 if changes else 1)


def test_a_spec_can_ask_for_lenient_reading(tmp_path):
    write_json(tmp_path / "train.json", _dialogues(_set("0/1/0/answer", 5)))
    load_spec(write_spec(tmp_path, {**MC_SPEC, "lenient": True}))
    assert len(load_examples("demo_dialogue", "train", ".")) == 2  # strict by the caller, lenient by the spec


@pytest.mark.parametrize(
    ("changes", "field", "problem"),
    [
        ({"question_field": "item.question["}, "question_field", "not a JMESPath expression"),
        ({"text_fields": ["joined(record[0])"]}, "text_fields", "unknown JMESPath function joined()"),
        ({"text_fields": ["join(record[0])"]}, "text_fields", "join() takes 2 argument(s), got 1"),
        ({"records": "data"}, "records", "only applies to the json format"),
        ({"format": "squad", "expand": None}, "format", "'squad' files hold extractive QA"),
        ({"format": "squad"}, "expand", "does not apply to the squad format"),
        ({"lenient": "yes"}, "lenient", "should be true or false"),
        ({"format": "datasets"}, "files", "format 'datasets' reads a folder written by save_to_disk"),
    ],
)
def test_bad_layout_spec_names_the_field(tmp_path, changes, field, problem):
    write_json(tmp_path / "train.json", DIALOGUES)
    spec = {k: v for k, v in {**MC_SPEC, **changes}.items() if v is not None}
    if "records" in changes:
        spec |= {"files": {"train": "train.jsonl"}}
        write_jsonl(tmp_path / "train.jsonl", [])
    path = write_spec(tmp_path, spec)
    with pytest.raises(DataError) as err:
        read_spec(path)
    assert str(path) in str(err.value) and f"field {field!r}" in str(err.value) and problem in str(err.value)


def test_records_path_that_finds_nothing(tmp_path):
    write_json(tmp_path / "train.json", {"items": []})
    load_spec(write_spec(tmp_path, label_spec(files={"train": "train.json"}, records="data.rows")))
    with pytest.raises(DataError, match=r"train.json: path 'data.rows' \('records'\) gives nothing: the document has no key 'data' \(its keys: 'items'\)"):  # noqa: E501
        load_examples("demo", "train", ".")


def test_squad_expand_is_refused_and_csv_fields_are_column_names(tmp_path):
    write_json(tmp_path / "train.json", SQUAD)
    with pytest.raises(DataError, match="field 'expand': does not apply to the squad format"):
        read_spec(write_spec(tmp_path, squad_spec(expand="qas")))
    (tmp_path / "train.csv").write_text("my text,label.raw\n很好,pos\n太差,neg\n", encoding="utf-8")
    load_spec(write_spec(tmp_path, label_spec(files={"train": "train.csv"}, text_fields=["my text"], label_field="label.raw")))
    assert [e.answer_text for e in load_examples("demo", "train", ".")] == ["正面", "负面"]


# ---- modprompt tasks --check -------------------------------------------------------------------------------------

LONG = "今天天气很好。" * 30 + "答案在最后。"


def _check_document() -> dict:
    document = json.loads(json.dumps(SQUAD))
    qas = document["data"][0]["paragraphs"][0]["qas"]
    qas.append({**qas[0], "id": "copy"})  # an exact duplicate
    qas.append({"id": "bad", "question": "长江有多长？", "answers": [{"text": "6300公里", "answer_start": 0}]})
    document["data"].append({"paragraphs": [{"context": LONG, "qas": [
        {"id": "long", "question": "答案在哪里？", "answers": [{"text": "最后", "answer_start": len(LONG) - 3}]}]}]})  # fmt: skip
    return document


def test_check_reports_every_split(tmp_path, char_tok):
    from modprompt.data.spec import check_spec

    write_json(tmp_path / "train.json", _check_document())
    write_json(tmp_path / "test.json", SQUAD)
    path = write_spec(tmp_path, squad_spec(files={"train": "train.json", "test": "test.json"}))
    report = check_spec(path, lambda: char_tok, max_length=100, lenient=True)
    assert (report["task"], report["kind"], report["format"], report["lenient"]) == ("demo_squad", "extractive_qa", "squad", True)
    # adapt keeps at least 128 passage tokens: 16 prompt tokens, [CLS], the longest question, 2 [SEP]s
    assert report["max_length"] == 16 + 1 + len("哪座城市在长江口？") + 2 + 128
    train = report["splits"]["train"]
    assert (train["examples"], train["kept"]) == (5, 3)
    assert train["dropped"] == {"exact duplicate": 1, "no gold label": 1}
    assert train["skipped"]["records"] == 1 and "question 3: answer '6300公里' does not occur" in train["skipped"]["first"][0]
    assert train["labels"] is None and [e["answer"] for e in train["shown"]] == ["各拉丹冬峰", "上海", "最后"]
    assert train["shown"][1] == {"source": f"{tmp_path / 'train.json'}:1", "query": "哪座城市在长江口？", "passage": PASSAGE,
                                 "options": [], "answer": "上海"}  # fmt: skip
    tokens = train["tokens"]
    assert tokens["max"] == 16 + 1 + len("答案在哪里？") + 1 + len(LONG) + 1
    assert (tokens["passages_cut"], tokens["answers_cut"], tokens["answers_inexact"]) == (1, 1, 0)
    assert tokens["answers_in_no_window"] == 0  # adapt's windows reach the answer the cut loses
    assert report["splits"]["test"]["kept"] == 2 and report["splits"]["test"]["tokens"]["passages_cut"] == 0


def test_check_of_a_choice_task_counts_answer_positions(char_tok):
    from modprompt.data.spec import check_spec

    report = check_spec(EXAMPLES / "dialogue_mc" / "duihua_mc.json", lambda: char_tok)
    train = report["splits"]["train"]
    assert train["kept"] == 32 and sum(train["labels"].values()) == 32 and set(train["labels"]) <= {
        "option 1", "option 2", "option 3", "option 4"}  # fmt: skip
    assert train["shown"][0]["options"] == ["下午三点", "下午五点", "上午十点"] and train["shown"][0]["answer"] == "下午五点"


def test_check_stops_at_a_bad_record_before_any_tokenizer(tmp_path):
    from modprompt.data.spec import check_spec

    write_json(tmp_path / "train.json", _check_document())
    path = write_spec(tmp_path, squad_spec())

    def never():
        raise AssertionError("the tokenizer is loaded only once the data is known to be good")

    with pytest.raises(DataError, match=r"train.json, question 3: answer '6300公里' does not occur in the context"):
        check_spec(path, never)


def test_tasks_check_command(tmp_path, data_root, capsys, caplog):
    import tiny

    from modprompt.cli import main

    tok = tiny.TOKENIZERS / "char"
    spec = EXAMPLES / "dialogue_mc" / "duihua_mc.json"
    assert main(["tasks", "--check", str(spec), "--backbone", str(tok)]) == 0
    out = capsys.readouterr().out
    assert "[train] 32 examples kept of 32; dropped: none; malformed records skipped: 0" in out
    assert "query:   男的要订哪一趟车？" in out and "options: 下午三点 | 下午五点 | 上午十点" in out
    assert main(["tasks", "--check", str(spec), "--backbone", str(tok), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"]["test"]["kept"] == 9
    write_json(tmp_path / "train.json", [[["只有对话"], "不是列表"]])
    bad = write_spec(tmp_path, MC_SPEC)
    assert main(["tasks", "--check", str(bad), "--backbone", str(tmp_path / "no-such-backbone")]) == 2
    # the data is read (and found wrong) before the missing backbone is looked for
    assert "record 0: path '[1]' ('expand') should give a list: it gives a text" in caplog.text

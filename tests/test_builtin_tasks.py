"""The built-in task suite on the real data mirror: roles, counts after cleaning, hand-checked records, label words."""

from __future__ import annotations

import hashlib
import json
import logging
from collections import defaultdict

import pytest
from spreadsheet import read_xlsx

from modprompt.data.convert import Drop, clean, hashed_split
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.task import all_tasks, get_task

UPSTREAM = {
    "afqmc", "pawsx", "cmnli", "snli", "cinlid", "oppo", "stsb", "chip_sts", "kuake_qqr", "kuake_qtr", "kuake_qic",
    "chip_ctc", "thucnews", "csl_category", "ewect", "book_review", "waimai", "chnsenticorp_htl", "shopping_books",
    "shopping_tablet", "shopping_phone", "shopping_fruit", "shopping_shampoo", "shopping_heater", "shopping_mengniu",
    "shopping_clothes", "shopping_computer", "shopping_hotel", "shopping_category", "finre", "sanwen", "ccpm",
    "cmrc2018", "cluewsc", "csl",
}  # fmt: skip
DOWNSTREAM = {"eprstmt", "bustm", "ocnli", "csldcp", "tnews", "iflytek", "chid", "chnsenticorp"}
FEWCLUE_SPLITS = {f"{s}_{i}" for s in ("train", "dev") for i in range(5)} | {"train_all", "dev_all", "test"}

#: examples per split after cleaning, before the leakage filter (Task.load)
COUNTS = {
    "chip_ctc": {"train": 22210, "dev": 7594},
    "chip_sts": {"train": 15997, "dev": 4000},
    "kuake_qic": {"train": 6931, "dev": 1955},
    "kuake_qqr": {"train": 14850, "dev": 1588},
    "kuake_qtr": {"train": 24161, "dev": 2913},
    "ccpm": {"train": 21777, "dev": 2720},
    "cmrc2018": {"train": 3219, "dev": 1000},
    "csl_category": {"train": 7999, "dev": 1000, "test": 1000},
    "afqmc": {"train": 34334, "dev": 4316},
    "pawsx": {"train": 1993, "test": 1993},
    "cmnli": {"train": 12232},
    "snli": {"train": 9306, "test": 9165},
    "stsb": {"train": 5194, "dev": 1454, "test": 1351},
    "oppo": {"train": 10000},
    "cinlid": {"train": 81978, "dev": 4609, "test": 4451},
    "cluewsc": {"train": 272, "test": 957},
    "csl": {"train": 317, "test": 2818},
    "finre": {"train": 13196, "dev": 1459, "test": 3637},
    "sanwen": {"train": 17112, "dev": 1787, "test": 2206},
    "waimai": {"train": 10777, "dev": 601, "test": 595},
    "chnsenticorp_htl": {"train": 7012, "dev": 384, "test": 369},
    "shopping_books": {"train": 3468, "dev": 178, "test": 204},
    "shopping_tablet": {"train": 9008, "dev": 526, "test": 465},
    "shopping_phone": {"train": 2075, "dev": 127, "test": 121},
    "shopping_fruit": {"train": 8982, "dev": 498, "test": 516},
    "shopping_shampoo": {"train": 9045, "dev": 490, "test": 462},
    "shopping_heater": {"train": 518, "dev": 28, "test": 28},
    "shopping_mengniu": {"train": 1823, "dev": 91, "test": 118},
    "shopping_clothes": {"train": 8959, "dev": 531, "test": 494},
    "shopping_computer": {"train": 3591, "dev": 189, "test": 194},
    "shopping_hotel": {"train": 9021, "dev": 501, "test": 478},
    "shopping_category": {"train": 56447, "dev": 3157, "test": 3076},
    "book_review": {"train": 19614, "dev": 7901, "test": 7920},
    "ewect": {"train": 26924, "dev": 1992, "test": 4969},
    "thucnews": {"train": 59746, "dev": 9993, "test": 9988},
    "chnsenticorp": {"train": 8218, "dev": 1177, "test": 1177},
    "eprstmt": {"train_0": 32, "train_1": 31, "train_2": 31, "train_3": 28, "train_4": 31, "dev_0": 31, "dev_1": 32,
                "dev_2": 31, "dev_3": 32, "dev_4": 31, "train_all": 131, "dev_all": 135, "test": 610},
    "bustm": {**{f"train_{i}": 32 for i in range(5)}, **{f"dev_{i}": 32 for i in range(5)},
              "train_all": 156, "dev_all": 156, "test": 1772},
    "ocnli": {**{f"train_{i}": 32 for i in range(5)}, **{f"dev_{i}": 32 for i in range(5)},
              "train_all": 160, "dev_all": 158, "test": 2520},
    "csldcp": {**{f"train_{i}": 536 for i in range(5)}, **{f"dev_{i}": 536 for i in range(5)},
               "train_all": 2036, "dev_all": 2068, "test": 1784},
    "tnews": {**{f"train_{i}": 240 for i in range(5)}, **{f"dev_{i}": 240 for i in range(5)},
              "train_all": 1185, "dev_all": 1098, "test": 2010},
    "iflytek": {**{f"train_{i}": 928 for i in range(5)}, **{f"dev_{i}": 690 for i in range(5)},
                "train_all": 3024, "dev_all": 1373, "test": 1749},
    "chid": {**{f"train_{i}": 42 for i in range(5)}, **{f"dev_{i}": 42 for i in range(5)},
             "train_all": 202, "dev_all": 202, "test": 2002},
}  # fmt: skip


def load(name: str, split: str, data_root) -> list[MRCExample]:
    return get_task(name).load(split, data_root)


def by_source(examples: list[MRCExample], source: str) -> MRCExample:
    [example] = [e for e in examples if e.source == source]
    return example


def test_roles_are_exactly_the_35_upstream_and_8_downstream_tasks():
    assert {t.name for t in all_tasks(Role.UPSTREAM)} == UPSTREAM and len(all_tasks(Role.UPSTREAM)) == 35
    assert {t.name for t in all_tasks(Role.DOWNSTREAM)} == DOWNSTREAM and len(all_tasks(Role.DOWNSTREAM)) == 8
    assert {t.name for t in all_tasks(Role.DOWNSTREAM) if t.builtin} == DOWNSTREAM


def test_excluded_files_are_read_by_no_task():
    files = [f for t in all_tasks() for f in t.files]
    assert not [
        f
        for f in files
        if f.startswith(("CLUEbenchmark+OCNLI/", "zejunwang1+bertorch/", "ydli-ai+CSL/benchmark/cls_dcp"))
    ]


def test_task_metadata():
    for task in all_tasks():
        assert task.name.isidentifier() and task.name == task.name.lower(), task.name
        assert task.instruction.strip() and task.source, task.name
        assert len(set(task.label_words)) == len(task.label_words), task.name
        # Chinese words, not raw labels; IFLYTEK's own label name MOBA is the one ASCII word
        assert all(w.strip() and (not w.isascii() or w == "MOBA") for w in task.label_words), task.name
        if task.kind in (TaskKind.MULTIPLE_CHOICE, TaskKind.EXTRACTIVE_QA):
            assert task.num_options is None
        else:
            assert task.num_options == len(task.label_words) >= 2
        expected = "fewclue" if task.source == "CLUEbenchmark/FewCLUE" and task.role is Role.DOWNSTREAM else "sampled"
        assert task.fewshot == expected, task.name
    assert {t.name for t in all_tasks() if set(t.splits) == FEWCLUE_SPLITS} == DOWNSTREAM - {"chnsenticorp"}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_counts_per_split_after_cleaning(name, data_root):
    task = get_task(name)
    counts = {split: len(task.load(split, data_root)) for split in task.splits}
    assert counts == COUNTS[name]
    for split in task.splits:
        for example in task.load(split, data_root)[:50]:
            assert example.task == name and example.texts and example.source
            if task.label_words:
                assert example.options == task.label_words


def test_every_upstream_and_downstream_task_has_train_and_an_evaluation_split():
    for task in all_tasks():
        assert "train" in task.splits or "train_0" in task.splits, task.name
        # cmnli and oppo: a single labelled file, all of it exposed as train
        assert task.name in ("cmnli", "oppo") or {"dev", "test"} & set(task.splits), task.name


def test_loading_returns_a_fresh_list_from_the_cache(data_root):
    first = load("eprstmt", "train_0", data_root)
    first.clear()
    assert len(load("eprstmt", "train_0", data_root)) == 32


# ---- hand-checked records, one or more per task kind --------------------------------------------------------


def test_eprstmt_single_sentence(data_root):
    [example] = [e for e in load("eprstmt", "train_0", data_root) if e.source.endswith("train_0.json:1")]
    assert example.query == "这条商品评论的情感是？"
    assert example.passage.startswith("物流很快，早上下单，下午就到了。") and example.passage.endswith(
        "1580元买这耳机亏大了。"
    )
    assert example.options == ("负面", "正面") and example.answer_text == "负面"
    assert example.texts == (example.passage,)


def test_bustm_sentence_pair(data_root):
    example = by_source(load("bustm", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/bustm/train_0.json:1")
    assert example.passage == "句子一：叫爸爸叫一声我听听\n句子二：那你叫我一声爸爸"
    assert example.texts == ("叫爸爸叫一声我听听", "那你叫我一声爸爸")
    assert example.options == ("不同", "相同") and example.answer_text == "相同"
    second = by_source(load("bustm", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/bustm/train_0.json:2")
    assert second.texts == ("十亿韩元等于多少人民币", "一百元人民币") and second.answer_text == "不同"


def test_ocnli_nli(data_root):
    example = by_source(load("ocnli", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/ocnli/train_0.json:1")
    assert example.texts == (
        "七五期间开始,国家又投资将武汉市区的部分土堤改建为钢筋泥凝土防水墙",
        "八五期间会把剩下的土堤都改建完",
    )
    assert example.options == ("蕴含", "中立", "矛盾") and example.answer_text == "中立"
    assert example.query == "句子一和句子二是什么关系？"


def test_tnews_iflytek_csldcp_label_words(data_root):
    tnews = by_source(load("tnews", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/tnews/train_0.json:1")
    assert tnews.passage == "为何农民工每天日夜加班却没有网红在家里直播几天的收入高？" and tnews.answer_text == "娱乐"
    assert len(tnews.options) == 15
    iflytek = by_source(load("iflytek", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/iflytek/train_0.json:1")
    assert iflytek.passage.startswith("闪客蜂是一款地铁快速购票软件") and iflytek.answer_text == "公共交通"
    assert len(iflytek.options) == 119
    csldcp = by_source(load("csldcp", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/csldcp/train_0.json:1")
    assert (
        csldcp.passage.startswith("为保证发动机在不同的转速时都具有最佳点火提前角")
        and csldcp.answer_text == "控制科学与工程"
    )


def test_chid_cloze_multiple_choice(data_root):
    example = by_source(load("chid", "train_0", data_root), "CLUEbenchmark+FewCLUE/datasets/chid/train_0.json:1")
    assert example.options == ("风云人物", "气势汹汹", "予取予求", "乘龙佳婿", "正中下怀", "天方夜谭", "心如刀割")
    assert example.answer_text == "气势汹汹" and example.query == "空白处应填入哪个成语？"
    assert "新八国联军____逼近附近海域" in example.passage and "#idiom#" not in example.passage
    assert example.texts[0].startswith("据俄罗斯卫星通讯社3月15日报道,新八国联军#idiom#逼近")


def test_cluewsc_marks_the_pronoun(data_root):
    examples = load("cluewsc", "train", data_root)
    [example] = [
        e for e in examples if e.texts[0].startswith("为什么要出现一个身穿军装的高大男人？") and "树叶" in e.query
    ]
    assert example.query == "文中【他】指的是「树叶」吗？"
    assert example.passage == "为什么要出现一个身穿军装的高大男人？就像一片树叶飘入了树林，【他】走到了我的家人中间。"
    assert example.options == ("否", "是") and example.answer_text == "否"


def test_csl_keywords(data_root):
    example = by_source(load("csl", "train", data_root), "CLUEbenchmark+FewCLUE/datasets/csl/train_0.json:1")
    assert example.passage.startswith("摘要：无线传感器网络中实现隐私保护通用近似查询是具有挑战性的问题．")
    assert example.passage.endswith("\n关键词：无线传感器网络，数据聚集，物联网，近似查询")
    assert example.texts[1] == "无线传感器网络，数据聚集，物联网，近似查询" and example.answer_text == "是"


def test_chnsenticorp_and_book_review(data_root):
    dev = load("chnsenticorp", "dev", data_root)
    example = by_source(dev, "dbiir+UER-py/datasets/chnsenticorp/dev.tsv:2")
    assert example.passage.startswith("這間酒店環境和服務態度亦算不錯") and example.answer_text == "正面"
    book = by_source(load("book_review", "test", data_root), "dbiir+UER-py/datasets/book_review/test.tsv:2")
    assert book.passage == "我惊了，这些评论的人真的都看了这书吗？还是都是托....." and book.answer_text == "负面"


def test_chnsenticorp_cleaning_matches_an_independent_count(data_root):
    # Independently: distinct texts whose every copy carries the same label.
    for split, expected in (("train", 8218), ("dev", 1177), ("test", 1177)):
        labels = defaultdict(set)
        path = data_root / f"dbiir+UER-py/datasets/chnsenticorp/{split}.tsv"
        for line in path.read_text(encoding="utf-8").split("\n")[1:]:
            if line.strip():
                label, text = line.split("\t")
                labels["".join(text.split())].add(label)
        assert sum(1 for v in labels.values() if len(v) == 1) == expected == len(load("chnsenticorp", split, data_root))


def test_ewect_emotions(data_root):
    example = by_source(load("ewect", "dev", data_root), "dbiir+UER-py/datasets/smp2020-ewect/usual/dev.tsv:2")
    assert example.passage == "所以注定我这辈子是做不了商人妈蛋" and example.answer_text == "愤怒"
    assert example.options == ("中性", "愤怒", "高兴", "悲伤", "恐惧", "惊讶")
    labels = [json.loads(line) for line in (data_root / "dbiir+UER-py/datasets/smp2020-ewect/usual/labels.json").open()]
    assert [r["label_desc"] for r in labels] == ["neutral", "angry", "happy", "sad", "fear", "surprise"]


def test_cblue_records(data_root):
    ctc = load("chip_ctc", "dev", data_root)
    first = by_source(ctc, "Sherlock-coder+CBLUE/data/CHIP-CTC/CHIP-CTC_dev.json:0")
    # the raw text starts with a space, which is stripped
    assert (
        first.passage
        == "4）既往患有骨髓增生异常综合征（Myelodysplastic syndrome，MDS）的患者，或者未定型的急性白血病患者。"
    )
    assert first.answer_text == "疾病"
    oral = by_source(ctc, "Sherlock-coder+CBLUE/data/CHIP-CTC/CHIP-CTC_dev.json:3")
    assert oral.answer_text == "口腔相关"
    qqr = by_source(load("kuake_qqr", "dev", data_root), "Sherlock-coder+CBLUE/data/KUAKE-QQR/KUAKE-QQR_dev.json:0")
    assert qqr.texts == ("茴香是发物吗", "茴香怎么吃？") and qqr.answer_text == "范围更大或无关"
    qtr = by_source(load("kuake_qtr", "dev", data_root), "Sherlock-coder+CBLUE/data/KUAKE-QTR/KUAKE-QTR_dev.json:1")
    assert qtr.texts == ("产前最后一次检查什么时候做", "请问产前检查最后一次B超什么时候做比较好")
    assert qtr.answer_text == "部分匹配"
    qic = by_source(load("kuake_qic", "dev", data_root), "Sherlock-coder+CBLUE/data/KUAKE-QIC/KUAKE-QIC_dev.json:2")
    assert qic.passage == "什么叫痔核脱出？什么叫外痔？" and qic.answer_text == "疾病表述"


def test_chip_ctc_label_words_follow_category_xlsx(data_root):
    sheet = {
        row["Label Name"]: row["Chinese Label Name"]
        for _, row in read_xlsx(data_root / "Sherlock-coder+CBLUE/data/CHIP-CTC/category.xlsx")
    }
    from modprompt.data.builtin.cblue import CTC

    ours = {raw: CTC.words[i] for raw, i in CTC.index_of.items()}
    shortened = {"Symptom": "症状", "Sign": "体征", "Multiple": "多类别"}  # documented in cblue.py
    assert set(ours) == set(sheet) and len(ours) == 44
    assert {k: v for k, v in ours.items() if k not in shortened} == {
        k: v for k, v in sheet.items() if k not in shortened
    }
    assert sheet["Symptom"].startswith("症状") and sheet["Sign"].startswith("体征") and "多类别" in sheet["Multiple"]
    assert {k: ours[k] for k in shortened} == shortened


def test_fewclue_label_words_follow_the_label_files(data_root):
    from modprompt.data.builtin.fewclue import CSLDCP, IFLYTEK, TNEWS

    root = data_root / "CLUEbenchmark+FewCLUE/datasets"
    zh = [json.loads(line) for line in (root / "tnews/label_index2en2zh.json").open(encoding="utf-8") if line.strip()]
    assert {r["label"]: r["label_zh"] for r in zh} == {raw: TNEWS.words[i] for raw, i in TNEWS.index_of.items()}
    names = (root / "csldcp/labels_all.txt").read_text(encoding="utf-8").split()
    assert list(CSLDCP.words) == names
    des = {}
    for split in ("train_few_all", "dev_few_all", "test_public"):
        for line in (root / f"iflytek/{split}.json").open(encoding="utf-8"):
            record = json.loads(line)
            des[str(record["label"])] = record["label_des"]
    assert len(des) == 119 and des == {raw: IFLYTEK.words[i] for raw, i in IFLYTEK.index_of.items()}


def test_relation_label_words_follow_relation2id(data_root):
    from modprompt.data.builtin.nre import FINRE, SANWEN

    for labels, folder in ((FINRE, "FinRE"), (SANWEN, "SanWen")):
        lines = (data_root / f"thunlp+Chinese_NRE/data/{folder}/relation2id.txt").read_text(encoding="utf-8").split()
        relations = lines[0::2]
        assert [labels.index_of[r] for r in relations] == list(range(len(relations)))
    assert FINRE.words[0] == SANWEN.words[0] == "无关系" and len(FINRE.words) == 44 and len(SANWEN.words) == 10


def test_finre_and_sanwen_records(data_root):
    finre = by_source(load("finre", "dev", data_root), "thunlp+Chinese_NRE/data/FinRE/valid.txt:1")
    assert finre.query == "句中「深圳光电」与「京东方」是什么关系？" and finre.answer_text == "分析"
    assert finre.passage.startswith("近日,在“<N>深圳光电显示周暨深圳彩电节”期间") and finre.texts == (finre.passage,)
    reverse = by_source(load("finre", "dev", data_root), "thunlp+Chinese_NRE/data/FinRE/valid.txt:3")
    assert reverse.query == "句中「京东方」与「深圳光电」是什么关系？" and reverse.answer_text == "被分析"
    sanwen = by_source(load("sanwen", "dev", data_root), "thunlp+Chinese_NRE/data/SanWen/valid.txt:1")
    assert sanwen.query == "句中「我的许多花友们」与「我」是什么关系？" and sanwen.answer_text == "社交"
    assert sanwen.passage == "然而当冬天不期而至，我的许多花友们没有道别就消失了踪影!"  # the CRLF is gone


def test_finre_keeps_multi_label_triples_but_not_their_unknown_copy(data_root):
    relations = defaultdict(set)
    for example in load("finre", "train", data_root):
        relations[(example.query, example.passage)].add(example.answer_text)
    # raw lines 1 and 5: the same triple as unknown and as 合并
    assert relations[("句中「东方航空」与「上航」是什么关系？", "东方航空AH股临时停牌传将与上航合并")] == {"合并"}
    multi = [r for r in relations.values() if len(r) > 1]
    assert multi and all("无关系" not in r for r in multi)


def test_ccpm_and_cmrc(data_root):
    ccpm = by_source(load("ccpm", "dev", data_root), "THUNLP-AIPoet+CCPM/valid.jsonl:1")
    assert ccpm.passage == "昏暗的灯熄灭了又被重新点亮。"
    assert ccpm.options == ("渔灯灭复明", "残灯灭又然", "残灯暗复明", "残灯灭又明") and ccpm.answer_text == "残灯灭又明"
    cmrc = by_source(
        load("cmrc2018", "train", data_root), "ymcui+cmrc2018/squad-style-data/cmrc2018_dev.json:DEV_0_QUERY_0"
    )
    assert cmrc.query == "《战国无双3》是由哪两个公司合作开发的？" and cmrc.options == ()
    assert cmrc.span == (11, 21) and cmrc.answer_text == "光荣和ω-force" and cmrc.answers == ("光荣和ω-force",)
    assert cmrc.texts == (cmrc.query, cmrc.passage)


def test_cmrc_misaligned_answers_are_reanchored(data_root):
    fixed = {}
    for split, name in (("train", "cmrc2018_dev.json"), ("dev", "cmrc2018_trial.json")):
        document = json.loads((data_root / f"ymcui+cmrc2018/squad-style-data/{name}").read_text(encoding="utf-8"))
        raw = {
            qa["id"]: (paragraph["context"], qa["answers"][0])
            for article in document["data"]
            for paragraph in article["paragraphs"]
            for qa in paragraph["qas"]
        }
        bad = {i for i, (c, a) in raw.items() if c[a["answer_start"] : a["answer_start"] + len(a["text"])] != a["text"]}
        examples = {e.source.rsplit(":", 1)[1]: e for e in load("cmrc2018", split, data_root)}
        assert all(e.passage[e.span[0] : e.span[1]] == e.answers[0] for e in examples.values())
        fixed[split] = {i for i in bad if i in examples and examples[i].span[0] != raw[i][1]["answer_start"]}
    assert (len(fixed["train"]), len(fixed["dev"])) == (3, 5)
    trial = {e.source.rsplit(":", 1)[1]: e for e in load("cmrc2018", "dev", data_root)}
    assert trial["TRIAL_210_QUERY_0"].span == (13, 17) and trial["TRIAL_210_QUERY_0"].answer_text == "俗名龙尖"


def test_sentence_pair_upstream_records(data_root):
    afqmc = by_source(load("afqmc", "train", data_root), "zejunwang1+CSTS/AFQMC/train.txt:1")
    assert afqmc.texts == ("蚂蚁借呗等额还款可以换成先息后本吗", "借呗有先息到期还本吗") and afqmc.answer_text == "不同"
    pawsx = by_source(load("pawsx", "train", data_root), "zejunwang1+CSTS/PAWS-X/dev_2k.tsv:2")
    assert pawsx.texts[0].startswith("Four Rivers 委员会与 Audubon") and pawsx.answer_text == "相同"
    stsb = by_source(load("stsb", "dev", data_root), "zejunwang1+CSTS/Chinese-STS-B/sts-b-dev.txt:2")
    assert (
        stsb.texts == ("一个小孩在骑马。", "孩子在骑马。") and stsb.answer_text == "基本相同" and len(stsb.options) == 6
    )
    cmnli = by_source(load("cmnli", "train", data_root), "zejunwang1+CSTS/Chinese-MNLI/dev.txt:1")
    assert cmnli.texts == ("新的权利已经足够好了", "每个人都很喜欢最新的福利") and cmnli.answer_text == "中立"
    snli = by_source(load("snli", "test", data_root), "zejunwang1+CSTS/Chinese-SNLI/test.txt:1")
    assert snli.texts[1] == "一个男孩在操场上。" and snli.answer_text == "蕴含"
    oppo = by_source(load("oppo", "train", data_root), "zejunwang1+CSTS/OPPO-xiaobu/dev.txt:1")
    assert oppo.texts == ("什么音乐是你知道的", "网易云音乐关闭") and oppo.answer_text == "不同"


def test_single_text_upstream_records(data_root):
    thuc = by_source(
        load("thucnews", "dev", data_root), "649453932+Chinese-Text-Classification-Pytorch/THUCNews/data/dev.txt:1"
    )
    assert thuc.passage == "体验2D巅峰 倚天屠龙记十大创新概览" and thuc.answer_text == "游戏"
    ctg = by_source(load("csl_category", "dev", data_root), "ydli-ai+CSL/benchmark/cls_ctg/dev.tsv:2")
    assert ctg.passage == "水运工程施工项目全过程管理的有效性探索" and ctg.answer_text == "工学"
    waimai = [e for split in ("train", "dev", "test") for e in load("waimai", split, data_root)]
    first = by_source(waimai, "SophonPlus+ChineseNlpCorpus/datasets/waimai_10k/waimai_10k.csv:2")
    assert first.passage == "很快，好吃，味道足，量大" and first.answer_text == "正面"


def test_thucnews_train_shares_no_title_with_dev_and_test(data_root):
    evaluation = {e.passage for split in ("dev", "test") for e in load("thucnews", split, data_root)}
    train = load("thucnews", "train", data_root)
    assert all(e.source.startswith("649453932+Chinese-Text-Classification-Pytorch/THUCNews/saved_dict/") for e in train)
    assert not evaluation & {e.passage for e in train}


def test_hashed_splits_follow_the_md5_of_the_text(data_root):
    for split in ("train", "dev", "test"):
        for example in load("cinlid", split, data_root)[:2000]:
            digest = hashlib.md5("\t".join("".join(t.split()) for t in example.texts).encode()).digest()
            bucket = int.from_bytes(digest[:4], "big") % 100
            assert split == ("test" if bucket < 5 else "dev" if bucket < 10 else "train")


def test_online_shopping_tasks_share_the_split(data_root):
    per_category = {
        e.source: split
        for name in ("shopping_books", "shopping_hotel", "shopping_heater")
        for split in ("train", "dev", "test")
        for e in load(name, split, data_root)
    }
    category = {
        e.source: (split, e.answer_text)
        for split in ("train", "dev", "test")
        for e in load("shopping_category", split, data_root)
    }
    shared = per_category.keys() & category.keys()
    assert len(shared) > 10000 and all(per_category[s] == category[s][0] for s in shared)
    first = "SophonPlus+ChineseNlpCorpus/datasets/online_shopping_10_cats/online_shopping_10_cats.zip[online_shopping_10_cats.csv]:2"
    assert category[first][1] == "书籍"
    [book] = [e for s in ("train", "dev", "test") for e in load("shopping_books", s, data_root) if e.source == first]
    assert book.passage.startswith("做父母一定要有刘墉这样的心态") and book.answer_text == "正面"  # the BOM is gone
    assert book.query == "这条书籍评论的情感是？"
    assert get_task("shopping_category").label_words == (
        "书籍",
        "平板",
        "手机",
        "水果",
        "洗发水",
        "热水器",
        "蒙牛",
        "衣服",
        "计算机",
        "酒店",
    )


# ---- cleaning rules on synthetic examples ------------------------------------------------------------------


def ex(passage: str, label: int, options=("负面", "正面"), query: str = "q") -> MRCExample:
    return MRCExample("t", query, passage, options, label, texts=(passage,), source="f:1")


def test_clean_drops_empty_duplicates_and_conflicts_and_logs_counts(caplog):
    examples = [ex("好", 1), ex(" 好 ", 1), ex("差", 0), ex("差", 1), ex("  ", 0), Drop("no gold label"), ex("一般", 0)]
    with caplog.at_level(logging.INFO):
        kept = clean(examples, "t/train")
    assert [e.passage for e in kept] == ["好", "一般"]
    [message] = [r.getMessage() for r in caplog.records]
    assert "t/train: kept 2 of 7" in message
    assert "conflicting labels: 2" in message and "exact duplicate: 1" in message
    assert "empty text: 1" in message and "no gold label: 1" in message


def test_clean_relation_keeps_real_relations_and_drops_the_null_copy():
    options = ("无关系", "合作", "签约")
    examples = [
        ex("甲乙签约", 0, options),
        ex("甲乙签约", 1, options),
        ex("甲乙签约", 2, options),
        ex("丙丁", 0, options),
    ]
    kept = clean(examples, "t", null_option="无关系")
    assert [(e.passage, e.answer_text) for e in kept] == [
        ("甲乙签约", "合作"),
        ("甲乙签约", "签约"),
        ("丙丁", "无关系"),
    ]


def test_clean_distinguishes_queries_and_options():
    kept = clean(
        [ex("文", 0, query="q1"), ex("文", 1, query="q2"), ex("文", 0, ("a", "b")), ex("文", 1, ("c", "d"))], "t"
    )
    assert len(kept) == 4


def test_hashed_split_is_stable_and_ignores_whitespace():
    assert hashed_split(["很好吃"]) == hashed_split([" 很 好吃\n"])
    shares = defaultdict(int)
    for i in range(4000):
        shares[hashed_split([f"评论{i}"])] += 1
    assert 150 < shares["test"] < 260 and 150 < shares["dev"] < 260

"""Leakage filter: upstream examples whose texts occur in downstream data are dropped."""

from __future__ import annotations

import json
import unicodedata
from collections import defaultdict

import pytest

from modprompt.data.leakage import MIN_SHARED_CHARS, DownstreamIndex, downstream_index, drop_leaked
from modprompt.data.mrc import MRCExample, Role
from modprompt.data.registry import leakage_report, load_examples, task_table
from modprompt.data.task import all_tasks, get_task

#: examples dropped per upstream task over all its splits (every task not listed drops none)
LEAKED = {
    "chnsenticorp_htl": 3095,
    "shopping_books": 3021,
    "shopping_computer": 3681,
    "shopping_hotel": 2851,
    "shopping_category": 9567,
    "shopping_tablet": 4,
    "shopping_fruit": 1,
    "shopping_heater": 2,
    "shopping_clothes": 3,
    "waimai": 1,
    "book_review": 14,
    "oppo": 94,
    "csl": 10,
    "kuake_qqr": 1,
}


def clean_key(text: str) -> str:
    """The form cleaning compares inputs in when it removes conflicting labels (whitespace-free)."""
    return "".join(text.replace("\ufeff", "").replace("\u200b", "").split())


def norm(text: str) -> str:
    """Letters, marks and digits of the NFKC, case-folded text: what leakage compares."""
    return "".join(ch for ch in unicodedata.normalize("NFKC", text).casefold() if unicodedata.category(ch)[0] in "LMN")


@pytest.fixture(scope="module")
def raw_downstream(data_root) -> tuple[set[str], set[frozenset[str]]]:
    """Downstream texts and pairs read straight from the raw files, without modprompt's converters.

    As in modprompt, an input that carries conflicting labels within a file is not downstream data (cleaning
    removes it; only ChnSentiCorp has such inputs).
    """
    inputs: list[dict[tuple[str, ...], set]] = []
    fields = {"eprstmt": ["sentence"], "bustm": ["sentence1", "sentence2"], "ocnli": ["sentence1", "sentence2"],
              "csldcp": ["content"], "tnews": ["sentence"], "iflytek": ["sentence"], "chid": ["content"]}  # fmt: skip
    stems = [f"{s}_{i}" for s in ("train", "dev") for i in range(5)] + ["train_few_all", "dev_few_all", "test_public"]
    for task, keys in fields.items():
        for stem in stems:
            labels = defaultdict(set)
            path = data_root / f"CLUEbenchmark+FewCLUE/datasets/{task}/{stem}.json"
            for line in path.read_text(encoding="utf-8").split("\n"):
                if line.strip():
                    record = json.loads(line)
                    labels[tuple(clean_key(record[k]) for k in keys)].add(str(record.get("answer", record.get("label"))))
            inputs.append(labels)
    for split in ("train", "dev", "test"):
        labels = defaultdict(set)
        path = data_root / f"dbiir+UER-py/datasets/chnsenticorp/{split}.tsv"
        for line in path.read_text(encoding="utf-8").split("\n")[1:]:
            if line.strip():
                label, text = line.split("\t")
                labels[(clean_key(text),)].add(label)
        inputs.append(labels)
    texts = {norm(t) for labels in inputs for key, seen in labels.items() if len(seen) == 1 for t in key}
    pairs = {
        frozenset(map(norm, key)) for labels in inputs for key, seen in labels.items() if len(seen) == 1 and len(key) == 2
    }
    return texts, pairs


def test_leakage_report_counts(data_root):
    report = leakage_report(data_root)
    assert set(report) == {t.name for t in all_tasks(Role.UPSTREAM)}
    assert {name: n for name, n in report.items() if n} == LEAKED


@pytest.mark.parametrize(
    "name", ["shopping_computer", "shopping_books", "shopping_hotel", "shopping_category", "chnsenticorp_htl"]
)
def test_single_text_drops_match_an_independent_count(name, data_root, raw_downstream):
    texts, _ = raw_downstream
    task = get_task(name)
    expected = sum(norm(e.passage) in texts for split in task.splits for e in task.load(split, data_root))
    assert expected == LEAKED[name]
    assert (
        sum(len(load_examples(name, s, data_root)) for s in task.splits)
        == sum(len(task.load(s, data_root)) for s in task.splits) - expected
    )


@pytest.mark.parametrize("name", ["oppo", "csl", "kuake_qqr", "afqmc", "cmnli"])
def test_pair_drops_match_an_independent_count(name, data_root, raw_downstream):
    texts, pairs = raw_downstream
    task = get_task(name)
    expected = 0
    for split in task.splits:
        for example in task.load(split, data_root):
            first, second = (norm(t) for t in example.texts)
            long_shared = any(len(t) >= 10 and t in texts for t in (first, second))
            expected += frozenset((first, second)) in pairs or long_shared
    assert expected == LEAKED.get(name, 0)


def test_online_shopping_loses_the_chnsenticorp_texts(data_root, raw_downstream):
    texts, _ = raw_downstream
    kept = load_examples("shopping_computer", "train", data_root)
    assert kept and not [e for e in kept if norm(e.passage) in texts]
    # what is left of the computer reviews is a small remainder: ChnSentiCorp took most of them
    assert sum(len(load_examples("shopping_computer", s, data_root)) for s in ("train", "dev", "test")) == 3974 - 3681


def test_downstream_tasks_are_not_filtered(data_root):
    assert len(load_examples("chnsenticorp", "test", data_root)) == len(
        get_task("chnsenticorp").load("test", data_root)
    )
    assert len(load_examples("eprstmt", "test", data_root)) == 610


def test_the_index_is_cached_per_data_root(data_root):
    assert downstream_index(data_root) is downstream_index(str(data_root))
    index = downstream_index(data_root)
    for split in get_task("bustm").splits:
        for example in get_task("bustm").load(split, data_root):
            assert frozenset(norm(t) for t in example.texts) in index.text_sets


def test_task_table_reports_counts_after_leakage(data_root):
    rows = {r["name"]: r for r in task_table(data_root)}
    assert len(rows) == 43
    computer = rows["shopping_computer"]
    assert computer["leaked"] == 3681 and sum(computer["splits"].values()) == 3974 - 3681
    assert computer["kind"] == "classification" and computer["role"] == "upstream" and computer["num_options"] == 2
    assert rows["chnsenticorp"]["leaked"] is None and rows["chnsenticorp"]["splits"] == {
        "train": 8218,
        "dev": 1177,
        "test": 1177,
    }
    assert rows["cmrc2018"]["num_options"] is None and rows["cmrc2018"]["licence"] == "CC BY-SA 4.0"
    assert rows["afqmc"]["source"] == "zejunwang1/CSTS"


# ---- the rule on synthetic examples ------------------------------------------------------------------------


def single(text: str) -> MRCExample:
    return MRCExample("t", "q", text, ("否", "是"), 0, texts=(text,))


def pair(a: str, b: str) -> MRCExample:
    return MRCExample("t", "q", f"{a}\n{b}", ("否", "是"), 0, texts=(a, b))


LONG = "这家酒店的早餐非常丰富而且服务周到"  # 17 characters


@pytest.fixture
def index() -> DownstreamIndex:
    return DownstreamIndex.of([single("好评"), single(LONG), pair("你好", "您好"), pair("谢谢", LONG + "！")])


def test_single_text_equal_to_any_downstream_text_leaks(index):
    assert index.leaks(single("好评")) and index.leaks(single(" 好 评\n"))  # whitespace is ignored
    assert index.leaks(single("你好"))  # a text of a downstream pair counts too
    assert index.leaks(single("好评！")) and index.leaks(single("好评!!"))  # so is punctuation, full- or half-width
    assert not index.leaks(single("差评"))


def test_copies_that_differ_in_width_case_or_punctuation_leak():
    index = DownstreamIndex.of([single("房间很大，WiFi 信号好。"), single("！！")])
    assert index.leaks(single("房间很大,wifi信号好"))  # half-width comma, lower case, no spaces or full stop
    assert index.leaks(single("房间很大，ＷｉＦｉ信号好"))  # full-width Latin letters (NFKC)
    assert not index.leaks(single("房间很小，WiFi 信号好。"))
    assert not index.leaks(single("？"))  # nothing left to compare: never a leak


def test_pair_leaks_when_the_pair_matches_in_either_order(index):
    assert index.leaks(pair("你好", "您好")) and index.leaks(pair("您好", "你好"))
    assert not index.leaks(pair("你好", "再见"))  # a short shared text is not enough


def test_pair_leaks_when_a_long_text_is_shared(index):
    assert len(LONG) >= MIN_SHARED_CHARS
    assert index.leaks(pair(LONG, "完全不同的句子"))
    assert index.leaks(pair("别的", LONG + "！"))
    assert not index.leaks(pair(LONG[:9], "别的"))


def test_drop_leaked_counts(index):
    kept, dropped = drop_leaked([single("好评"), single("差评"), pair("您好", "你好")], index, "t/train")
    assert dropped == 2 and [e.passage for e in kept] == ["差评"]

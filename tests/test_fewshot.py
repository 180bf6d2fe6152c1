"""Few-shot splits: the FewCLUE file mapping, and seeded k-per-label sampling for other tasks."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import pytest

from modprompt.data.fewshot import fewshot_splits
from modprompt.data.registry import load_examples
from modprompt.data.spec import load_spec

OWN_TASK = Path(__file__).resolve().parents[1] / "examples" / "own_task" / "kefu_intent.json"




def sources(examples) -> list[str]:
    return [e.source for e in examples]


def texts(examples) -> set[tuple[str, ...]]:
    return {tuple("".join(t.split()) for t in e.texts) for e in examples}


@pytest.mark.parametrize("name", ["eprstmt", "tnews", "chid"])
def test_fewclue_seed_reads_the_official_files(name, data_root):
    train, dev, test = fewshot_splits(name, 3, data_root)
    assert sources(train) == sources(load_examples(name, "train_3", data_root))
    assert sources(dev) == sources(load_examples(name, "dev_3", data_root))
    assert sources(test) == sources(load_examples(name, "test", data_root))
    assert {s.rsplit(":", 1)[0].rsplit("/", 1)[1] for s in sources(train)} == {"train_3.json"}
    assert {s.rsplit(":", 1)[0].rsplit("/", 1)[1] for s in sources(test)} == {"test_public.json"}


def test_fewclue_seed_outside_the_five_official_ones(data_root):
    with pytest.raises(ValueError, match="seeds 0..4"):
        fewshot_splits("bustm", 5, data_root)


def test_chnsenticorp_k_per_label_and_disjointness(data_root):
    train, dev, test = fewshot_splits("chnsenticorp", 0, data_root, k_per_label=16)
    assert Counter(e.answer_text for e in train) == {"正面": 16, "负面": 16}
    assert Counter(e.answer_text for e in dev) == {"正面": 16, "负面": 16}
    assert not set(sources(train)) & set(sources(dev))
    assert not texts(train) & texts(dev)
    assert not (texts(train) | texts(dev)) & texts(test)  # ChnSentiCorp shares texts between train and test
    assert all(s.startswith("dbiir+UER-py/datasets/chnsenticorp/train.tsv:") for s in sources(train + dev))
    assert sources(test) == sources(load_examples("chnsenticorp", "test", data_root)) and len(test) == 1177
    assert [e.label for e in train] != sorted(e.label for e in train)  # shuffled, not in label blocks


def test_sampling_is_deterministic_per_seed_and_differs_across_seeds(data_root):
    first = fewshot_splits("chnsenticorp", 1, data_root, k_per_label=8)
    again = fewshot_splits("chnsenticorp", 1, data_root, k_per_label=8)
    other = fewshot_splits("chnsenticorp", 2, data_root, k_per_label=8)
    assert [sources(part) for part in first] == [sources(part) for part in again]
    assert set(sources(first[0])) != set(sources(other[0])) and set(sources(first[1])) != set(sources(other[1]))
    assert sources(first[2]) == sources(other[2])  # the test split is the same for every seed


def test_user_task_sampling_and_short_labels(caplog):
    load_spec(OWN_TASK)
    train, dev, test = fewshot_splits("kefu_intent", 0, ".", k_per_label=4)
    assert Counter(e.answer_text for e in train) == {w: 4 for w in ("退款", "物流", "改地址", "发票", "商品咨询")}
    assert len(dev) == 20 and len(test) == 20 and not texts(train) & texts(dev)
    with caplog.at_level(logging.WARNING):
        train, dev, _ = fewshot_splits("kefu_intent", 0, ".", k_per_label=8)  # 10 per label: 5 + 5
    assert Counter(e.answer_text for e in train)["退款"] == 5 and Counter(e.answer_text for e in dev)["退款"] == 5
    assert any("only 10 examples for '退款'; train gets 5 and dev 5" in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError, match="k_per_label"):
        fewshot_splits("kefu_intent", 0, ".", k_per_label=0)


def test_task_without_label_set_draws_k_in_all(tmp_path):
    records = [{"passage": f"第{i}段文字", "options": ["甲", "乙", "丙"], "answer": i % 3} for i in range(30)]
    (tmp_path / "train.jsonl").write_text(
        "\n".join(json.dumps(r, ensure_ascii=False) for r in records), encoding="utf-8"
    )
    spec = {"name": "mc_demo", "instruction": "选哪个？", "files": {"train": "train.jsonl"}, "text_fields": ["passage"],
            "options_field": "options", "answer_field": "answer"}  # fmt: skip
    (tmp_path / "spec.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    load_spec(tmp_path / "spec.json")
    train, dev, test = fewshot_splits("mc_demo", 7, ".", k_per_label=6)
    assert len(train) == 6 and len(dev) == 6 and test == [] and not set(sources(train)) & set(sources(dev))


def test_a_resolved_task_is_passed_down_not_looked_up_again(data_root, monkeypatch):
    import modprompt.data.task as task_module

    task = task_module.get_task("chnsenticorp")
    expected = fewshot_splits("chnsenticorp", 0, data_root, 4)
    monkeypatch.setattr(task_module, "_REGISTRY", {})  # any lookup by name now fails
    assert [sources(split) for split in fewshot_splits(task, 0, data_root, 4)] == [sources(s) for s in expected]
    with pytest.raises(KeyError, match="unknown task 'chnsenticorp'"):
        fewshot_splits("chnsenticorp", 0, data_root, 4)

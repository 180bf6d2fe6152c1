"""Relation classification from thunlp/Chinese_NRE: FinRE (financial news) and SanWen (literature).

Each record is ``head	tail	relation	sentence``; FinRE separates records by blank lines, SanWen has one
record per line (CRLF). The passage is the sentence, the query names both entities
(``句中「东方航空」与「上航」是什么关系？``) and the options are all relations of the task, with ``unknown`` as
无关系 and SanWen's English relations in Chinese (Create 创作, Use 使用, Near 邻近, Social 社交, Located 位于,
Ownership 拥有, General-Special 上下位, Family 亲属, Part-Whole 部分与整体). Splits: train, dev (``valid``),
test. Sentences keep the corpus' ``<N>`` number placeholder.

Both data sets are multi-label: one (head, tail, sentence) may carry several relations. Cleaning keeps every
distinct real relation as its own example and drops the ``unknown`` copies of such triples.
"""

from __future__ import annotations

from pathlib import Path

from modprompt.data.convert import LabelSet, cached, load_files, source_of, text_field, tidy
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import DataError, read_blocks, read_delimited
from modprompt.data.task import Task, register

REPO = "thunlp/Chinese_NRE"
ROOT = "thunlp+Chinese_NRE/data"
NULL = "无关系"
QUERY = "句中「{head}」与「{tail}」是什么关系？"
INSTRUCTION = QUERY.format(head="实体一", tail="实体二")
COLUMNS = ("head", "tail", "relation", "sentence")

#: relation2id.txt order
FINRE = LabelSet.of(
    {"unknown": NULL}
    | {
        r: r
        for r in (
            "注资 拥有 纠纷 自己 增持 重组 买资 签约 持股 交易 入股 转让 成立 分析 合作 帮助 发行 商讨 合并 竞争 订单 减持 合资 收购 "
            "借壳 欠款 被发行 被转让 被成立 被注资 被持股 被拥有 被收购 被帮助 被借壳 被买资 被欠款 被增持 拟收购 被减持 被分析 被入股 "
            "被拟收购"
        ).split()
    }
)
SANWEN = LabelSet.of(
    {
        "unknown": NULL, "Create": "创作", "Use": "使用", "Near": "邻近", "Social": "社交", "Located": "位于",
        "Ownership": "拥有", "General-Special": "上下位", "Family": "亲属", "Part-Whole": "部分与整体",
    }
)  # fmt: skip


def _finre_record(path: Path, where: int, lines: list[str]) -> dict[str, str]:
    fields = lines[0].split("\t") if len(lines) == 1 else []
    if len(fields) != len(COLUMNS):
        raise DataError(
            path, where, f"expected one line of {len(COLUMNS)} tab-separated fields, got {len(lines)} line(s)"
        )
    return dict(zip(COLUMNS, fields, strict=True))


def _read_sanwen(path: Path, *, lenient: bool):
    return read_delimited(path, fieldnames=COLUMNS, lenient=lenient)


def _converter(name: str, labels: LabelSet, blocks: bool):
    def make(path: Path, rel: str):
        def convert(where: int, record) -> MRCExample:
            if blocks:
                record = _finre_record(path, where, record)
            head, tail, sentence = (tidy(text_field(record, k, path, where)) for k in ("head", "tail", "sentence"))
            label = labels.index(record["relation"], path, where)
            query = QUERY.format(head=head, tail=tail)
            return MRCExample(
                name, query, sentence, labels.words, label, texts=(sentence,), source=source_of(rel, where)
            )

        return convert

    return make


def _register(name: str, folder: str, labels: LabelSet, blocks: bool, licence: str, description: str) -> None:
    read = read_blocks if blocks else _read_sanwen
    make = _converter(name, labels, blocks)

    def loader(split: str, stem: str):
        rel = f"{ROOT}/{folder}/{stem}.txt"
        return cached(
            lambda root, lenient: load_files(
                f"{name}/{split}", [(root / rel, rel)], read, make, lenient, null_option=NULL
            )
        )

    stems = {"train": "train", "dev": "valid", "test": "test"}
    register(
        Task(
            name, TaskKind.RELATION, Role.UPSTREAM, INSTRUCTION, {s: loader(s, f) for s, f in stems.items()},
            labels.words,
            source=REPO, licence=licence, files=tuple(f"{ROOT}/{folder}/{f}.txt" for f in stems.values()),
            description=description,
        )
    )  # fmt: skip


_register("finre", "FinRE", FINRE, True, "MIT", "金融新闻关系抽取，44 种关系（FinRE）")
_register("sanwen", "SanWen", SANWEN, False, "MIT", "散文实体关系分类，10 种关系（SanWen）")

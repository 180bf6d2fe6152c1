"""Sentiment and emotion tasks from SophonPlus/ChineseNlpCorpus and dbiir/UER-py.

SophonPlus (CSV, no official split; split by :func:`~modprompt.data.convert.hashed_split`, 90/5/5):
``waimai`` (waimai_10k), ``chnsenticorp_htl`` (ChnSentiCorp_htl_all) and online_shopping_10_cats, read from
inside its zip, as ten per-category sentiment tasks ``shopping_<category>`` plus the ten-way
``shopping_category`` (which product category a review is about). The per-category tasks and the category
task share the hashed split, so a review is in the same split in all of them.

UER-py (TSV with header ``label	text_a``, official train/dev/test): ``chnsenticorp`` (downstream; few-shot
train/dev are sampled from its train split, see ``modprompt.data.fewshot``), ``book_review`` and ``ewect``
(SMP2020-EWECT "usual", six emotions: neutral, angry, happy, sad, fear, surprise -> 中性 愤怒 高兴 悲伤 恐惧 惊讶).

Label ``1``/``0`` is positive/negative everywhere: 正面/负面.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from modprompt.data.convert import POLARITY, LabelSet, cached, hashed_splits, load_files, option_converter
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import convert_records, read_delimited
from modprompt.data.task import Task, register

SOPHON = "SophonPlus/ChineseNlpCorpus"
SOPHON_ROOT = "SophonPlus+ChineseNlpCorpus/datasets"
UER = "dbiir/UER-py"
UER_ROOT = "dbiir+UER-py/datasets"
UER_LICENCE = "Apache-2.0"

EMOTION = LabelSet.of({"0": "中性", "1": "愤怒", "2": "高兴", "3": "悲伤", "4": "恐惧", "5": "惊讶"})

#: category in the file -> task name suffix
SHOPPING_CATEGORIES = {
    "书籍": "books", "平板": "tablet", "手机": "phone", "水果": "fruit", "洗发水": "shampoo",
    "热水器": "heater", "蒙牛": "mengniu", "衣服": "clothes", "计算机": "computer", "酒店": "hotel",
}  # fmt: skip
SHOPPING_CATEGORY = LabelSet.of({c: c for c in SHOPPING_CATEGORIES})
SHOPPING_ZIP = f"{SOPHON_ROOT}/online_shopping_10_cats/online_shopping_10_cats.zip"
SHOPPING_MEMBER = "online_shopping_10_cats.csv"


def _csv(path: Path, *, lenient: bool, member: str | None = None):
    return read_delimited(path, delimiter=",", header=True, member=member, lenient=lenient)


def _uer_tsv(path: Path, *, lenient: bool):
    return read_delimited(path, header=True, lenient=lenient)


def _sophon_task(name: str, stem: str, query: str, description: str) -> None:
    rel = f"{SOPHON_ROOT}/{stem}/{stem}.csv"

    def convert_all(root: Path, lenient: bool) -> list:
        path = root / rel
        convert = option_converter(name, query, POLARITY, path, rel, ("review",), "label")
        return convert_records(path, _csv(path, lenient=lenient), convert, lenient=lenient)

    splits = hashed_splits(name, convert_all)
    register(
        Task(
            name,
            TaskKind.CLASSIFICATION,
            Role.UPSTREAM,
            query,
            splits,
            POLARITY.words,
            source=SOPHON,
            files=(rel,),
            description=description,
        )
    )


@lru_cache(maxsize=None)
def _shopping_rows(root: Path, lenient: bool) -> tuple:
    return tuple(_csv(root / SHOPPING_ZIP, member=SHOPPING_MEMBER, lenient=lenient))


def _shopping_task(
    name: str, query: str, labels: LabelSet, label_key: str, category: str | None, description: str
) -> None:
    rel = f"{SHOPPING_ZIP}[{SHOPPING_MEMBER}]"

    def convert_all(root: Path, lenient: bool) -> list:
        rows = [(where, r) for where, r in _shopping_rows(root, lenient) if category is None or r["cat"] == category]
        path = root / SHOPPING_ZIP
        convert = option_converter(name, query, labels, path, rel, ("review",), label_key)
        return convert_records(f"{path}[{SHOPPING_MEMBER}]", rows, convert, lenient=lenient)

    splits = hashed_splits(name, convert_all)
    register(
        Task(
            name, TaskKind.CLASSIFICATION, Role.UPSTREAM, query, splits, labels.words, source=SOPHON,
            files=(SHOPPING_ZIP,), description=description,
        )
    )  # fmt: skip


def _uer_task(name: str, folder: str, query: str, labels: LabelSet, role: Role, description: str) -> None:
    def loader(stem: str):
        rel = f"{UER_ROOT}/{folder}/{stem}.tsv"

        def load(root: Path, lenient: bool) -> list[MRCExample]:
            make = lambda path, rel: option_converter(name, query, labels, path, rel, ("text_a",), "label")  # noqa: E731
            return load_files(f"{name}/{stem}", [(root / rel, rel)], _uer_tsv, make, lenient)

        return cached(load)

    stems = ("train", "dev", "test")
    register(
        Task(
            name, TaskKind.CLASSIFICATION, role, query, {s: loader(s) for s in stems}, labels.words, source=UER,
            licence=UER_LICENCE, files=tuple(f"{UER_ROOT}/{folder}/{s}.tsv" for s in stems), description=description,
        )
    )  # fmt: skip


_sophon_task("waimai", "waimai_10k", "这条外卖评论的情感是？", "外卖评论情感（waimai_10k）")
_sophon_task(
    "chnsenticorp_htl", "ChnSentiCorp_htl_all", "这条酒店评论的情感是？", "酒店评论情感（ChnSentiCorp_htl_all）"
)
for _category, _suffix in SHOPPING_CATEGORIES.items():
    _shopping_task(
        f"shopping_{_suffix}", f"这条{_category}评论的情感是？", POLARITY, "label", _category,
        f"网购评论情感：{_category}（online_shopping_10_cats）",
    )  # fmt: skip
_shopping_task(
    "shopping_category",
    "这条评论评价的是哪类商品？",
    SHOPPING_CATEGORY,
    "cat",
    None,
    "网购评论的商品类别，10 类（online_shopping_10_cats）",
)
_uer_task("chnsenticorp", "chnsenticorp", "这条评论的情感是？", POLARITY, Role.DOWNSTREAM, "评论情感（ChnSentiCorp）")
_uer_task("book_review", "book_review", "这条书评的情感是？", POLARITY, Role.UPSTREAM, "豆瓣书评情感（book_review）")
_uer_task(
    "ewect",
    "smp2020-ewect/usual",
    "这条微博表达了什么情绪？",
    EMOTION,
    Role.UPSTREAM,
    "微博情绪分类，6 类（SMP2020-EWECT usual）",
)

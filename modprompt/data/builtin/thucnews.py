"""THUCNews news titles, 10 classes (649453932/Chinese-Text-Classification-Pytorch).

TSV without header (``title	label``), labels 0..9 index ``class.txt`` (finance .. entertainment), given
Chinese words 财经 房产 股票 教育 科技 社会 时政 体育 游戏 娱乐. The HEAD files ``data/dev.txt`` and
``data/test.txt`` (10k each) are ``dev`` and ``test``. ``train`` is the two older 40k files under
``saved_dict/data/`` (deleted at HEAD; the HEAD train file is absent from the mirror) minus every title that
also occurs in the HEAD dev or test file (dropped as ``in HEAD dev/test``, about 20k), so train and the
evaluation splits share no title.
"""

from __future__ import annotations

from pathlib import Path

from modprompt.data.convert import Drop, LabelSet, cached, clean, normalise, option_converter
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import convert_records, read_delimited
from modprompt.data.task import Task, register

REPO = "649453932/Chinese-Text-Classification-Pytorch"
ROOT = "649453932+Chinese-Text-Classification-Pytorch/THUCNews"
LICENCE = "MIT"
QUERY = "这条新闻标题属于哪个类别？"
LABELS = LabelSet.of(dict(enumerate("财经 房产 股票 教育 科技 社会 时政 体育 游戏 娱乐".split())))
FILES = {
    "dev": ("data/dev.txt",),
    "test": ("data/test.txt",),
    "train": ("saved_dict/data/dev.txt", "saved_dict/data/test.txt"),
}


def _read(path: Path, *, lenient: bool):
    return read_delimited(path, fieldnames=("title", "label"), lenient=lenient)


def _load(split: str):
    def load(root: Path, lenient: bool) -> list[MRCExample]:
        converted = []
        for name in FILES[split]:
            rel = f"{ROOT}/{name}"
            convert = option_converter("thucnews", QUERY, LABELS, root / rel, rel, ("title",), "label")
            converted += convert_records(root / rel, _read(root / rel, lenient=lenient), convert, lenient=lenient)
        if split == "train":
            held_out = {
                normalise(row["title"])
                for s in ("dev", "test")
                for name in FILES[s]
                for _, row in _read(root / ROOT / name, lenient=True)
            }
            converted = [Drop("in HEAD dev/test") if normalise(e.passage) in held_out else e for e in converted]
        return clean(converted, f"thucnews/{split}")

    return cached(load)


register(
    Task(
        "thucnews", TaskKind.CLASSIFICATION, Role.UPSTREAM, QUERY, {s: _load(s) for s in FILES}, LABELS.words,
        source=REPO, licence=LICENCE, files=tuple(f"{ROOT}/{f}" for names in FILES.values() for f in names),
        description="新闻标题分类，10 类（THUCNews）",
    )
)  # fmt: skip

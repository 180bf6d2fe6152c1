"""Sentence-pair tasks from zejunwang1/CSTS: AFQMC, PAWS-X, CMNLI, Chinese-SNLI, Chinese-STS-B, OPPO-xiaobu, CINLID.

The files are TSV without header (``s1	s2	label``), except PAWS-X (header ``id	sentence1	sentence2	label``).
The official train files of PAWS-X, CMNLI, Chinese-SNLI and OPPO-xiaobu are absent from the mirror; since an
upstream task is pre-trained on its ``train`` split, their largest labelled file becomes ``train``:

* ``pawsx``: train = ``dev_2k.tsv``, test = ``test_2k.tsv``;
* ``cmnli``: train = ``Chinese-MNLI/dev.txt`` (its only file);
* ``snli``: train = ``Chinese-SNLI/dev.txt``, test = ``test.txt``;
* ``oppo``: train = ``OPPO-xiaobu/dev.txt`` (its only labelled file);
* ``afqmc`` and ``stsb`` keep their official splits; ``cinlid`` (one file) is split by hash, 90/5/5.

Chinese-STS-B's six similarity grades 0..5 become 完全不同, 话题相同, 略有相似, 大致相同, 基本相同, 完全相同.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from modprompt.data.convert import (
    NLI,
    NLI_QUERY,
    PARAPHRASE_QUERY,
    SAME_MEANING,
    LabelSet,
    cached,
    hashed_splits,
    load_files,
    option_converter,
)
from modprompt.data.mrc import Role, TaskKind
from modprompt.data.readers import convert_records, read_delimited
from modprompt.data.task import Task, register

REPO = "zejunwang1/CSTS"
ROOT = "zejunwang1+CSTS"
COLUMNS = ("sentence1", "sentence2", "label")

STSB = LabelSet.of(
    {"0": "完全不同", "1": "话题相同", "2": "略有相似", "3": "大致相同", "4": "基本相同", "5": "完全相同"}
)


class _PairTask(NamedTuple):
    kind: TaskKind
    instruction: str
    labels: LabelSet
    files: dict[str, str]  # split -> file under the repository
    header: bool
    description: str


_TASKS = {
    "afqmc": _PairTask(
        TaskKind.PARAPHRASE, "这两个问题的意思相同吗？", SAME_MEANING,
        {"train": "AFQMC/train.txt", "dev": "AFQMC/dev.txt"}, False, "蚂蚁金服问句匹配（AFQMC）",
    ),
    "pawsx": _PairTask(
        TaskKind.PARAPHRASE, PARAPHRASE_QUERY, SAME_MEANING,
        {"train": "PAWS-X/dev_2k.tsv", "test": "PAWS-X/test_2k.tsv"}, True, "释义对抗句对（PAWS-X 中文），train = 官方 dev",
    ),
    "cmnli": _PairTask(
        TaskKind.NLI, NLI_QUERY, NLI, {"train": "Chinese-MNLI/dev.txt"}, False, "中文多体裁自然语言推理（CMNLI），train = 官方 dev",
    ),
    "snli": _PairTask(
        TaskKind.NLI, NLI_QUERY, NLI,
        {"train": "Chinese-SNLI/dev.txt", "test": "Chinese-SNLI/test.txt"}, False, "中文 SNLI（CNSD），train = 官方 dev",
    ),
    "stsb": _PairTask(
        TaskKind.SIMILARITY, "句子一和句子二的意思有多接近？", STSB,
        {
            "train": "Chinese-STS-B/sts-b-train.txt",
            "dev": "Chinese-STS-B/sts-b-dev.txt",
            "test": "Chinese-STS-B/sts-b-test.txt",
        },
        False, "语义相似度，0–5 六级（Chinese-STS-B）",
    ),
    "oppo": _PairTask(
        TaskKind.PARAPHRASE, PARAPHRASE_QUERY, SAME_MEANING, {"train": "OPPO-xiaobu/dev.txt"}, False,
        "小布助手对话短文本匹配（OPPO-xiaobu），train = 官方 dev",
    ),
}  # fmt: skip
CINLID_FILE = "CINLID/Idiom_NLI.txt"


def _read(header: bool):
    def read(path: Path, *, lenient: bool):
        if header:
            return read_delimited(path, header=True, lenient=lenient)
        return read_delimited(path, fieldnames=COLUMNS, lenient=lenient)

    return read


def _register(name: str) -> None:
    kind, query, labels, files, header, description = _TASKS[name]

    def make(path: Path, rel: str):
        return option_converter(name, query, labels, path, rel, ("sentence1", "sentence2"), "label")

    def loader(split: str):
        rel = f"{ROOT}/{files[split]}"
        return cached(
            lambda root, lenient: load_files(f"{name}/{split}", [(root / rel, rel)], _read(header), make, lenient)
        )

    splits = {split: loader(split) for split in files}
    rels = tuple(f"{ROOT}/{f}" for f in files.values())
    register(
        Task(name, kind, Role.UPSTREAM, query, splits, labels.words, source=REPO, files=rels, description=description)
    )


def _cinlid_all(root: Path, lenient: bool) -> list:
    rel = f"{ROOT}/{CINLID_FILE}"
    path = root / rel
    convert = option_converter("cinlid", NLI_QUERY, NLI, path, rel, ("sentence1", "sentence2"), "label")
    return convert_records(path, _read(False)(path, lenient=lenient), convert, lenient=lenient)


for _name in _TASKS:
    _register(_name)
register(
    Task(
        "cinlid", TaskKind.NLI, Role.UPSTREAM, NLI_QUERY, hashed_splits("cinlid", _cinlid_all), NLI.words, source=REPO,
        files=(f"{ROOT}/{CINLID_FILE}",), description="成语语义推理（CINLID），按哈希切分 90/5/5",
    )
)  # fmt: skip

"""CSL benchmark, category task (ydli-ai/CSL ``benchmark/cls_ctg``): paper title -> one of 13 categories.

TSV without header: ``to category	title	label``; the first column is a constant task prefix. Official
train/dev/test. The discipline task ``cls_dcp`` is excluded: it re-splits the downstream FewCLUE CSLDCP.
"""

from __future__ import annotations

from pathlib import Path

from modprompt.data.convert import LabelSet, cached, load_files, option_converter
from modprompt.data.mrc import Role, TaskKind
from modprompt.data.readers import read_delimited
from modprompt.data.task import Task, register

REPO = "ydli-ai/CSL"
ROOT = "ydli-ai+CSL/benchmark/cls_ctg"
QUERY = "这篇论文的标题属于哪个学科门类？"
LABELS = LabelSet.of(
    {w: w for w in "工学 理学 农学 医学 管理学 法学 经济学 教育学 文学 艺术学 历史学 哲学 军事学".split()}
)


def _read(path: Path, *, lenient: bool):
    return read_delimited(path, fieldnames=("prefix", "title", "label"), lenient=lenient)


def _loader(split: str):
    rel = f"{ROOT}/{split}.tsv"

    def make(path: Path, rel: str):
        return option_converter("csl_category", QUERY, LABELS, path, rel, ("title",), "label")

    return cached(lambda root, lenient: load_files(f"csl_category/{split}", [(root / rel, rel)], _read, make, lenient))


_SPLITS = ("train", "dev", "test")
register(
    Task(
        "csl_category", TaskKind.CLASSIFICATION, Role.UPSTREAM, QUERY, {s: _loader(s) for s in _SPLITS}, LABELS.words,
        source=REPO, licence="Apache-2.0", files=tuple(f"{ROOT}/{s}.tsv" for s in _SPLITS),
        description="论文标题学科门类，13 类（CSL cls_ctg）",
    )
)  # fmt: skip

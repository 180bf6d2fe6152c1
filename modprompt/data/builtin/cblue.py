"""Medical tasks from the CBLUE benchmark (Sherlock-coder/CBLUE): CHIP-CTC, CHIP-STS, KUAKE-QIC/QQR/QTR.

Each file is a whole-JSON list, so errors name the 0-based record index. Only ``train`` and ``dev`` have
labels (the CBLUE test files are unlabelled and not mirrored).

Label words: CHIP-CTC's 44 English labels take the Chinese names of ``category.xlsx``, shortened where the
sheet adds a gloss: ``症状(患者感受)`` -> 症状, ``体征(医生检测）`` -> 体征, ``含有多类别的语句`` -> 多类别.
KUAKE-QQR follows the CBLUE definition (2: A 与 B 等价; 1: B 是 A 的语义子集; 0: B 是 A 的语义父集或无关);
KUAKE-QTR the CBLUE baseline's four grades (完全不匹配 .. 完全匹配).
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from modprompt.data.convert import (
    PARAPHRASE_QUERY,
    SAME_MEANING,
    LabelSet,
    cached,
    load_files,
    option_converter,
)
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import read_json_records
from modprompt.data.task import Task, register

REPO = "Sherlock-coder/CBLUE"
ROOT = "Sherlock-coder+CBLUE/data"

#: English label -> Chinese name (category.xlsx, in its order)
CTC = LabelSet.of(
    {
        "Disease": "疾病", "Symptom": "症状", "Sign": "体征", "Pregnancy-related Activity": "怀孕相关",
        "Neoplasm Status": "肿瘤进展", "Non-Neoplasm Disease Stage": "疾病分期", "Allergy Intolerance": "过敏耐受",
        "Organ or Tissue Status": "器官组织状态", "Life Expectancy": "预期寿命", "Oral related": "口腔相关",
        "Pharmaceutical Substance or Drug": "药物", "Therapy or Surgery": "治疗或手术", "Device": "设备", "Nursing": "护理",
        "Diagnostic": "诊断", "Laboratory Examinations": "实验室检查", "Risk Assessment": "风险评估",
        "Receptor Status": "受体状态", "Age": "年龄", "Special Patient Characteristic": "特殊病人特征", "Literacy": "读写能力",
        "Gender": "性别", "Education": "教育情况", "Address": "居住情况", "Ethnicity": "种族", "Consent": "知情同意",
        "Enrollment in other studies": "参与其它试验", "Researcher Decision": "研究者决定", "Capacity": "能力",
        "Ethical Audit": "伦理审查", "Compliance with Protocol": "依存性", "Addictive Behavior": "成瘾行为",
        "Bedtime": "睡眠", "Exercise": "锻炼", "Diet": "饮食", "Alcohol Consumer": "酒精使用", "Sexual related": "性取向",
        "Smoking Status": "吸烟状况", "Blood Donation": "献血", "Encounter": "病例来源", "Disabilities": "残疾群体",
        "Healthy": "健康群体", "Data Accessible": "数据可及性", "Multiple": "多类别",
    }
)  # fmt: skip
QIC = LabelSet.of(
    {
        w: w
        for w in "治疗方案 其他 病情诊断 注意事项 疾病表述 就医建议 指标解读 病因分析 功效作用 医疗费用 后果表述".split()
    }
)
QQR = LabelSet.of({"0": "范围更大或无关", "1": "范围更小", "2": "完全相同"})
QTR = LabelSet.of({"0": "完全不匹配", "1": "很少匹配", "2": "部分匹配", "3": "完全匹配"})


class _CblueTask(NamedTuple):
    folder: str
    kind: TaskKind
    instruction: str
    labels: LabelSet
    text_keys: tuple[str, ...]
    description: str


_TASKS = {
    "chip_ctc": _CblueTask(
        "CHIP-CTC", TaskKind.CLASSIFICATION, "这条临床试验筛选标准属于哪一类？", CTC, ("text",),
        "临床试验筛选标准分类，44 类（CHIP-CTC）",
    ),
    "chip_sts": _CblueTask(
        "CHIP-STS", TaskKind.PARAPHRASE, PARAPHRASE_QUERY, SAME_MEANING, ("text1", "text2"), "医学问句相似度（CHIP-STS）"
    ),
    "kuake_qic": _CblueTask(
        "KUAKE-QIC", TaskKind.CLASSIFICATION, "这条医疗搜索的意图是什么？", QIC, ("query",),
        "医疗搜索意图分类，11 类（KUAKE-QIC）",
    ),
    "kuake_qqr": _CblueTask(
        "KUAKE-QQR", TaskKind.SIMILARITY, "与句子一相比，句子二的意思是？", QQR, ("query1", "query2"),
        "医疗搜索词相关性（KUAKE-QQR）",
    ),
    "kuake_qtr": _CblueTask(
        "KUAKE-QTR", TaskKind.SIMILARITY, "句子二与句子一的主题匹配程度如何？", QTR, ("query", "title"),
        "搜索词与标题相关性，4 级（KUAKE-QTR）",
    ),
}  # fmt: skip


def _register(name: str) -> None:
    folder, kind, query, labels, text_keys, description = _TASKS[name]

    def loader(split: str):
        rel = f"{ROOT}/{folder}/{folder}_{split}.json"

        def load(root: Path, lenient: bool) -> list[MRCExample]:
            make = lambda path, rel: option_converter(name, query, labels, path, rel, text_keys, "label", unit="record")  # noqa: E731
            return load_files(f"{name}/{split}", [(root / rel, rel)], read_json_records, make, lenient, unit="record")

        return cached(load)

    files = tuple(f"{ROOT}/{folder}/{folder}_{split}.json" for split in ("train", "dev"))
    splits = {split: loader(split) for split in ("train", "dev")}
    register(
        Task(name, kind, Role.UPSTREAM, query, splits, labels.words, source=REPO, files=files, description=description)
    )


for _name in _TASKS:
    _register(_name)

"""FewCLUE (CLUEbenchmark/FewCLUE): seven downstream tasks and two upstream ones.

Downstream (EPRSTMT, BUSTM, OCNLI, CSLDCP, TNEWS, IFLYTEK, CHID) splits: ``train_0``..``train_4`` and
``dev_0``..``dev_4`` (the five official few-shot seeds), ``test`` (``test_public.json``), and ``train_all`` /
``dev_all`` (``train_few_all.json`` / ``dev_few_all.json``). Upstream CLUEWSC and CSL: ``train`` merges every
labelled few-shot file (``train_*``, ``dev_*``, ``*_few_all``; cleaning drops the copies they share) and
``test`` is ``test_public.json``.

Label words: TNEWS uses the Chinese names of ``label_index2en2zh.json``; IFLYTEK and CSLDCP their own
Chinese label names (CSLDCP in the order of ``labels_all.txt``). CHID: the ``#idiom#`` gap becomes ``____``
and the seven candidates are the options. CLUEWSC: the pronoun is marked with 【】 in the passage at its
given offset and the query asks whether it refers to the candidate. CSL: the passage holds the abstract
and the keywords, the query asks whether they are all real keywords of the paper.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from modprompt.data.convert import (
    BLANK,
    NLI,
    NLI_QUERY,
    PARAPHRASE_QUERY,
    SAME_MEANING,
    YES_NO,
    LabelSet,
    cached,
    choice_index,
    load_files,
    option_converter,
    options_field,
    source_of,
    text_field,
    tidy,
)
from modprompt.data.mrc import MRCExample, Role, TaskKind
from modprompt.data.readers import DataError, read_jsonl
from modprompt.data.task import SplitLoader, Task, register

REPO = "CLUEbenchmark/FewCLUE"
ROOT = "CLUEbenchmark+FewCLUE/datasets"

FEWSHOT_FILES = {
    **{f"train_{i}": f"train_{i}" for i in range(5)},
    **{f"dev_{i}": f"dev_{i}" for i in range(5)},
    "train_all": "train_few_all",
    "dev_all": "dev_few_all",
    "test": "test_public",
}
LABELLED_FILES = [f"{s}_{i}" for s in ("train", "dev") for i in range(5)] + ["train_few_all", "dev_few_all"]

SENTIMENT = LabelSet.of({"Negative": "负面", "Positive": "正面"})
TRUE_FALSE = LabelSet.of({"false": "否", "true": "是"})

#: labels_all.txt, in its order
CSLDCP_LABELS = (
    "材料科学与工程 作物学 口腔医学 药学 教育学 水利工程 理论经济学 食品科学与工程 畜牧学/兽医学 体育学 核科学与技术 力学 "
    "园艺学 水产 法学 地质学/地质资源与地质工程 石油与天然气工程 农林经济管理 信息与通信工程 图书馆、情报与档案管理 政治学 "
    "电气工程 海洋科学 民族学 航空宇航科学与技术 化学/化学工程与技术 哲学 公共卫生与预防医学 艺术学 农业工程 船舶与海洋工程 "
    "计算机科学与技术 冶金工程 交通运输工程 动力工程及工程热物理 纺织科学与工程 建筑学 环境科学与工程 公共管理 数学 物理学 "
    "林学/林业工程 心理学 历史学 工商管理 应用经济学 中医学/中药学 天文学 机械工程 土木工程 光学工程 地理学 农业资源利用 "
    "生物学/生物科学与工程 兵器科学与技术 矿业工程 大气科学 基础医学/临床医学 电子科学与技术 测绘科学与技术 控制科学与工程 "
    "军事学 中国语言文学 新闻传播学 社会学 地球物理学 植物保护"
).split()
CSLDCP = LabelSet.of({name: name for name in CSLDCP_LABELS})

#: label_index2en2zh.json: label -> label_zh
TNEWS = LabelSet.of(
    {
        "100": "故事",
        "101": "文化",
        "102": "娱乐",
        "103": "体育",
        "104": "财经",
        "106": "房产",
        "107": "汽车",
        "108": "教育",
        "109": "科技",
        "110": "军事",
        "112": "旅游",
        "113": "国际",
        "114": "股票",
        "115": "农业",
        "116": "电竞",
    }
)

#: label -> label_des, as in every IFLYTEK file
IFLYTEK_NAMES = (
    "打车 地图导航 免费WIFI 租车 同城服务 快递物流 婚庆 家政 公共交通 政务 社区服务 薅羊毛 魔幻 仙侠 卡牌 飞行空战 射击游戏 "
    "休闲益智 动作类 体育竞技 棋牌中心 经营养成 策略 MOBA 辅助工具 约会社交 即时通讯 工作社交 论坛圈子 婚恋社交 情侣社交 "
    "社交工具 生活社交 微博博客 新闻 漫画 小说 技术 教辅 问答交流 搞笑 杂志 百科 影视娱乐 求职 兼职 视频 短视频 音乐 直播 "
    "电台 K歌 成人 中小学 职考 公务员 英语 视频教育 高等教育 成人教育 艺术 语言(非英语) 旅游资讯 综合预定 民航 铁路 酒店 "
    "行程管理 民宿短租 出国 工具 亲子儿童 母婴 驾校 违章 汽车咨询 汽车交易 日常养车 行车辅助 租房 买房 装修家居 电子产品 "
    "问诊挂号 养生保健 医疗服务 减肥瘦身 美妆美业 菜谱 餐饮店 体育咨讯 运动健身 支付 保险 股票 借贷 理财 彩票 记账 银行 美颜 "
    "影像剪辑 摄影修图 相机 绘画 二手 电商 团购 外卖 电影票务 社区超市 购物咨询 笔记 办公 日程管理 女性 经营 收款 其他"
).split()
IFLYTEK = LabelSet.of({str(i): name for i, name in enumerate(IFLYTEK_NAMES)})


class _OptionTask(NamedTuple):
    kind: TaskKind
    instruction: str
    labels: LabelSet
    text_keys: tuple[str, ...]
    description: str


_OPTION_TASKS = {
    "eprstmt": _OptionTask(
        TaskKind.CLASSIFICATION, "这条商品评论的情感是？", SENTIMENT, ("sentence",), "电商评论情感（FewCLUE EPRSTMT）"
    ),
    "bustm": _OptionTask(
        TaskKind.PARAPHRASE,
        PARAPHRASE_QUERY,
        SAME_MEANING,
        ("sentence1", "sentence2"),
        "对话短文本匹配（FewCLUE BUSTM）",
    ),
    "ocnli": _OptionTask(TaskKind.NLI, NLI_QUERY, NLI, ("sentence1", "sentence2"), "自然语言推理（FewCLUE OCNLI）"),
    "csldcp": _OptionTask(
        TaskKind.CLASSIFICATION,
        "这篇论文摘要属于哪个学科？",
        CSLDCP,
        ("content",),
        "论文学科分类，67 类（FewCLUE CSLDCP）",
    ),
    "tnews": _OptionTask(
        TaskKind.CLASSIFICATION,
        "这条新闻标题属于哪个类别？",
        TNEWS,
        ("sentence",),
        "今日头条新闻分类，15 类（FewCLUE TNEWS）",
    ),
    "iflytek": _OptionTask(
        TaskKind.CLASSIFICATION,
        "这段应用描述属于哪类应用？",
        IFLYTEK,
        ("sentence",),
        "应用描述分类，119 类（FewCLUE IFLYTEK）",
    ),
}

CHID_QUERY = "空白处应填入哪个成语？"
CLUEWSC_QUERY = "文中【{pronoun}】指的是「{candidate}」吗？"
CLUEWSC_INSTRUCTION = CLUEWSC_QUERY.format(pronoun="代词", candidate="名词")
CSL_QUERY = "这些关键词都是这篇论文的关键词吗？"


def _loader(name: str, stems: list[str], make_convert) -> SplitLoader:
    def load(root: Path, lenient: bool) -> list[MRCExample]:
        files = [(root / f"{ROOT}/{name}/{stem}.json", f"{ROOT}/{name}/{stem}.json") for stem in stems]
        return load_files(f"{name}/{'+'.join(stems)}", files, read_jsonl, make_convert, lenient)

    return cached(load)


def _option_convert(name: str):
    spec = _OPTION_TASKS[name]
    return lambda path, rel: option_converter(
        name, spec.instruction, spec.labels, path, rel, spec.text_keys, "label", no_gold=("-",)
    )


def _chid_convert(path: Path, rel: str):
    def convert(where: int, record: dict) -> MRCExample:
        content = tidy(text_field(record, "content", path, where))
        if content.count("#idiom#") != 1:
            raise DataError(path, where, f"expected one #idiom# gap in 'content', found {content.count('#idiom#')}")
        options = options_field(record, "candidates", path, where)
        label = choice_index(options, record.get("answer"), path, where)
        passage = content.replace("#idiom#", BLANK)
        return MRCExample("chid", CHID_QUERY, passage, options, label, texts=(content,), source=source_of(rel, where))

    return convert


def _cluewsc_convert(path: Path, rel: str):
    def convert(where: int, record: dict) -> MRCExample:
        text = text_field(record, "text", path, where)  # not tidied: span2_index counts from its first character
        target = record.get("target")
        if not isinstance(target, dict):
            raise DataError(path, where, "missing field 'target'")
        candidate = text_field(target, "span1_text", path, where)
        pronoun = text_field(target, "span2_text", path, where)
        at = target.get("span2_index")
        if not isinstance(at, int) or text[at : at + len(pronoun)] != pronoun:
            raise DataError(path, where, f"span2_index {at!r} does not point at {pronoun!r}")
        passage = f"{text[:at]}【{pronoun}】{text[at + len(pronoun) :]}"
        query = CLUEWSC_QUERY.format(pronoun=pronoun, candidate=candidate)
        label = TRUE_FALSE.index(record.get("label"), path, where)
        return MRCExample(
            "cluewsc", query, passage, TRUE_FALSE.words, label, texts=(text,), source=source_of(rel, where)
        )

    return convert


def _csl_convert(path: Path, rel: str):
    def convert(where: int, record: dict) -> MRCExample:
        abstract = tidy(text_field(record, "abst", path, where))
        keywords = record.get("keyword")
        if not isinstance(keywords, list) or not keywords or not all(isinstance(k, str) for k in keywords):
            raise DataError(path, where, "field 'keyword' should be a non-empty list of strings")
        joined = "，".join(tidy(k) for k in keywords)
        passage = f"摘要：{abstract}\n关键词：{joined}"
        label = YES_NO.index(record.get("label"), path, where)
        return MRCExample(
            "csl", CSL_QUERY, passage, YES_NO.words, label, texts=(abstract, joined), source=source_of(rel, where)
        )

    return convert


def _files(name: str) -> tuple[str, ...]:
    return tuple(f"{ROOT}/{name}/{stem}.json" for stem in FEWSHOT_FILES.values())


def _downstream(
    name: str, kind: TaskKind, instruction: str, make_convert, label_words: tuple[str, ...], description: str
) -> None:
    splits = {split: _loader(name, [stem], make_convert) for split, stem in FEWSHOT_FILES.items()}
    register(
        Task(
            name, kind, Role.DOWNSTREAM, instruction, splits, label_words, fewshot="fewclue", source=REPO,
            files=_files(name), description=description,
        )
    )  # fmt: skip


def _upstream(
    name: str, kind: TaskKind, instruction: str, make_convert, label_words: tuple[str, ...], description: str
) -> None:
    splits = {
        "train": _loader(name, LABELLED_FILES, make_convert),
        "test": _loader(name, ["test_public"], make_convert),
    }
    register(
        Task(
            name,
            kind,
            Role.UPSTREAM,
            instruction,
            splits,
            label_words,
            source=REPO,
            files=_files(name),
            description=description,
        )
    )


for _name, _spec in _OPTION_TASKS.items():
    _downstream(_name, _spec.kind, _spec.instruction, _option_convert(_name), _spec.labels.words, _spec.description)
_downstream("chid", TaskKind.MULTIPLE_CHOICE, CHID_QUERY, _chid_convert, (), "成语完形填空，7 选 1（FewCLUE CHID）")
_upstream(
    "cluewsc",
    TaskKind.CLASSIFICATION,
    CLUEWSC_INSTRUCTION,
    _cluewsc_convert,
    TRUE_FALSE.words,
    "代词指代消解（FewCLUE CLUEWSC）",
)
_upstream("csl", TaskKind.CLASSIFICATION, CSL_QUERY, _csl_convert, YES_NO.words, "论文关键词识别（FewCLUE CSL）")

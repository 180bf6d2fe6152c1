"""Few-shot train/dev/test splits for downstream tasks, and the fixed subsets that ``dev_limit`` and ``test_limit``
take of them (:func:`subset`: the same examples for every method and seed).

* FewCLUE tasks (``Task.fewshot == "fewclue"``): seed ``s`` (0..4) reads the official ``train_s`` and ``dev_s``
  files; test is ``test_public``.
* Every other task (``"sampled"``: ChnSentiCorp and user tasks): ``numpy.random.default_rng(seed)`` draws
  ``k_per_label`` examples per label for train and, disjoint from them, ``k_per_label`` per label for dev,
  both from the task's ``train`` split; test is the whole ``test`` split (empty if the task has none).
  Tasks without a fixed label set (multiple choice, extractive QA) draw ``k_per_label`` examples in all for
  each of train and dev. Candidates whose texts also occur in the test split are never drawn (ChnSentiCorp
  shares 330 texts between train and test), so the test split stays the same for every seed and never
  contains a training text. A label with fewer than ``2 * k_per_label`` candidates is shared out evenly
  between train and dev, with a warning.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from modprompt.data.convert import normalise
from modprompt.data.mrc import MRCExample
from modprompt.data.registry import load_examples
from modprompt.data.task import Task, get_task

logger = logging.getLogger(__name__)

FEWCLUE_SEEDS = range(5)


#: the fixed shuffle behind ``test_limit``/``dev_limit``: the same subset for every method and seed
SUBSET_SEED = 0


def subset(examples: list[MRCExample], limit: int | None) -> list[MRCExample]:
    """The first ``limit`` examples of a fixed shuffle (all of them, in order, when ``limit`` is None)."""
    if limit is None or limit >= len(examples):
        return list(examples)
    order = np.random.default_rng(SUBSET_SEED).permutation(len(examples))[:limit]
    return [examples[i] for i in order]


def _texts(example: MRCExample) -> tuple[str, ...]:
    return tuple(normalise(t) for t in example.texts)


def fewshot_splits(
    task_name: str | Task, seed: int, data_root: str | Path, k_per_label: int = 16, *, lenient: bool = False
) -> tuple[list[MRCExample], list[MRCExample], list[MRCExample]]:
    """``(train, dev, test)`` for one few-shot run of a downstream task; the same seed gives the same split.

    ``lenient`` skips malformed records instead of stopping (see :mod:`modprompt.data.readers`)."""
    task = get_task(task_name)  # a Task given is used as it is, not looked up again
    task_name = task.name
    if task.fewshot == "fewclue":
        if seed not in FEWCLUE_SEEDS:
            raise ValueError(f"FewCLUE task {task_name!r} has official few-shot seeds 0..4, not {seed}")
        splits = (f"train_{seed}", f"dev_{seed}", "test")
        return tuple(load_examples(task, s, data_root, lenient) for s in splits)  # type: ignore[return-value]
    if task.fewshot != "sampled":
        raise ValueError(f"task {task_name!r} has an unknown few-shot scheme {task.fewshot!r}")
    if k_per_label < 1:
        raise ValueError(f"k_per_label must be at least 1, got {k_per_label}")
    test = load_examples(task, "test", data_root, lenient) if "test" in task.splits else []
    in_test = {_texts(e) for e in test}
    groups: dict[int | None, list[MRCExample]] = defaultdict(list)
    for example in load_examples(task, "train", data_root, lenient):
        if _texts(example) not in in_test:
            groups[example.label if task.label_words else None].append(example)
    rng = np.random.default_rng(seed)
    train: list[MRCExample] = []
    dev: list[MRCExample] = []
    for label in sorted(groups, key=lambda g: -1 if g is None else g):
        group = groups[label]
        n_train = min(k_per_label, math.ceil(len(group) / 2))
        n_dev = min(k_per_label, len(group) - n_train)
        if n_dev < k_per_label:
            word = task.label_words[label] if label is not None else "all labels"
            logger.warning(
                "%s: only %d examples for %r; train gets %d and dev %d", task_name, len(group), word, n_train, n_dev
            )
        order = rng.permutation(len(group))
        train += [group[i] for i in order[:n_train]]
        dev += [group[i] for i in order[n_train : n_train + n_dev]]
    train = [train[i] for i in rng.permutation(len(train))]
    dev = [dev[i] for i in rng.permutation(len(dev))]
    return train, dev, test

"""Loading registered tasks as MRC examples, with downstream leakage removed from upstream tasks.

``data_root`` is the folder that holds the raw files as ``OWNER+NAME/<path>``; it is always passed in.
``lenient`` skips malformed records instead of raising (see :mod:`modprompt.data.readers`).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from modprompt.data.leakage import downstream_index, drop_leaked
from modprompt.data.mrc import MRCExample, Role
from modprompt.data.task import Task, all_tasks, get_task


def _load(task: Task, split: str, data_root: Path, lenient: bool) -> tuple[list[MRCExample], int]:
    """The examples of one split and how many the leakage filter dropped (0 for downstream tasks)."""
    if task.role is not Role.UPSTREAM:
        return task.load(split, data_root, lenient), 0
    kept, dropped = _filtered(task.name, split, Path(data_root).resolve(), lenient)
    return list(kept), dropped


@lru_cache(maxsize=None)
def _filtered(name: str, split: str, data_root: Path, lenient: bool) -> tuple[tuple[MRCExample, ...], int]:
    # Only built-in tasks are upstream (user tasks are downstream), so a task name stands for fixed loaders.
    examples = get_task(name).load(split, data_root, lenient)
    kept, dropped = drop_leaked(examples, downstream_index(data_root), f"{name}/{split}")
    return tuple(kept), dropped


def load_examples(task_name: str | Task, split: str, data_root: str | Path, lenient: bool = False) -> list[MRCExample]:
    """One split of a task, cleaned; for an upstream task, without examples that occur in downstream data."""
    return _load(get_task(task_name), split, Path(data_root), lenient)[0]


def task_table(data_root: str | Path, lenient: bool = False) -> list[dict[str, Any]]:
    """One row per registered task: what it is, where it comes from and how many examples each split yields.

    ``splits`` counts what :func:`load_examples` returns (after cleaning and, for upstream tasks, after the
    leakage filter); ``leaked`` is the number of examples the leakage filter removed over all splits
    (``None`` for downstream tasks).
    """
    rows = []
    for task in all_tasks():
        counts, leaked = {}, 0
        for split in task.splits:
            examples, dropped = _load(task, split, Path(data_root), lenient)
            counts[split] = len(examples)
            leaked += dropped
        rows.append(
            {
                "name": task.name,
                "kind": task.kind.value,
                "role": task.role.value,
                "num_options": task.num_options,
                "splits": counts,
                "leaked": leaked if task.role is Role.UPSTREAM else None,
                "source": task.source,
                "licence": task.licence,
            }
        )
    return rows


def leakage_report(data_root: str | Path) -> dict[str, int]:
    """Per upstream task, how many examples (over all splits) the leakage filter drops."""
    return {
        task.name: sum(_load(task, split, Path(data_root), False)[1] for split in task.splits)
        for task in all_tasks(Role.UPSTREAM)
    }

"""A task: a name, a kind, a role and the loaders that turn its raw files into MRC examples.

Every built-in task and every user task (``modprompt.data.spec``) is a :class:`Task` registered here,
so the rest of modprompt never needs to know where a task came from.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from modprompt.data.mrc import MRCExample, Role, TaskKind

logger = logging.getLogger(__name__)

#: ``loader(data_root, lenient) -> examples``; ``data_root`` is the folder holding ``OWNER+NAME/<path>``.
SplitLoader = Callable[[Path, bool], list[MRCExample]]


@dataclass(frozen=True)
class Task:
    """A registered task.

    ``label_words`` are the option strings for tasks with a fixed label set (natural Chinese words, one
    per label); tasks whose options change per example (multiple choice) or have none (extractive QA)
    leave it empty. ``fewshot`` says how few-shot splits are made: ``"fewclue"`` reads the FewCLUE
    ``train_k``/``dev_k`` files, ``"sampled"`` draws k examples per label from ``train``.
    """

    name: str
    kind: TaskKind
    role: Role
    instruction: str
    splits: dict[str, SplitLoader]
    label_words: tuple[str, ...] = ()
    fewshot: str = "sampled"
    source: str = ""
    licence: str = "not stated"
    files: tuple[str, ...] = ()  # paths under the data root that the loaders read
    description: str = ""
    extras: dict = field(default_factory=dict)

    @property
    def builtin(self) -> bool:
        """Whether it is one of the built-in suite's tasks (a user task records its spec in ``extras``)."""
        return "spec" not in self.extras

    @property
    def num_options(self) -> int | None:
        """Options per example: fixed for label-set tasks, ``None`` where it varies or is absent."""
        return len(self.label_words) or None

    def load(self, split: str, data_root: Path, lenient: bool = False) -> list[MRCExample]:
        """Load one split as MRC examples (no leakage filtering; see ``modprompt.data.registry``)."""
        if split not in self.splits:
            raise KeyError(f"task {self.name!r} has no split {split!r}; it has {sorted(self.splits)}")
        return self.splits[split](Path(data_root), lenient)


_REGISTRY: dict[str, Task] = {}


def register(task: Task, *, replace: bool = False) -> Task:
    """Add a task to the registry; a second task of the same name is an error unless ``replace``."""
    if task.name in _REGISTRY and not replace:
        raise ValueError(f"a task named {task.name!r} is already registered")
    _REGISTRY[task.name] = task
    return task


def unregister(name: str) -> None:
    """Remove a task (a user task that is no longer wanted); unknown names are an error."""
    if _REGISTRY.pop(name, None) is None:
        raise KeyError(f"no task named {name!r} is registered")


def get_task(name: str | Task) -> Task:
    """The registered task of this name; a :class:`Task` already resolved is returned as it is."""
    if isinstance(name, Task):
        return name
    _ensure_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; `modprompt tasks` lists them") from None


def all_tasks(role: Role | None = None) -> list[Task]:
    _ensure_builtins()
    return [t for t in _REGISTRY.values() if role is None or t.role == role]


def _ensure_builtins() -> None:
    # Imported lazily so that importing modprompt reads no files and registers nothing until asked.
    import modprompt.data.builtin  # noqa: F401

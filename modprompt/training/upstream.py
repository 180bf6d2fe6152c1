"""What every multi-task run on the upstream tasks shares: its config's common fields, its data and its run folder.

Both such runs build on it: MP2's prompt pre-training (:mod:`modprompt.modular.pretrain`) and the MUPPET
pre-finetuning baseline (:mod:`modprompt.baselines.prefinetune`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch

from modprompt.data.mrc import MRCExample, Role
from modprompt.data.registry import load_examples
from modprompt.data.task import all_tasks, get_task

C = TypeVar("C", bound="UpstreamRunConfig")


@dataclass
class UpstreamRunConfig:
    """The settings every multi-task run on the upstream tasks has (pre-training, pre-finetuning).

    A run's config adds its own fields after these and ends with ``train``, a
    :class:`~modprompt.training.trainer.TrainConfig`.
    """

    backbone: str = "gemma-3-270m"
    tasks: list[str] = field(default_factory=list)  # empty: every upstream task
    max_length: int = 256
    held_out_per_task: int = 100

    @classmethod
    def from_json(cls: type[C], path: str | Path) -> C:
        """The config stored in a JSON file; its ``train`` keys override the config's default ``train``.

        An unknown key, at the top or in ``train``, is a ValueError naming the file.
        """
        data = json.loads(Path(path).read_text())
        try:
            return cls(train=replace(cls().train, **data.pop("train", {})), **data)
        except TypeError as err:
            raise ValueError(f"{path}: {err}") from None

    def to_dict(self) -> dict:
        return asdict(self)

    def run_tasks(self) -> list[str]:
        """The upstream tasks this run trains on: ``tasks``, or all of them when it is empty."""
        return self.tasks or sorted(t.name for t in all_tasks(Role.UPSTREAM))


def upstream_data(
    tasks: list[str], data_root: Path, held_out_per_task: int, seed: int = 0
) -> tuple[dict[str, list[MRCExample]], dict[str, list[MRCExample]]]:
    """Training examples and a fixed held-out sample per task (its dev split, else its test split)."""
    train, held_out = {}, {}
    for name in tasks:
        task = get_task(name)
        if task.role != Role.UPSTREAM:
            raise ValueError(f"task {name!r} is {task.role.value}; pre-training uses upstream tasks only")
        train[name] = load_examples(name, "train", data_root)
        split = "dev" if "dev" in task.splits else "test" if "test" in task.splits else None
        if split and held_out_per_task:
            examples = load_examples(name, split, data_root)
            order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))
            held_out[name] = [examples[i] for i in order[:held_out_per_task].tolist()]
    return train, held_out


def start_run(
    config: UpstreamRunConfig, run_dir: str | Path, data_root: Path
) -> tuple[Path, list[str], dict[str, list[MRCExample]], dict[str, list[MRCExample]]]:
    """Create ``run_dir`` with the config in it; the run's tasks, their training and held-out examples."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2, ensure_ascii=False) + "\n")
    tasks = config.run_tasks()
    train, held_out = upstream_data(tasks, data_root, config.held_out_per_task, config.train.seed)
    return run_dir, tasks, train, held_out

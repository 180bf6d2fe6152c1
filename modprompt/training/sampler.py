"""Multi-task batch sampling that balances the upstream tasks.

MP2 picks a task uniformly at random at every step and draws the whole batch from it, so a task with
60k examples and one with 2k are seen equally often. ``temperature`` > 1 interpolates towards
sampling by task size (probability ∝ size^(1/T)); ``mixed=True`` draws each example's task on its
own, giving heterogeneous batches (MUPPET's pre-finetuning). Within a task, examples are visited in
a fresh random order every epoch. The sampler's whole state (its generator and every task's
position) is a plain dict, so a checkpoint resumes exactly where it stopped.

Under data parallelism every rank builds the same sampler from the same seed and takes its own
slice of each global batch, so ranks agree on the task of every step without communicating.
"""

from __future__ import annotations

import numpy as np


class TaskSampler:
    def __init__(
        self,
        task_sizes: dict[str, int],
        batch_size: int,
        seed: int = 0,
        temperature: float | None = None,
        mixed: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not task_sizes or any(size <= 0 for size in task_sizes.values()):
            raise ValueError(f"every task needs at least one example: {task_sizes}")
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} is not divisible by {world_size} ranks")
        self.tasks = sorted(task_sizes)
        self.sizes = np.array([task_sizes[t] for t in self.tasks], dtype=np.float64)
        self.batch_size = batch_size
        self.mixed = mixed
        self.rank = rank
        self.world_size = world_size
        if temperature is None:
            self.probs = np.full(len(self.tasks), 1.0 / len(self.tasks))
        else:
            weights = self.sizes ** (1.0 / temperature)
            self.probs = weights / weights.sum()
        self.rng = np.random.default_rng(seed)
        self._order: dict[str, np.ndarray] = {}
        self._pos: dict[str, int] = {t: 0 for t in self.tasks}
        self._epoch: dict[str, int] = {t: 0 for t in self.tasks}
        self._seed = seed

    def _permutation(self, task: str) -> np.ndarray:
        # Each (task, epoch) order derives from the seed alone, so it need not be stored in a checkpoint.
        if task not in self._order:
            index = self.tasks.index(task)
            rng = np.random.default_rng([self._seed, index, self._epoch[task]])
            self._order[task] = rng.permutation(int(self.sizes[index]))
        return self._order[task]

    def _take(self, task: str) -> int:
        order = self._permutation(task)
        item = int(order[self._pos[task]])
        self._pos[task] += 1
        if self._pos[task] == len(order):
            self._pos[task] = 0
            self._epoch[task] += 1
            del self._order[task]
        return item

    def next_batch(self) -> list[tuple[str, int]]:
        """This rank's share of the next global batch, as (task, example index) pairs."""
        if self.mixed:
            choices = self.rng.choice(len(self.tasks), size=self.batch_size, p=self.probs)
            global_batch = [(self.tasks[c], self._take(self.tasks[c])) for c in choices]
        else:
            task = self.tasks[int(self.rng.choice(len(self.tasks), p=self.probs))]
            global_batch = [(task, self._take(task)) for _ in range(self.batch_size)]
        return global_batch[self.rank :: self.world_size]

    def state_dict(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "pos": dict(self._pos),
            "epoch": dict(self._epoch),
            "tasks": list(self.tasks),
        }

    def load_state_dict(self, state: dict) -> None:
        if state["tasks"] != self.tasks:
            raise ValueError(f"checkpoint sampler has tasks {state['tasks']}, this run {self.tasks}")
        self.rng.bit_generator.state = state["rng"]
        self._pos = {t: int(v) for t, v in state["pos"].items()}
        self._epoch = {t: int(v) for t, v in state["epoch"].items()}
        self._order.clear()


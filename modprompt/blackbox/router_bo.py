"""MP2 black-box stage 1: Bayesian optimisation of the router logits (scikit-optimize, ask/tell).

The router is K logits shared by every layer (MP2's 8 numbers) or layers × K; each lies in
``[-bound, bound]``. A Gaussian-process surrogate proposes the next logits from every loss seen so far,
which finds a good mix of the pre-trained modules in about a hundred evaluations where K is small.
The optimiser pickles with its random state, so a saved search continues exactly where it stopped.
"""

from __future__ import annotations

import math

import numpy as np


class RouterSearch:
    """Ask for router logits, tell their losses; ``best`` is the lowest loss seen."""

    def __init__(self, shape: tuple[int, ...], bound: float, seed: int, initial_points: int = 10) -> None:
        from skopt import Optimizer

        self.shape = tuple(shape)
        size = math.prod(self.shape)
        self.optimizer = Optimizer(
            [(-float(bound), float(bound))] * size,
            base_estimator="GP",
            n_initial_points=initial_points,
            random_state=seed,
        )

    @property
    def evaluations(self) -> int:
        return len(self.optimizer.yi)

    def ask(self, n: int = 1) -> list[np.ndarray]:
        points = self.optimizer.ask(n_points=n) if n > 1 else [self.optimizer.ask()]
        return [np.asarray(p, dtype=float).reshape(self.shape) for p in points]

    def tell(self, routers: list[np.ndarray], losses: list[float]) -> None:
        self.optimizer.tell([r.reshape(-1).tolist() for r in routers], [float(v) for v in losses])

    @property
    def best(self) -> tuple[np.ndarray, float]:
        index = int(np.argmin(self.optimizer.yi))
        return np.asarray(self.optimizer.Xi[index], dtype=float).reshape(self.shape), float(self.optimizer.yi[index])

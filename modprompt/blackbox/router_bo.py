"""MP2 black-box stage 1: Bayesian optimisation of the router logits (scikit-optimize, ask/tell).

The router is layers × K logits (MP2's deep black-box script: one router per layer) or K logits shared
by every layer; each lies in ``[-bound, bound]``. A Gaussian-process surrogate proposes the next logits
from every loss seen so far. As in MP2's script, the first ``initial_points`` (20) are drawn at random and
the rest maximise the upper confidence bound with κ = 2 of the negated loss, which is scikit-optimize's
lower confidence bound ``mean − κ·std`` of the loss (``acq_func="LCB"``, ``kappa``).

Where it differs from MP2's script, and why: MP2 calls ``bayes_opt.BayesianOptimization`` (an isotropic
Matérn-5/2 GP on the raw logits); this uses scikit-optimize's ``Optimizer`` (a Matérn-5/2 GP with one
length scale per logit and a noise term, on logits scaled to [0, 1]), because its ask/tell interface lets
the search stop after any evaluation and resume exactly: the optimiser pickles with its random state.
The acquisition rule, its κ, the random start and the bound are MP2's.
"""

from __future__ import annotations

import math

import numpy as np


class RouterSearch:
    """Ask for router logits, tell their losses; ``best`` is the lowest loss seen."""

    def __init__(
        self, shape: tuple[int, ...], bound: float, seed: int, initial_points: int = 20, kappa: float | None = 2.0
    ) -> None:
        """``kappa`` None: scikit-optimize's default acquisition (``gp_hedge``), as modprompt used before it
        followed MP2's script (kept so that the runs stored then can be described and repeated)."""
        from skopt import Optimizer

        self.shape = tuple(shape)
        size = math.prod(self.shape)
        acquisition = {} if kappa is None else {"acq_func": "LCB", "acq_func_kwargs": {"kappa": float(kappa)}}
        self.optimizer = Optimizer(
            [(-float(bound), float(bound))] * size,
            base_estimator="GP",
            n_initial_points=initial_points,
            random_state=seed,
            **acquisition,
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

"""Layer-wise CMA-ES over intrinsic prompt vectors: BBTv2's divide and conquer (and BBT with one layer).

Each searched layer has its own CMA-ES (``cma``) over its intrinsic vector, started at zero. Generations
visit the layers in turn: a generation samples a population for one layer while every other layer stays
at its best vector so far, then that layer's best is updated. Each strategy draws its samples from its
own seeded generator (not numpy's global one), and strategies pickle with it, so a search that is saved
after a generation and resumed samples exactly what an uninterrupted search would have.
"""

from __future__ import annotations

import numpy as np


class LayerwiseCMA:
    """One CMA-ES per layer of ``layers`` over ``dim`` numbers in ``[-bound, bound]``."""

    def __init__(self, layers: list[int], dim: int, sigma: float, popsize: int, bound: float, seed: int) -> None:
        import cma

        if not layers:
            raise ValueError("give at least one layer to search")
        self.layers = list(layers)
        self.generation = 0
        self.strategies = {}
        for layer in self.layers:
            layer_seed = seed * 1000 + layer + 1  # cma reads 0 as "seed from the clock"
            options = {
                "popsize": popsize,
                "bounds": [-bound, bound],
                "seed": layer_seed,
                "randn": np.random.RandomState(layer_seed).randn,
                "verbose": -9,
            }
            self.strategies[layer] = cma.CMAEvolutionStrategy(np.zeros(dim), sigma, options)
        self.bound = bound

    @property
    def layer(self) -> int:
        """The layer the next generation searches."""
        return self.layers[self.generation % len(self.layers)]

    def ask(self) -> list[np.ndarray]:
        """The next population, for :attr:`layer`; values clipped to the bound (cma keeps them inside)."""
        return [np.clip(x, -self.bound, self.bound) for x in self.strategies[self.layer].ask()]

    def tell(self, population: list[np.ndarray], losses: list[float]) -> None:
        self.strategies[self.layer].tell(population, [float(v) for v in losses])
        self.generation += 1

    def best(self) -> dict[int, np.ndarray]:
        """Each searched layer's best vector so far (layers not yet searched are left out)."""
        return {
            layer: np.asarray(es.result.xbest, dtype=float)
            for layer, es in self.strategies.items()
            if es.result.xbest is not None
        }

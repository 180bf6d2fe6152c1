"""Layer-wise CMA-ES over intrinsic prompt vectors: MP2's stage 2, BBTv2's divide and conquer (BBT: one layer).

Each searched layer has its own CMA-ES (``cma``) over its intrinsic vector, started at the layer's
``start`` (MP2: the routed mix of the bank's modules; BBT/BBTv2: zero) with step size ``sigma_first`` at
the first searched layer and ``sigma`` at the others (MP2's script: 0.5 and 0.1), every number bounded to
``[-bound, bound]`` with cma's own bound handling (as the scripts do), and the asked values clipped to it
on top so that rounding can never send a value the server refuses. Generations visit the layers in turn:
a generation samples a population for one layer while every other layer stays at its best vector so far,
then that layer's best is updated.

Each strategy draws its samples from its own seeded generator (not numpy's global one), and strategies
pickle with it, so a search that is saved after a generation and resumed samples exactly what an
uninterrupted search would have. MP2's and BBTv2's scripts seed every layer's strategy with the same
seed, so all layers draw the same normal samples; here each layer has a seed of its own, so that the
layers' searches are not correlated by construction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np


class LayerwiseCMA:
    """One CMA-ES per layer of ``layers`` over ``dim`` numbers in ``[-bound, bound]``."""

    def __init__(
        self,
        layers: list[int],
        dim: int,
        sigma: float,
        popsize: int,
        bound: float,
        seed: int,
        starts: Mapping[int, Sequence[float]] | None = None,
        sigma_first: float | None = None,
    ) -> None:
        """``starts``: each layer's start (clipped to the bound; default zero); ``sigma_first``: the first
        layer's step size (default ``sigma``)."""
        import cma

        if not layers:
            raise ValueError("give at least one layer to search")
        self.layers = list(layers)
        self.generation = 0
        self.strategies = {}
        self.sigmas = {layer: sigma for layer in self.layers}
        if sigma_first is not None:
            self.sigmas[self.layers[0]] = sigma_first
        for layer in self.layers:
            layer_seed = seed * 1000 + layer + 1  # cma reads 0 as "seed from the clock"
            options = {
                "popsize": popsize,
                "bounds": [-bound, bound],
                "seed": layer_seed,
                "randn": np.random.RandomState(layer_seed).randn,
                "verbose": -9,
            }
            start = np.zeros(dim) if starts is None or layer not in starts else np.asarray(starts[layer], dtype=float)
            if start.shape != (dim,):
                raise ValueError(f"layer {layer}: start of shape {start.shape}, expected ({dim},)")
            start = np.clip(start, -bound, bound)
            self.strategies[layer] = cma.CMAEvolutionStrategy(start, self.sigmas[layer], options)
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

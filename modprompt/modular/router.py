"""Per-task routers that select and mix a layer's prompt modules.

A router holds K logits per task and layer (``per_layer``) or K per task shared by every layer
(``shared``: exactly K = 8 trainable numbers for a new task). While training, module selection is a
relaxed Bernoulli (Gumbel-sigmoid) sample at a temperature annealed towards hard choices; at
inference it is the plain sigmoid. The selected weights are normalised to sum to 1 over modules.

The normalisation is done in log space (a softmax of the log-selections, which equals
``s / Σ s`` exactly): at a low temperature with negative logits every sample can underflow, and a
plain ``s / (Σ s + ε)`` would then shrink the whole prompt towards zero instead of keeping weights
that sum to 1.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

_EPS = 1e-6


def log_selection(
    logits: torch.Tensor, temperature: float | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """log s of each module's selection s in (0, 1).

    ``temperature`` set: a relaxed-Bernoulli (Gumbel-sigmoid / binary concrete) sample of
    Bernoulli(sigmoid(logits)); ``None``: the plain sigmoid. The noise is drawn on the generator's
    device (the CPU for a CPU generator) and then moved to the logits', so a seeded run samples the
    same routes on every device.
    """
    if temperature is None:
        return F.logsigmoid(logits)
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=device).to(logits.device)
    u = u.clamp(_EPS, 1 - _EPS)
    return F.logsigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def route_weights(
    logits: torch.Tensor, temperature: float | None = None, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Module weights that sum to exactly 1 over the last axis: ``s / Σ s`` for the selections s."""
    return torch.softmax(log_selection(logits, temperature, generator), dim=-1)


class Router(nn.Module):
    """Routing logits for a list of tasks: (tasks, layers, K), or (tasks, K) when shared."""

    def __init__(self, tasks: list[str], num_layers: int, num_modules: int, shared: bool = False) -> None:
        super().__init__()
        if len(set(tasks)) != len(tasks):
            raise ValueError("router task names must be distinct")
        self.tasks = list(tasks)
        self.num_layers = num_layers
        self.shared = shared
        shape = (len(tasks), num_modules) if shared else (len(tasks), num_layers, num_modules)
        # Small random logits: near-uniform mixing at first, with symmetry between modules broken.
        self.logits = nn.Parameter(torch.empty(shape).uniform_(-1e-2, 1e-2))

    def task_index(self, task: str) -> int:
        try:
            return self.tasks.index(task)
        except ValueError:
            raise KeyError(f"router has no task {task!r}; it routes {self.tasks}") from None

    def forward(
        self, task_ids: torch.Tensor, temperature: float | None = None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Mixing weights (batch, layers, K) for each example's task.

        ``temperature`` set: a relaxed-Bernoulli sample (training); ``None``: the sigmoid (inference).
        """
        logits = self.logits[task_ids]
        if self.shared:
            logits = logits.unsqueeze(1).expand(-1, self.num_layers, -1)
        return route_weights(logits, temperature, generator)


def annealed_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """Exponential annealing from ``start`` to ``end`` over ``total_steps`` (constant afterwards)."""
    if total_steps <= 0:
        return end
    frac = min(max(step / total_steps, 0.0), 1.0)
    return start * (end / start) ** frac

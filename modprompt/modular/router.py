"""Per-task routers that select and mix a layer's prompt modules.

A router holds K logits per task and layer (``per_layer``) or K per task shared by every layer
(``shared``: exactly K = 8 trainable numbers for a new task). While training, module selection is a
relaxed Bernoulli (Gumbel-sigmoid) sample at a temperature annealed towards hard choices; at
inference it is the plain sigmoid. The selected weights are normalised to sum to 1 over modules.
"""

from __future__ import annotations

import torch
from torch import nn

_EPS = 1e-6


def relaxed_bernoulli(logits: torch.Tensor, temperature: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """A differentiable sample in (0, 1) of Bernoulli(sigmoid(logits)) (Gumbel-sigmoid / binary concrete).

    The noise is drawn on the generator's device (the CPU for a CPU generator) and then moved to the
    logits', so a seeded run samples the same routes on every device.
    """
    device = generator.device if generator is not None else logits.device
    u = torch.rand(logits.shape, generator=generator, dtype=logits.dtype, device=device).to(logits.device)
    u = u.clamp(_EPS, 1 - _EPS)
    return torch.sigmoid((logits + torch.log(u) - torch.log1p(-u)) / temperature)


def normalise(selection: torch.Tensor) -> torch.Tensor:
    """Scale selection weights to sum to 1 over the module axis (the last)."""
    return selection / (selection.sum(-1, keepdim=True) + _EPS)


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
        selection = torch.sigmoid(logits) if temperature is None else relaxed_bernoulli(logits, temperature, generator)
        return normalise(selection)


def annealed_temperature(step: int, total_steps: int, start: float, end: float) -> float:
    """Exponential annealing from ``start`` to ``end`` over ``total_steps`` (constant afterwards)."""
    if total_steps <= 0:
        return end
    frac = min(max(step / total_steps, 0.0), 1.0)
    return start * (end / start) ** frac

"""Configuration of a deep modular prompt bank and its routers."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from modprompt.config_utils import config_from_dict


@dataclass
class ModularPromptConfig:
    """Shape and routing of a prompt bank (MP2).

    Each of the ``num_layers`` layers has ``num_modules`` prompt modules. A module is an intrinsic
    matrix of ``num_tokens × rank`` numbers, projected to the layer's prompt (``num_tokens × hidden``)
    by that layer's ``rank × hidden`` projection: MP2's low-rank intrinsic form with the projection
    factored per token, so a bank for Gemma 3 270M weighs well under a megabyte instead of the
    layers × d × n × hidden tensor of a dense projection (see ``modprompt/modular/bank.py``).
    """

    num_layers: int
    hidden_size: int
    num_modules: int = 8
    num_tokens: int = 16
    rank: int = 16
    #: Router over modules: "per_layer" has layers × K logits per task, "shared" exactly K.
    router: str = "per_layer"
    #: Relaxed-Bernoulli temperature, annealed from start to end over training.
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.router not in ("per_layer", "shared"):
            raise ValueError(f"router must be 'per_layer' or 'shared', not {self.router!r}")
        for name in ("num_layers", "hidden_size", "num_modules", "num_tokens", "rank"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")

    @property
    def intrinsic_size(self) -> int:
        """Numbers in one layer's intrinsic prompt: what the black-box stage searches per layer."""
        return self.num_tokens * self.rank

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModularPromptConfig:
        return config_from_dict(cls, data, "prompt-bank")

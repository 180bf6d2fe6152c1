"""What black-box tuning sends and gets back, in plain Python: spaces, candidates, results, model facts.

Nothing here imports torch, so a client that only calls a served model stays light. The same
objects travel as JSON between :mod:`modprompt.blackbox.client` and :mod:`modprompt.blackbox.server`
(``to_dict`` / ``from_dict``) and are passed as they are to an in-process scorer.

A candidate is read in a *space*:

* ``bank`` (MP2): layer ``l``'s intrinsic prompt is the routed mix of the bank's modules,
  ``Σ_k w[l, k] Z[l, k]`` with ``w = route_weights(router)`` (the sigmoids, normalised), plus the candidate's offset
  ``intrinsic[l]`` (``n × r`` numbers, row-major); the bank's learned projection lifts it to the layer's
  prompt. Without a router the mix is zero, without an offset the offset is zero. So a candidate with no
  router (and a base without one) states each layer's intrinsic vector itself: that is how ``mp2-bb``
  searches MP2's bounded intrinsic vectors, started at :func:`routed_mix` of the chosen router.
* ``random`` (BBT, BBTv2): layer ``l``'s prompt is ``A_l z_l`` with ``z_l = intrinsic[l]`` (``dim``
  numbers) and ``A_l`` a fixed random projection drawn from ``seed``, its entries normal with std
  ``scale[l] / sqrt(dim)``; layers without a vector get no prompt. There is no router. BBT and BBTv2
  set ``scale[l]`` to the hidden states' spread (:meth:`~modprompt.blackbox.objective.Objective.spread`)
  over their CMA-ES step size, so that their first candidates have the spread of the states they are
  added to; without ``scale`` it is the bank's layer RMS (runs made before this field).

A request may carry a *base* candidate: each candidate is the base with the candidate's own router (if
any) and its own layers' vectors put in place of the base's. Layer-wise search then sends the current
best once and a few hundred numbers per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from modprompt.data.mrc import MRCExample


@dataclass(frozen=True)
class Space:
    """How candidate vectors become prompts (see the module docstring)."""

    kind: str = "bank"
    seed: int = 0  # random space: seed of the projections
    dim: int = 0  # random space: numbers per layer
    scale: tuple[float, ...] | None = None  # random space: per-layer projection scale (None: the bank's RMS)

    def __post_init__(self) -> None:
        if self.scale is not None:  # hashable and frozen, whatever sequence it was given as
            object.__setattr__(self, "scale", tuple(float(s) for s in self.scale))

    def to_dict(self) -> dict:
        if self.kind != "random":
            return {"kind": self.kind}
        data = {"kind": self.kind, "seed": self.seed, "dim": self.dim}
        return data if self.scale is None else {**data, "scale": list(self.scale)}

    @classmethod
    def from_dict(cls, data: dict) -> Space:
        return cls(**data)

    @classmethod
    def bank(cls) -> Space:
        return cls("bank")

    @classmethod
    def random(cls, seed: int, dim: int, scale: Sequence[float] | None = None) -> Space:
        return cls("random", seed, dim, None if scale is None else tuple(scale))


@dataclass
class Candidate:
    """Router logits (K numbers, or layers × K) and per-layer intrinsic vectors, by layer index."""

    router: list[float] | list[list[float]] | None = None
    intrinsic: dict[int, list[float]] = field(default_factory=dict)

    def over(self, base: Candidate | None) -> Candidate:
        """This candidate laid over ``base``: its router and layers replace the base's."""
        if base is None:
            return self
        return Candidate(self.router if self.router is not None else base.router, {**base.intrinsic, **self.intrinsic})

    def to_dict(self) -> dict:
        data: dict = {"intrinsic": {str(layer): list(v) for layer, v in sorted(self.intrinsic.items())}}
        if self.router is not None:
            data["router"] = self.router
        return data

    @classmethod
    def from_dict(cls, data: dict) -> Candidate:
        intrinsic = {int(layer): list(v) for layer, v in (data.get("intrinsic") or {}).items()}
        return cls(data.get("router"), intrinsic)


@dataclass
class CandidateResult:
    """One candidate on one example set: mean span loss and accuracy over the labelled examples
    (``None`` when none is labelled) and, if asked for, each example's per-option log-scores."""

    loss: float | None
    accuracy: float | None
    scores: list[list[float]] | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> CandidateResult:
        return cls(data["loss"], data["accuracy"], data.get("scores"))


@dataclass
class ScoreReply:
    """A scorer's answer for one example set: per-candidate results and what the work cost."""

    results: list[CandidateResult]
    examples: int
    labelled: int
    tokens: int  # real input tokens processed, over every candidate
    cache: dict = field(default_factory=dict)  # this request's layer-cache hits, misses and blocks skipped

    def to_dict(self) -> dict:
        return {**asdict(self), "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict) -> ScoreReply:
        return cls(
            [CandidateResult.from_dict(r) for r in data["results"]],
            data["examples"],
            data["labelled"],
            data["tokens"],
            data.get("cache", {}),
        )


@dataclass
class Limits:
    """What one request may carry; a served model states its own in ``/v1/info``.

    Each field's help is that of its ``modprompt serve`` flag (``--max-body-bytes`` ...)."""

    max_body_bytes: int = field(default=16 * 2**20, metadata={"help": "largest request body in bytes"})
    max_candidates: int = field(default=64, metadata={"help": "candidates per request"})
    max_examples: int = field(default=512, metadata={"help": "examples per upload or inline request"})
    max_text_chars: int = field(default=20_000, metadata={"help": "characters per query, passage or option"})
    max_options: int = field(default=256, metadata={"help": "options per example"})
    max_datasets: int = field(
        default=64, metadata={"help": "example sets kept on the server; the least recently used goes first"}
    )
    timeout_s: float = field(default=300.0, metadata={"help": "seconds one request may take"})

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelInfo:
    """The facts an optimiser needs about the model it tunes."""

    backbone: dict
    num_layers: int
    hidden_size: int
    num_modules: int
    num_tokens: int
    rank: int
    bound: float  # every router logit and intrinsic number must lie in [-bound, bound]
    max_random_dim: int
    max_length: int
    limits: Limits | None = None  # None: in-process, no request limits

    @property
    def intrinsic_size(self) -> int:
        return self.num_tokens * self.rank

    def to_dict(self) -> dict:
        data = asdict(self)
        data["intrinsic_size"] = self.intrinsic_size
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if known.get("limits") is not None:
            known["limits"] = Limits(**known["limits"])
        return cls(**known)


def example_to_dict(example: MRCExample) -> dict:
    """The fields a served model needs of an option example (never a file path or source)."""
    return {
        "query": example.query,
        "passage": example.passage,
        "options": list(example.options),
        "label": example.label,
    }


def example_from_dict(data: dict, index: int) -> MRCExample:
    return MRCExample(
        task="remote",
        query=data["query"],
        passage=data["passage"],
        options=tuple(data["options"]),
        label=data.get("label"),
        source=f"examples[{index}]",
    )


def merge_results(parts: Sequence[ScoreReply]) -> list[CandidateResult]:
    """Results over consecutive example sets combined as if scored at once (label-weighted means)."""
    merged = []
    for i in range(len(parts[0].results)):
        pieces = [(p.results[i], p.labelled) for p in parts]
        labelled = sum(n for _, n in pieces)
        loss = math.fsum(r.loss * n for r, n in pieces if n) / labelled if labelled else None
        accuracy = math.fsum(r.accuracy * n for r, n in pieces if n) / labelled if labelled else None
        scores = None if any(r.scores is None for r, _ in pieces) else [s for r, _ in pieces for s in r.scores]
        merged.append(CandidateResult(loss, accuracy, scores))
    return merged


def routed_mix(modules: np.ndarray, router: Sequence | np.ndarray) -> np.ndarray:
    """Each layer's routed intrinsic prompt, flattened: ``(layers, n × r)``.

    ``modules`` are the bank's intrinsic module matrices ``Z`` of shape ``(layers, K, n, r)``; ``router``
    is K logits (shared by every layer) or layers × K. Each module's weight is its sigmoid selection over
    their sum, as the router weighs modules at inference (computed in log space, so that very negative
    logits cannot underflow to a zero sum), in float32 as the scorer mixes, so the result is the scorer's
    mix to rounding. Plain numpy: a client that only calls a served model need not import torch.
    """
    modules = np.asarray(modules, dtype=np.float32)
    layers, k = modules.shape[:2]
    logits = np.asarray(router, dtype=np.float32)
    if logits.shape not in ((k,), (layers, k)):
        raise ValueError(f"router of shape {logits.shape} for {layers} layers of {k} modules")
    log_selection = -np.logaddexp(np.float32(0), -logits)  # log sigmoid
    weights = np.exp(log_selection - log_selection.max(-1, keepdims=True))
    weights = np.broadcast_to(weights / weights.sum(-1, keepdims=True), (layers, k))
    return np.einsum("lk,lknr->lnr", weights, modules).reshape(layers, -1)

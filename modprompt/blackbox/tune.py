"""Black-box tuning runs: MP2's two black-box stages and the BBT / BBTv2 baselines, resumable.

Methods (every one only calls an :class:`~modprompt.blackbox.objective.Objective`, in-process or remote):

* ``mp2-bb``: stage 1 searches the router logits by Bayesian optimisation (:mod:`.router_bo`; shared K
  logits or layers × K); stage 2 runs layer-wise CMA-ES (:mod:`.cmaes`) over every layer's intrinsic
  offset (n × r numbers) from the routed mix of the pre-trained modules, projected by the bank.
* ``bbt``: CMA-ES over one input-layer prompt, ``A z`` with a fixed random projection ``A`` (``dim``
  → n × hidden); no bank modules, router or learned projection.
* ``bbtv2``: the same at every layer, layer-wise (divide and conquer); no bank.

The baselines score through the served model's MRC span head (pre-trained with the bank: a black-box
user cannot train a head), so "no bank" means no prompt modules, router or learned projection.

Every ``dev_every`` generations (and after stage 1, and at the end) the current best is scored on the
dev set; the candidate with the best dev accuracy (then loss) is the one tested. The whole state (the
optimisers with their random generators, the best so far, the counters) is saved after every
generation, so a run killed at any point (a dropped connection after the client's retries, a killed
process) resumes from its last generation with the same result it would have had.

Defaults (``TuneConfig``) are MP2's: 100 router evaluations, 3000 prompt evaluations, population 20,
sigma 0.1 for MP2's offsets from the routed mix and 0.5 for the baselines' vectors from zero, bound 5.
``PRESETS["cpu"]`` is sized for a 2-core CPU and Gemma 3 270M: 20 router evaluations (5 random),
360 prompt evaluations at population 10 (two rounds over 18 layers).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from modprompt.blackbox.cmaes import LayerwiseCMA
from modprompt.blackbox.objective import ExampleSet, Objective, Usage
from modprompt.blackbox.params import Candidate, ModelInfo, Space
from modprompt.blackbox.state import load_state, save_state
from modprompt.config_utils import config_from_dict
from modprompt.data.mrc import MRCExample

logger = logging.getLogger(__name__)

METHODS = ("mp2-bb", "bbt", "bbtv2")
PRESETS: dict[str, dict] = {
    "mp2": {},
    "cpu": {"router_evaluations": 20, "router_initial_points": 5, "prompt_evaluations": 360, "popsize": 10},
}


@dataclass
class TuneConfig:
    method: str
    seed: int = 0
    #: examples per label for train (and dev) of tasks without official few-shot files
    k_per_label: int = 16
    #: mp2-bb stage 1: "shared" (K logits for every layer) or "per_layer" (layers × K)
    router: str = "shared"
    router_evaluations: int = 100
    router_initial_points: int = 10
    #: router candidates per call (skopt's constant-liar batch); 1 is plain sequential BO
    router_batch: int = 1
    prompt_evaluations: int = 3000
    popsize: int = 20
    #: CMA-ES step size; None: 0.1 for mp2-bb (offsets from a good start), 0.5 for bbt/bbtv2
    sigma: float | None = None
    bound: float = 5.0
    #: bbt/bbtv2 numbers per layer; None: the model's intrinsic size n × r (MP2's stage-2 dimension)
    dim: int | None = None
    #: generations between dev evaluations; None: one round over the searched layers
    dev_every: int | None = None
    #: CPU budget caps: score only the first N of a fixed shuffle of the test (dev) set
    test_limit: int | None = None
    dev_limit: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown black-box method {self.method!r}; expected one of {METHODS}")
        if self.router not in ("shared", "per_layer"):
            raise ValueError(f"router must be 'shared' or 'per_layer', not {self.router!r}")
        for name in ("router_initial_points", "router_batch", "popsize"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("router_evaluations", "prompt_evaluations"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.bound <= 0 or (self.sigma is not None and self.sigma <= 0):
            raise ValueError("bound and sigma must be positive")

    @classmethod
    def preset(cls, name: str, method: str, seed: int = 0, **overrides) -> TuneConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(method, seed, **{**PRESETS[name], **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def step_size(self) -> float:
        return self.sigma if self.sigma is not None else (0.1 if self.method == "mp2-bb" else 0.5)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TuneConfig:
        return config_from_dict(cls, data, "black-box")


def _combine(a: dict, b: dict, sign: int = 1) -> dict:
    """Counters ``a + sign * b`` field by field (the layer-cache counters included)."""
    merged = {}
    for key in set(a) | set(b):
        if key == "cache":
            merged[key] = _combine(a.get(key, {}), b.get(key, {}), sign)
        else:
            merged[key] = a.get(key, 0) + sign * b.get(key, 0)
    return merged


class _Run:
    """One method on one task's splits; ``state`` is everything that is saved after each generation."""

    def __init__(self, objective: Objective, config: TuneConfig, info: ModelInfo, train: ExampleSet,
                 dev: ExampleSet | None, state: dict, state_path: Path | None) -> None:  # fmt: skip
        self.objective = objective
        self.config = config
        self.info = info
        self.train = train
        self.dev = dev
        self.state = state
        self.state_path = state_path
        # Usage is counted per session: what the state held, plus what the objective did since.
        self.usage_at_start = state["usage"]
        self.objective_usage_at_start = objective.usage.to_dict()
        self.seconds_at_start = state["train_seconds"]
        if config.method == "mp2-bb":
            self.space = Space.bank()
        else:
            self.space = Space.random(config.seed, config.dim or info.intrinsic_size)

    # -- the state ------------------------------------------------------------------------------------

    @staticmethod
    def new_state(config: TuneConfig, info: ModelInfo, fingerprint: dict) -> dict:
        layers = [0] if config.method == "bbt" else list(range(info.num_layers))
        dim = info.intrinsic_size if config.method == "mp2-bb" else (config.dim or info.intrinsic_size)
        router_shape = (info.num_modules,) if config.router == "shared" else (info.num_layers, info.num_modules)
        search = None
        if config.method == "mp2-bb" and config.router_evaluations:
            from modprompt.blackbox.router_bo import RouterSearch

            initial = min(config.router_initial_points, config.router_evaluations)
            search = RouterSearch(router_shape, config.bound, config.seed, initial)
        return {
            "fingerprint": fingerprint,
            "stage": "router" if search is not None else "prompt",
            "router_search": search,
            "router": None,
            "router_shape": router_shape if config.method == "mp2-bb" else None,
            "cma": LayerwiseCMA(layers, dim, config.step_size, config.popsize, config.bound, config.seed),
            "evaluations": {"router": 0, "prompt": 0, "dev": 0},
            "examples_seen": 0,
            "usage": Usage().to_dict(),
            "train_seconds": 0.0,
            "best_dev": None,
            "history": [],
            "sessions": 0,
        }

    def usage(self) -> dict:
        session = _combine(self.objective.usage.to_dict(), self.objective_usage_at_start, -1)
        return _combine(self.usage_at_start, session)

    def save(self, session_started: float) -> None:
        self.state["usage"] = self.usage()
        self.state["train_seconds"] = self.seconds_at_start + time.perf_counter() - session_started
        if self.state_path is not None:
            save_state(self.state_path, self.state)

    # -- candidates -----------------------------------------------------------------------------------

    def current(self) -> Candidate:
        intrinsic = {layer: x.tolist() for layer, x in self.state["cma"].best().items()}
        return Candidate(self.state["router"], intrinsic)

    def trainable_parameters(self) -> int:
        generations = self.config.prompt_evaluations // self.config.popsize
        searched = len(self.state["cma"].layers) * self.space_dim if generations else 0
        shape = self.state["router_shape"]
        return searched + (math.prod(shape) if shape and self.config.router_evaluations else 0)

    @property
    def space_dim(self) -> int:
        return self.info.intrinsic_size if self.space.kind == "bank" else self.space.dim

    def _train_losses(self, candidates: list[Candidate], base: Candidate | None) -> list[float]:
        results = self.objective.evaluate(self.train, candidates, self.space, base)
        self.state["examples_seen"] += self.train.size * len(candidates)
        return [r.loss for r in results]

    def dev_check(self, at: str) -> None:
        """Score the current best on dev; keep it if it beats the best so far (accuracy, then loss)."""
        if self.dev is None:
            return
        candidate = self.current()
        result = self.objective.evaluate(self.dev, [candidate], self.space)[0]
        self.state["evaluations"]["dev"] += 1
        if result.accuracy is None:
            return
        best = self.state["best_dev"]
        if best is None or (result.accuracy, -result.loss) > (best["accuracy"], -best["loss"]):
            self.state["best_dev"] = {"accuracy": result.accuracy, "loss": result.loss, "at": at,
                                      "candidate": candidate}  # fmt: skip
        logger.info("dev at %s: accuracy %.4f, loss %.4f (best %.4f at %s)", at, result.accuracy, result.loss,
                    self.state["best_dev"]["accuracy"], self.state["best_dev"]["at"])  # fmt: skip

    # -- the stages -----------------------------------------------------------------------------------

    def run(self) -> None:
        session_started = time.perf_counter()
        self.state["sessions"] += 1
        c, state = self.config, self.state
        if state["stage"] == "router":
            search = state["router_search"]
            while search.evaluations < c.router_evaluations:
                routers = search.ask(min(c.router_batch, c.router_evaluations - search.evaluations))
                losses = self._train_losses([Candidate(router=r.tolist()) for r in routers], None)
                search.tell(routers, losses)
                state["evaluations"]["router"] += len(routers)
                best_loss = search.best[1]
                state["history"].append({"stage": "router", "evaluations": search.evaluations, "best_loss": best_loss})
                logger.info("router %d/%d: best train loss %.4f", search.evaluations, c.router_evaluations, best_loss)
                self.save(session_started)
            state["router"] = search.best[0].tolist()
            state["router_search"] = None  # its job is done; the state stays small
            state["stage"] = "prompt"
            self.dev_check("router")
            self.save(session_started)
        if state["stage"] == "prompt":
            cma = state["cma"]
            generations = c.prompt_evaluations // c.popsize
            dev_every = c.dev_every or len(cma.layers)
            while cma.generation < generations:
                layer = cma.layer
                population = cma.ask()
                population_candidates = [Candidate(intrinsic={layer: x.tolist()}) for x in population]
                losses = self._train_losses(population_candidates, self.current())
                cma.tell(population, losses)
                state["evaluations"]["prompt"] += len(population)
                state["history"].append({"stage": "prompt", "generation": cma.generation, "layer": layer,
                                         "best_loss": min(losses), "mean_loss": float(np.mean(losses))})  # fmt: skip
                logger.info("generation %d/%d (layer %d): best loss %.4f, mean %.4f", cma.generation, generations,
                            layer, min(losses), float(np.mean(losses)))  # fmt: skip
                if cma.generation % dev_every == 0 or cma.generation == generations:
                    self.dev_check(f"generation {cma.generation}")
                self.save(session_started)
            if generations == 0 and state["best_dev"] is None:
                self.dev_check("start")
            state["stage"] = "done"
            self.save(session_started)

    def final(self) -> Candidate:
        best = self.state["best_dev"]
        return best["candidate"] if best is not None else self.current()


def _fingerprint(config: TuneConfig, info: ModelInfo, task: str, train: ExampleSet, dev: ExampleSet | None) -> dict:
    model = {k: getattr(info, k) for k in ("num_layers", "hidden_size", "num_modules", "num_tokens", "rank", "bound")}
    model["backbone"] = info.backbone.get("name")
    settings = {k: v for k, v in config.to_dict().items() if k != "test_limit"}  # testing does not change the search
    return {"config": settings, "task": task, "model": model, "train": train.parts,
            "dev": dev.parts if dev else None}  # fmt: skip


def tune(
    objective: Objective,
    task: str,
    train: Sequence[MRCExample],
    dev: Sequence[MRCExample],
    test: Sequence[MRCExample],
    config: TuneConfig,
    state_path: str | Path | None = None,
) -> dict:
    """Run (or resume from ``state_path``) one black-box method; test the dev-selected candidate.

    The result has the fields of ``modprompt adapt``'s (method, task, seed, trainable_parameters,
    metric, test, best_dev, train_seconds, examples_seen, ...) plus the calls, evaluations and tokens.
    """
    if not train or any(e.label is None for e in train):
        raise ValueError(f"{task}: black-box tuning needs a labelled training set")
    info = objective.info
    train_set = objective.upload(train)
    dev_set = objective.upload(dev) if dev else None
    fingerprint = _fingerprint(config, info, task, train_set, dev_set)
    state_path = Path(state_path) if state_path is not None else None
    state = load_state(state_path) if state_path is not None else None
    if state is None:
        state = _Run.new_state(config, info, fingerprint)
    elif state["fingerprint"] != fingerprint:
        differs = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        raise ValueError(f"{state_path} holds a run with other {', '.join(differs)}; use another --state path")
    else:
        logger.info("resuming %s from %s (stage %s)", config.method, state_path, state["stage"])
    run = _Run(objective, config, info, train_set, dev_set, state, state_path)
    run.run()

    test_started = time.perf_counter()
    final = run.final()
    metrics: dict = {}
    if test:
        result = objective.evaluate(objective.upload(test), [final], run.space)[0]
        metrics = {"examples": len(test), "accuracy": result.accuracy, "loss": result.loss}
    usage = run.usage()
    best = state["best_dev"]
    return {
        "method": config.method,
        "task": task,
        "seed": config.seed,
        "trainable_parameters": run.trainable_parameters(),
        "metric": metrics.get("accuracy"),
        "test": metrics,
        "best_dev": None if best is None else {k: v for k, v in best.items() if k != "candidate"},
        "train_seconds": state["train_seconds"],
        "test_seconds": time.perf_counter() - test_started,
        "examples_seen": state["examples_seen"],
        "calls": usage["calls"],
        "evaluations": {**state["evaluations"], "test": 1 if test else 0},
        "tokens": usage["tokens"],
        "cache": usage["cache"],
        "sessions": state["sessions"],
        "examples": {"train": len(train), "dev": len(dev), "test": len(test)},
        "backbone": info.backbone.get("name"),
        "config": config.to_dict(),
        "parameters": final.to_dict(),
        "history": state["history"],
    }


def tune_task(objective: Objective, task: str, data_root: str | Path, config: TuneConfig,
              state_path: str | Path | None = None) -> dict:  # fmt: skip
    """``tune`` on a registered task's few-shot split of ``config.seed`` (as ``modprompt adapt`` splits it)."""
    from modprompt.data.fewshot import fewshot_splits

    train, dev, test = fewshot_splits(task, config.seed, data_root, config.k_per_label)
    if config.test_limit is not None or config.dev_limit is not None:
        from modprompt.adapt.run import subset

        dev, test = subset(dev, config.dev_limit), subset(test, config.test_limit)
    return tune(objective, task, train, dev, test, config, state_path)

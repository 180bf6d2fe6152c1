"""Black-box tuning runs: MP2's two black-box stages and the BBT / BBTv2 baselines, resumable.

Methods (every one only calls an :class:`~modprompt.blackbox.objective.Objective`, in-process or remote):

* ``mp2-bb``: stage 1 searches the router logits by Bayesian optimisation (:mod:`.router_bo`; one router
  per layer, layers × K, as MP2's deep black-box script, or K logits shared by every layer); stage 2 runs
  layer-wise CMA-ES (:mod:`.cmaes`) over every layer's intrinsic vector (n × r numbers), started at the
  routed mix of the pre-trained modules and projected by the bank.
* ``bbt``: CMA-ES over one input-layer prompt, ``A z`` with a fixed random projection ``A`` (``dim``
  → n × hidden); no bank modules, router or learned projection.
* ``bbtv2``: the same at every layer, layer-wise (divide and conquer); no bank.

Both size ``A_l`` as BBTv2's normal projection (``--random_proj normal`` of ``deepbbt.py``): entries of
std ``ŝ_l / (sqrt(dim) σ_l)``, ``ŝ_l`` the spread of the hidden states entering layer ``l`` on the
training inputs with no prompt (their std after five rounds of clipping at ±3 std,
:meth:`Objective.spread <modprompt.blackbox.objective.Objective.spread>`, measured once at the start of a
run and kept in its state) and ``σ_l`` the layer's CMA-ES step size, so the first candidates' prompts have
the spread of the states they are added to. Two deliberate differences: layer 0's spread is measured on
its inputs like every other layer's, where BBT and BBTv2 take the std of the embedding matrix (on Gemma 3
270M 0.95 on text against 1.03 for the scaled matrix), so that one rule holds for every backbone; and only
real tokens count, where BBTv2's statistics include the padding.

The baselines score through the served model's MRC span head (pre-trained with the bank: a black-box
user cannot train a head), so "no bank" means no prompt modules, router or learned projection.

Selection on dev, as in MP2's script: in stage 1, the router evaluated at every ``router_dev_every``-th
evaluation (10) is scored on dev and the one with the best dev accuracy is kept (not the one with the
lowest train loss); in stage 2 the current best is scored on dev every ``dev_every`` generations (5, i.e.
every 100 evaluations at population 20) and at the end, and it replaces the kept candidate only if its dev
accuracy beats every one before it, the routers' included. The kept candidate is the one tested. The whole
state (the optimisers with their random generators, the best so far, the counters) is saved after every
generation, so a run killed at any point (a dropped connection after the client's retries, a killed
process) resumes from its last generation with the same result it would have had.

Defaults (``TuneConfig``, ``--preset mp2``) are those of MP2's black-box script (``Deep/deepbbt.py`` of
MP2's code, github.com/Hzfinfdu/MPMP): 100 router evaluations of which 20 random, UCB with κ = 2, one router
per layer, 3000 prompt evaluations spent in whole rounds over the layers, population 20, σ = 0.5 at the first
layer and 0.1 at the others, every router logit and intrinsic number bounded to [-5, 5]. The baselines keep
BBTv2's σ = 0.5 (``deepbbt.py`` of github.com/txsun1997/Black-Box-Tuning) from a zero start.

Where ``--preset mp2`` deliberately differs from MP2's script, and why:

* the GP is scikit-optimize's, not ``bayes_opt``'s (see :mod:`.router_bo`): ask/tell lets a run resume;
* a stage-2 dev check scores the current best of every layer; MP2's scores whatever candidate was
  evaluated at that call (the last of a population), which is an accident of where its check sits;
* ties in dev accuracy go to the lower dev loss (MP2 keeps the first): dev sets of 32 examples tie often;
* each layer's CMA-ES has its own seed (see :mod:`.cmaes`);
* the stage-2 dimension is the bank's n × r (256 for the released bank), not MP2's d = 300 (see the README
  on the bank's representation).

``PRESETS["cpu"]`` (:mod:`.config`) gives every method the same 2-core-CPU budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modprompt.blackbox.cmaes import LayerwiseCMA
from modprompt.blackbox.config import PAPER_BUDGETS, TuneConfig
from modprompt.blackbox.objective import ExampleSet, Objective, Usage
from modprompt.blackbox.params import Candidate, ModelInfo, Space, routed_mix
from modprompt.blackbox.state import load_state, save_state
from modprompt.data.mrc import MRCExample
from modprompt.progress import Progress

logger = logging.getLogger(__name__)

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
                 dev: ExampleSet | None, state: dict, state_path: Path | None,
                 modules: np.ndarray | None = None, check_modules: bool = False,
                 progress: bool | None = None) -> None:  # fmt: skip
        self.objective = objective
        self.config = config
        self.info = info
        self.train = train
        self.dev = dev
        self.state = state
        self.state_path = state_path
        self.modules = modules
        self.check_modules = check_modules
        # Usage is counted per session: what the state held, plus what the objective did since.
        self.usage_at_start = state["usage"]
        self.objective_usage_at_start = objective.usage.to_dict()
        self.seconds_at_start = state["train_seconds"]
        done = state["evaluations"]["router"] + state["evaluations"]["prompt"]
        #: one bar over the run's train evaluations (resumed where the state stopped), with dev accuracy
        self.bar = Progress(self.evaluations_planned(), config.method, "eval", progress, initial=done)

    # -- the state ------------------------------------------------------------------------------------

    @staticmethod
    def new_state(config: TuneConfig, info: ModelInfo, fingerprint: dict) -> dict:
        router_shape = (info.num_modules,) if config.router == "shared" else (info.num_layers, info.num_modules)
        search = None
        if config.method == "mp2-bb" and config.router_evaluations:
            from modprompt.blackbox.router_bo import RouterSearch

            initial = min(config.router_initial_points, config.router_evaluations)
            search = RouterSearch(router_shape, config.bound, config.seed, initial, config.router_kappa)
        return {
            "fingerprint": fingerprint,
            "stage": "router" if search is not None else "prompt",
            "router_search": search,
            "router": None,
            "router_shape": router_shape if config.method == "mp2-bb" else None,
            # mp2-bb's strategies start where stage 1 ends, so they are made then (see _start_prompts)
            "cma": None if config.method == "mp2-bb" else _Run.new_cma(config, info, None),
            # mp2-bb searching intrinsic vectors: each layer's start, the routed mix (plain lists)
            "start": None,
            "evaluations": {"router": 0, "prompt": 0, "dev": 0},
            "examples_seen": 0,
            "usage": Usage().to_dict(),
            "train_seconds": 0.0,
            "best_dev": None,
            "history": [],
            "sessions": 0,
            # bbt / bbtv2: the hidden states' spread per layer on the train inputs, measured at the start
            "spread": None,
        }

    @staticmethod
    def new_cma(config: TuneConfig, info: ModelInfo, starts: dict[int, list[float]] | None) -> LayerwiseCMA:
        layers = [0] if config.method == "bbt" else list(range(info.num_layers))
        dim = info.intrinsic_size if config.method == "mp2-bb" else (config.dim or info.intrinsic_size)
        first, rest = config.step_sizes
        return LayerwiseCMA(layers, dim, rest, config.popsize, config.bound, config.seed, starts, first)

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
        """The best so far: in stage 1 the chosen router, in stage 2 each layer's best vector over the start."""
        cma = self.state["cma"]
        best = {layer: x.tolist() for layer, x in cma.best().items()} if cma is not None else {}
        if self.state["start"] is not None:
            # No router: the scorer's mix is zero and each layer's numbers are its intrinsic vector itself.
            return Candidate(None, {**{int(k): v for k, v in self.state["start"].items()}, **best})
        return Candidate(self.state["router"], best)

    def trainable_parameters(self) -> int:
        layers = 1 if self.config.method == "bbt" else self.info.num_layers
        searched = layers * self.space_dim if self.config.generations(layers) else 0
        shape = self.state["router_shape"]
        return searched + (math.prod(shape) if shape and self.config.router_evaluations else 0)

    @property
    def space(self) -> Space:
        """mp2-bb: the bank's space. bbt / bbtv2: random projections sized as BBTv2's normal projection,
        ``spread[l] / σ_l`` (``σ_l`` the layer's CMA-ES step size), so that the first candidates have the
        spread of the hidden states they are added to; a state saved before the spread was measured has no
        ``spread`` and keeps the bank's RMS it ran with."""
        c = self.config
        if c.method == "mp2-bb":
            return Space.bank()
        spread = self.state.get("spread")
        scale = None
        if spread is not None:
            sigmas, rest = self.state["cma"].sigmas, c.step_sizes[1]  # a layer bbt does not search: any σ serves
            scale = [s / sigmas.get(layer, rest) for layer, s in enumerate(spread)]
        return Space.random(c.seed, c.dim or self.info.intrinsic_size, scale)

    @property
    def space_dim(self) -> int:
        return self.info.intrinsic_size if self.space.kind == "bank" else self.space.dim

    def _train_losses(self, candidates: list[Candidate], base: Candidate | None) -> list[float]:
        results = self.objective.evaluate(self.train, candidates, self.space, base)
        self.state["examples_seen"] += self.train.size * len(candidates)
        return [r.loss for r in results]

    def dev_check(self, at: str, candidate: Candidate | None = None) -> dict | None:
        """Score ``candidate`` (default: the current best) on dev; keep it if it beats the best so far
        (accuracy, then loss). Returns its dev result (None without a labelled dev set)."""
        if self.dev is None:
            return None
        candidate = candidate if candidate is not None else self.current()
        result = self.objective.evaluate(self.dev, [candidate], self.space)[0]
        self.state["evaluations"]["dev"] += 1
        if result.accuracy is None:
            return None
        self.bar.dev(result.accuracy)
        best = self.state["best_dev"]
        if best is None or (result.accuracy, -result.loss) > (best["accuracy"], -best["loss"]):
            self.state["best_dev"] = {"accuracy": result.accuracy, "loss": result.loss, "at": at,
                                      "candidate": candidate}  # fmt: skip
        logger.info("dev at %s: accuracy %.4f, loss %.4f (best %.4f at %s)", at, result.accuracy, result.loss,
                    self.state["best_dev"]["accuracy"], self.state["best_dev"]["at"])  # fmt: skip
        return {"accuracy": result.accuracy, "loss": result.loss}

    # -- the stages -----------------------------------------------------------------------------------

    def evaluations_planned(self) -> int:
        """Train evaluations of the whole run: the router search's, then every generation's population."""
        c = self.config
        router = c.router_evaluations if self.state["router_shape"] is not None else 0
        return router + c.generations(1 if c.method == "bbt" else self.info.num_layers) * c.popsize

    def run(self) -> None:
        """Run to the end, from where the state stopped, showing the bar."""
        with self.bar.shown():
            self._run_stages()

    def _run_stages(self) -> None:
        session_started = time.perf_counter()
        self.state["sessions"] += 1
        c, state = self.config, self.state
        if c.method != "mp2-bb" and "spread" in state and state["spread"] is None:
            state["spread"] = self.objective.spread(self.train)
            logger.info("hidden-state spread per layer on the train set: %s", " ".join(f"{s:.3g}" for s in state["spread"]))
            self.save(session_started)
        if state["stage"] == "router":
            search = state["router_search"]
            while search.evaluations < c.router_evaluations:
                routers = search.ask(min(c.router_batch, c.router_evaluations - search.evaluations))
                losses = self._train_losses([Candidate(router=r.tolist()) for r in routers], None)
                search.tell(routers, losses)
                state["evaluations"]["router"] += len(routers)
                # MP2 scores on dev the router evaluated at every 10th call (not the best so far).
                first = search.evaluations - len(routers) + 1
                for index, router in enumerate(routers, first):
                    if c.router_dev_every and index % c.router_dev_every == 0:
                        self.dev_check(f"router {index}", Candidate(router=router.tolist()))
                best_loss = search.best[1]
                self.bar.step(best_loss, len(routers))
                state["history"].append({"stage": "router", "evaluations": search.evaluations, "best_loss": best_loss})
                logger.info("router %d/%d: best train loss %.4f", search.evaluations, c.router_evaluations, best_loss)
                self.save(session_started)
            self._end_router_stage(search)
            self.save(session_started)
        if state["stage"] == "prompt":
            if state["cma"] is None:
                self._start_prompts()
                self.save(session_started)
            cma = state["cma"]
            generations = c.generations(len(cma.layers))
            dev_every = c.dev_every or len(cma.layers)
            while cma.generation < generations:
                layer = cma.layer
                population = cma.ask()
                population_candidates = [Candidate(intrinsic={layer: x.tolist()}) for x in population]
                losses = self._train_losses(population_candidates, self.current())
                cma.tell(population, losses)
                state["evaluations"]["prompt"] += len(population)
                self.bar.step(min(losses), len(population))
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

    def _end_router_stage(self, search) -> None:
        """Keep the dev-best router (MP2), or the train-best one without dev checks; go on to stage 2."""
        c, state = self.config, self.state
        if c.router_dev_every and state["best_dev"] is None:
            # A search shorter than router_dev_every scored no router on dev: score its train-best one.
            self.dev_check("router (lowest train loss)", Candidate(router=search.best[0].tolist()))
        best = state["best_dev"]
        if c.router_dev_every and best is not None:
            state["router"] = best["candidate"].router
        else:
            state["router"] = search.best[0].tolist()
        state["router_search"] = None  # its job is done; the state stays small
        state["stage"] = "prompt"
        if not c.router_dev_every:
            self.dev_check("router")

    def _start_prompts(self) -> None:
        """Make stage 2's strategies; mp2-bb searching intrinsic vectors starts each layer at the routed mix."""
        c, state = self.config, self.state
        starts = None
        if c.searches_intrinsic and c.generations(self.info.num_layers):
            if state["router"] is None:
                mix = np.zeros((self.info.num_layers, self.info.intrinsic_size), dtype=np.float32)
            else:
                mix = routed_mix(self.modules, state["router"])
            clipped = np.clip(mix, -c.bound, c.bound)
            if not np.array_equal(clipped, mix):
                logger.warning("the routed mix exceeds ±%g in %d numbers; the start is clipped to the bound",
                               c.bound, int((clipped != mix).sum()))  # fmt: skip
            starts = {layer: clipped[layer].astype(float).tolist() for layer in range(self.info.num_layers)}
            state["start"] = starts
            if self.check_modules and state["router"] is not None and np.array_equal(clipped, mix):
                self._check_start()
        state["cma"] = self.new_cma(c, self.info, starts)

    def _check_start(self) -> None:
        """The start sent as intrinsic vectors must score as the router does: else the local copy of the
        bank's modules is not the served bank's (one dev evaluation)."""
        if self.dev is None:
            return
        best = self.state["best_dev"]
        if best is not None and best["candidate"].router == self.state["router"] and not best["candidate"].intrinsic:
            expected = best["loss"]  # the chosen router was scored on dev in stage 1
        else:
            expected = self.objective.evaluate(self.dev, [Candidate(router=self.state["router"])], self.space)[0].loss
            self.state["evaluations"]["dev"] += 1
        got = self.objective.evaluate(self.dev, [self.current()], self.space)[0].loss
        self.state["evaluations"]["dev"] += 1
        if expected is not None and abs(got - expected) > 1e-3 * max(1.0, abs(expected)):
            raise ValueError(
                f"the routed mix computed from the local copy of the bank's modules scores dev loss {got:.6f} "
                f"where the served router scores {expected:.6f}: the copy is not the bank the server serves"
            )

    def final(self) -> Candidate:
        best = self.state["best_dev"]
        return best["candidate"] if best is not None else self.current()


def _fingerprint(config: TuneConfig, info: ModelInfo, task: str, train: ExampleSet, dev: ExampleSet | None) -> dict:
    model = {k: getattr(info, k) for k in ("num_layers", "hidden_size", "num_modules", "num_tokens", "rank", "bound")}
    model["backbone"] = info.backbone.get("name")
    settings = {k: v for k, v in config.to_dict().items() if k != "test_limit"}  # testing does not change the search
    return {"config": settings, "task": task, "model": model, "train": train.parts,
            "dev": dev.parts if dev else None}  # fmt: skip


def bank_modules(objective: Objective) -> np.ndarray | None:
    """The bank's intrinsic module matrices ``(layers, K, n, r)`` when ``objective`` scores in this process
    (None for a served model: it does not send them)."""
    scorer = getattr(objective, "scorer", None)
    bank = getattr(getattr(scorer, "model", None), "bank", None)
    return None if bank is None else bank.modules_z.detach().cpu().float().numpy()


def budget(config: TuneConfig, evaluations: dict) -> dict:
    """A run's train-set evaluations against the budget its method's own work reports results at."""
    spent = evaluations.get("router", 0) + evaluations.get("prompt", 0)
    paper = PAPER_BUDGETS[config.method]
    total = paper["router"] + paper["prompt"]
    return {"evaluations": spent, "paper": total, "share": spent / total, "source": paper["source"]}


def tune(
    objective: Objective,
    task: str,
    train: Sequence[MRCExample],
    dev: Sequence[MRCExample],
    test: Sequence[MRCExample],
    config: TuneConfig,
    state_path: str | Path | None = None,
    modules: np.ndarray | None = None,
    progress: bool | None = None,
) -> dict:
    """Run (or resume from ``state_path``) one black-box method; test the dev-selected candidate.

    ``modules``: the bank's intrinsic module matrices ``(layers, K, n, r)``, which mp2-bb needs to start its
    stage 2 at the routed mix when it searches the intrinsic vectors themselves (``bound_on="intrinsic"``).
    In-process they are read from the scorer's bank; against a served model give a local copy of the served
    bank's (:func:`load_bank_modules`), which is checked once against the server's router scores.
    ``progress``: a bar over the train evaluations (None: only when stderr is a terminal).

    The result has the fields of ``modprompt adapt``'s (method, task, seed, trainable_parameters,
    metric, test, best_dev, train_seconds, examples_seen, ...) plus the calls, evaluations, tokens, the
    router stage 1 chose and the budget spent against the one its method's paper reports (``budget``).
    """
    if not train or any(e.label is None for e in train):
        raise ValueError(f"{task}: black-box tuning needs a labelled training set")
    info = objective.info
    check_modules = modules is not None
    if modules is None:
        modules = bank_modules(objective)
    if config.searches_intrinsic and config.prompt_evaluations:
        expected = (info.num_layers, info.num_modules, info.num_tokens, info.rank)
        if modules is None:
            raise ValueError(
                "mp2-bb searches each layer's intrinsic vector itself, bounded as in MP2, from the routed mix of "
                "the bank's modules, which a served model does not send: give a local copy of the served bank "
                "(modprompt bbt --bank-copy BANK) or search offsets from the mix (--bound-on offset)"
            )
        if tuple(modules.shape) != expected:
            raise ValueError(f"the bank's modules have shape {tuple(modules.shape)}; the model needs {expected}")
    train_set = objective.upload(train)
    dev_set = objective.upload(dev) if dev else None
    fingerprint = _fingerprint(config, info, task, train_set, dev_set)
    state_path = Path(state_path) if state_path is not None else None
    state = load_state(state_path) if state_path is not None else None
    if state is None:
        state = _Run.new_state(config, info, fingerprint)
    elif state["fingerprint"] != fingerprint:
        differs = sorted(k for k in fingerprint if state["fingerprint"].get(k) != fingerprint[k])
        older = set(fingerprint["config"]) - set(state["fingerprint"].get("config", {}))
        why = f" (it was made by an older modprompt, without {', '.join(sorted(older))})" if older else ""
        raise ValueError(f"{state_path} holds a run with other {', '.join(differs)}{why}; use another --state path")
    else:
        logger.info("resuming %s from %s (stage %s)", config.method, state_path, state["stage"])
    run = _Run(objective, config, info, train_set, dev_set, state, state_path, modules, check_modules, progress)
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
        "budget": budget(config, state["evaluations"]),
        "tokens": usage["tokens"],
        "cache": usage["cache"],
        "sessions": state["sessions"],
        "examples": {"train": len(train), "dev": len(dev), "test": len(test)},
        "backbone": info.backbone.get("name"),
        "config": config.to_dict(),
        "router": state["router"],
        "spread": state.get("spread"),
        "parameters": final.to_dict(),
        "history": state["history"],
    }


def load_bank_modules(bank: str | Path) -> np.ndarray:
    """The intrinsic module matrices ``(layers, K, n, r)`` of a saved bank, read without building a model."""
    from safetensors.numpy import load_file

    from modprompt.modular.model import WEIGHTS_NAME

    return load_file(Path(bank) / WEIGHTS_NAME)["bank.modules_z"]


def tune_task(objective: Objective, task: str, data_root: str | Path, config: TuneConfig,
              state_path: str | Path | None = None, modules: np.ndarray | None = None, *,
              lenient: bool = False, progress: bool | None = None) -> dict:  # fmt: skip
    """``tune`` on a registered task's few-shot split of ``config.seed`` (as ``modprompt adapt`` splits it);
    ``lenient`` skips malformed records of the task's files instead of stopping; ``progress`` as for ``tune``."""
    from modprompt.data.fewshot import fewshot_splits, subset

    train, dev, test = fewshot_splits(task, config.seed, data_root, config.k_per_label, lenient=lenient)
    dev, test = subset(dev, config.dev_limit), subset(test, config.test_limit)
    return tune(objective, task, train, dev, test, config, state_path, modules, progress)

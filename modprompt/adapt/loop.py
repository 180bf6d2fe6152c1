"""The single-task few-shot training loop: a step budget, dev evaluations, and the best dev checkpoint.

Each of a method's stages trains only that stage's parameters (everything else is frozen for the
stage), with AdamW at constant per-group learning rates, and hands the next stage its best dev state.

**Protocol 2** (``AdaptConfig.protocol``, the default), the same for every method:

* The budget is the run's: ``max_steps`` (or ``max_epochs`` epochs of the train split, whichever is
  less). It is cut into blocks of ``eval_every`` steps (the last block may be shorter), and a method's
  stages share the blocks evenly, the earlier stages taking one more where they do not divide, the last
  stage also taking a final short block (:func:`split_budget`): mp2 at 32 steps and ``eval_every`` 8 trains
  16 + 16, at 33 steps 16 + 17, at 40 steps 24 + 16. A stage therefore always ends on an evaluation, and a
  method with fewer blocks than stages leaves its last stages without steps (logged).
* Dev is scored before the first step and after every ``eval_every`` steps of the run and at its last
  step: 1 + ceil(budget / eval_every) evaluations for every method (:func:`dev_evaluations`; 5 at 32 steps
  and ``eval_every`` 8). A later stage starts from the state its predecessor chose, whose dev score is
  known, so it is not scored again (it is listed in the stage's evaluations as ``"carried": true``).
* Every run trains its whole budget: nothing stops early. The checkpoint kept (for the next stage, and at
  the end for test) is the best on dev among all the run's evaluations, step 0 included; ties go to the
  later step, since a trained state that scores as well as an earlier one has learned at least as much.

**Protocol 1** (how runs before protocol 2 ran, kept to reproduce them): each stage has its own budget
(``max_steps`` each; mp2 up to 64 steps in all) and its own step-0 evaluation, stops after ``patience``
evaluations without improvement, and keeps the earliest of tied best states.

Without a dev set nothing is selected: each stage keeps its last state.

Deterministic given the seed: example order comes from a generator seeded by (seed, stage), routing
samples from one seeded by (seed, stage, step), and the method's initialisation from the seed
(:func:`modprompt.adapt.methods.create_method`). Each example is encoded once per run
(:class:`CachedEncoder`): the training batches, every dev evaluation and the test score reuse it.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import AdaptMethod, Stage
from modprompt.data.encoding import EncodedExample, MRCEncoder, training_windows
from modprompt.data.mrc import MRCExample
from modprompt.evaluate import evaluate, main_metric
from modprompt.head import span_loss
from modprompt.progress import Progress

logger = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**62)
    return seed


class CachedEncoder(MRCEncoder):
    """An encoder that encodes each example once; later calls with the same example objects reuse it.

    A run encodes its splits once (:meth:`encode_all`), and everything after (a method's preparation,
    every training batch, every dev evaluation, the test score) gets the same encodings back, which are
    exactly what encoding them again would give. Examples are matched by identity: the cache holds each
    example (in its encodings), so no other example can take its id while the cache lives. What is cached
    is each example's windows (:meth:`encode_windows`); :meth:`encode_all` reads them too.
    """

    def __init__(self, encoder: MRCEncoder) -> None:
        vars(self).update(vars(encoder))  # the same tokenizer, layout and device
        self._encoded: dict[int, list[EncodedExample]] = {}

    def encode_windows(
        self, examples: Sequence[MRCExample], chunk_size: int = 1024, report: bool = True
    ) -> list[list[EncodedExample]]:
        """The windows of ``examples``, encoding (and reporting on) only those not seen before."""
        new = list({id(e): e for e in examples if id(e) not in self._encoded}.values())
        if new:
            for windows in super().encode_windows(new, chunk_size, report):
                self._encoded[id(windows[0].example)] = windows
        return [self._encoded[id(e)] for e in examples]


def cached(encoder: MRCEncoder) -> CachedEncoder:
    """``encoder`` itself if it already caches, else a caching copy of it."""
    return encoder if isinstance(encoder, CachedEncoder) else CachedEncoder(encoder)


def run_budget(config: AdaptConfig, num_train: int) -> tuple[int, int]:
    """(step budget, steps between dev evaluations) on ``num_train`` examples: the whole run's under
    protocol 2, each stage's under protocol 1."""
    per_epoch = math.ceil(num_train / config.batch_size)
    total = per_epoch * config.max_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return total, config.eval_every or per_epoch


def split_budget(total: int, eval_every: int, stages: int) -> list[int]:
    """Protocol 2's steps per stage: whole blocks of ``eval_every`` steps shared evenly, the earlier stages
    taking the remainder, the last stage also taking a final short block (32, 8, 2 -> [16, 16]; 33 -> [16, 17];
    40 -> [24, 16]; 8 -> [8, 0])."""
    blocks, rest = divmod(total, eval_every)
    share, extra = divmod(blocks, stages)
    budgets = [(share + (i < extra)) * eval_every for i in range(stages)]
    budgets[-1] += rest
    return budgets


def dev_evaluations(total: int, eval_every: int) -> int:
    """Protocol 2's dev evaluations in a run of ``total`` steps, for every method: step 0, then every
    ``eval_every`` steps and the last step."""
    return 1 + math.ceil(total / eval_every)


def stage_budgets(config: AdaptConfig, num_train: int, stages: int) -> tuple[list[int], int]:
    """(steps of each of ``stages`` stages, steps between dev evaluations) under ``config.protocol``."""
    total, eval_every = run_budget(config, num_train)
    if config.protocol == 1:
        return [total] * stages, eval_every
    return split_budget(total, eval_every, stages), eval_every


@dataclass
class _Best:
    """The best dev state so far: its score, the run step it was reached at, and its values."""

    score: float
    run_step: int
    state: list[torch.Tensor]


def run_stage(
    method: AdaptMethod,
    stage: Stage,
    encoder: MRCEncoder,
    train: Sequence[EncodedExample],
    dev: Sequence[MRCExample],
    config: AdaptConfig,
    index: int = 0,
    *,
    budget: int | None = None,
    carried: tuple[float, int] | None = None,
    offset: int = 0,
    bar: Progress | None = None,
    num_examples: int | None = None,
) -> dict:
    """Train one stage of ``budget`` steps (None: :func:`run_budget`'s), leaving the best dev state in place.

    ``train`` holds what the steps draw from: each example's encoding, or with windows each window holding an
    answer (:func:`~modprompt.data.encoding.training_windows`); ``num_examples``, the examples they come from
    (None: ``len(train)``), sizes the budget and ``eval_every``'s default epoch, so windows add no steps.

    ``carried``: (dev score, run step) of the state the previous stage chose, which this stage starts from
    (protocol 2: it is not scored again); ``offset``: the run steps before this stage. Returns the stage's
    summary: steps, its budget, whether it stopped early (protocol 1 only), the chosen step (``best_step``
    within the stage, 0 for its starting state; ``best_run_step`` within the run), the dev evaluations it
    made and every score it knew of.
    """
    if not train:
        raise ValueError("no training examples")
    fair = config.protocol >= 2
    encoder = cached(encoder)
    params = stage.parameters()
    method.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if stage.optimizer is not None:
        optimizer = stage.optimizer(stage.param_groups)
    else:
        optimizer = torch.optim.AdamW(stage.param_groups, weight_decay=0.0)
    run_total, eval_every = run_budget(config, num_examples or len(train))
    total = run_total if budget is None else budget
    order_gen = torch.Generator().manual_seed(_seed(config.seed, index))
    timing = {"train_seconds": 0.0, "dev_seconds": 0.0}

    def dev_score() -> float:
        started = time.perf_counter()
        # the run's bar shows the dev score: no bar of its own
        score = main_metric(evaluate(method.forward, encoder, dev, config.eval_batch_size, progress=False))
        timing["dev_seconds"] += time.perf_counter() - started
        if bar is not None:
            bar.dev(score)
        return score

    def snapshot() -> list[torch.Tensor]:
        return [p.detach().clone() for p in params]

    best: _Best | None = None
    evaluations: list[dict] = []
    made = 0  # dev evaluations this stage made
    if dev:
        if fair and carried is not None:
            best = _Best(carried[0], carried[1], snapshot())
            evaluations.append({"step": 0, "dev": carried[0], "carried": True})
        else:
            best = _Best(dev_score(), offset, snapshot())
            evaluations.append({"step": 0, "dev": best.score})
            made += 1
    bad, step, examples_seen = 0, 0, 0
    losses: list[float] = []
    stopped_early = False
    while step < total and not stopped_early:
        order = torch.randperm(len(train), generator=order_gen).tolist()
        for start in range(0, len(order), config.batch_size):
            items = [train[i] for i in order[start : start + config.batch_size]]
            started = time.perf_counter()
            batch = encoder.collate(items)
            tasks = [e.example.task for e in items]
            temperature = stage.temperature(step, total) if stage.temperature else None
            generator = (
                torch.Generator().manual_seed(_seed(config.seed, index, step)) if temperature is not None else None
            )
            optimizer.zero_grad(set_to_none=True)
            loss = span_loss(*method(batch, tasks, temperature, generator), batch)
            loss.backward()
            if config.max_grad_norm:
                nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            optimizer.step()
            timing["train_seconds"] += time.perf_counter() - started
            losses.append(loss.item())
            examples_seen += len(items)
            step += 1
            if bar is not None:
                bar.step(losses[-1])
            if dev and (step % eval_every == 0 or step == total):
                score = dev_score()
                made += 1
                evaluations.append({"step": step, "dev": score, "loss": sum(losses) / len(losses)})
                logger.info(
                    "%s/%s step %d: loss %.4f dev %.4f", method.name, stage.name, step, evaluations[-1]["loss"], score
                )
                losses = []
                if score > best.score or (fair and score == best.score):  # protocol 2: ties to the later step
                    best, bad = _Best(score, offset + step, snapshot()), 0
                else:
                    bad += 1
                    if not fair and bad >= config.patience:
                        stopped_early = True
                        break
            if step >= total:
                break
    if best is not None:
        with torch.no_grad():
            for p, value in zip(params, best.state):
                p.copy_(value)
        best_run_step = best.run_step
    else:
        best_run_step = offset + step  # nothing to select on: keep the last state
    optimizer.zero_grad(set_to_none=True)  # ft's gradients are the size of the backbone
    method.requires_grad_(False)
    return {
        "stage": stage.name,
        "trainable_parameters": sum(p.numel() for p in params),
        "steps": step,
        "step_budget": total,
        "stopped_early": stopped_early,
        "best_step": max(0, best_run_step - offset),
        "best_run_step": best_run_step,
        "best_dev": best.score if best is not None else None,
        "examples_seen": examples_seen,
        "dev_evaluations": made,
        **timing,
        "evaluations": evaluations,
    }


def fit(
    method: AdaptMethod,
    encoder: MRCEncoder,
    train: Sequence[MRCExample],
    dev: Sequence[MRCExample],
    config: AdaptConfig,
    *,
    progress: bool | None = None,
) -> dict:
    """Run every stage of ``method`` on the few-shot ``train`` set, selecting on ``dev``; returns a summary.

    ``progress``: a bar over the run's steps (None: only when stderr is a terminal). Train and dev are
    encoded once here (or were, by a :class:`CachedEncoder` passed in). With the encoder's windows on, the
    steps draw from every window of a training example that holds its answer.
    """
    encoder = cached(encoder)
    encoded = training_windows(encoder.encode_windows(train))
    encoder.encode_windows(dev)
    stages = method.stages()
    budgets, eval_every = stage_budgets(config, len(train), len(stages))
    for stage, budget in zip(stages, budgets):
        if budget == 0 and any(budgets):
            logger.warning("%s: stage %s gets no steps (%s steps in blocks of %d for %d stages)", method.name,
                           stage.name, sum(budgets), eval_every, len(stages))  # fmt: skip
    summaries: list[dict] = []
    carried, offset = None, 0
    with Progress(sum(budgets), f"adapt {method.name}", "step", progress).shown() as bar:
        for i, (stage, budget) in enumerate(zip(stages, budgets)):
            summary = run_stage(method, stage, encoder, encoded, dev, config, i, budget=budget, carried=carried,
                                offset=offset, bar=bar, num_examples=len(train))  # fmt: skip
            summaries.append(summary)
            if summary["best_dev"] is not None:
                carried = (summary["best_dev"], summary["best_run_step"])
            offset += summary["steps"]
    return {
        "steps": sum(s["steps"] for s in summaries),
        "step_budget": sum(s["step_budget"] for s in summaries),
        "examples_seen": sum(s["examples_seen"] for s in summaries),
        "train_windows": len(encoded),
        "train_seconds": sum(s["train_seconds"] for s in summaries),
        "dev_seconds": sum(s["dev_seconds"] for s in summaries),
        "dev_evaluations": sum(s["dev_evaluations"] for s in summaries),
        "best_dev": summaries[-1]["best_dev"],
        "chosen_step": summaries[-1]["best_run_step"],
        "stages": summaries,
    }

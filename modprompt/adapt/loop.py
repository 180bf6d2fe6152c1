"""The single-task few-shot training loop, with early stopping on the k-shot dev set.

Each of a method's stages trains only that stage's parameters (everything else is frozen for the
stage), with AdamW at constant per-group learning rates. The dev set is scored before the first step
and then every ``eval_every`` steps (default: once per epoch); the stage keeps the trainable state of
its best dev score (ties keep the earlier state), stops after ``patience`` evaluations without
improvement or at its step budget, and restores the best state before the next stage starts. A stage
therefore never leaves the dev score worse than it found it.

Deterministic given the seed: example order comes from a generator seeded by (seed, stage), routing
samples from one seeded by (seed, stage, step), and the method's initialisation from the seed
(:func:`modprompt.adapt.methods.create_method`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence

import torch
from torch import nn

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import AdaptMethod, Stage
from modprompt.data.encoding import EncodedExample, MRCEncoder
from modprompt.data.mrc import MRCExample
from modprompt.evaluate import evaluate, main_metric
from modprompt.head import span_loss

logger = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    seed = 0
    for part in parts:
        seed = (seed * 1_000_003 + part) % (2**62)
    return seed


def stage_steps(config: AdaptConfig, num_train: int) -> tuple[int, int]:
    """(step budget, steps between dev evaluations) of one stage on ``num_train`` examples."""
    per_epoch = math.ceil(num_train / config.batch_size)
    total = per_epoch * config.max_epochs
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    return total, config.eval_every or per_epoch


def run_stage(
    method: AdaptMethod,
    stage: Stage,
    encoder: MRCEncoder,
    train: Sequence[EncodedExample],
    dev: Sequence[MRCExample],
    config: AdaptConfig,
    index: int = 0,
) -> dict:
    """Train one stage with early stopping; the best dev state is restored. Returns the stage's summary."""
    if not train:
        raise ValueError("no training examples")
    params = stage.parameters()
    method.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    if stage.optimizer is not None:
        optimizer = stage.optimizer(stage.param_groups)
    else:
        optimizer = torch.optim.AdamW(stage.param_groups, weight_decay=0.0)
    total, eval_every = stage_steps(config, len(train))
    order_gen = torch.Generator().manual_seed(_seed(config.seed, index))

    def dev_score() -> float:
        started = time.perf_counter()
        score = main_metric(evaluate(method.forward, encoder, dev, config.eval_batch_size))
        timing["dev_seconds"] += time.perf_counter() - started
        return score

    timing = {"train_seconds": 0.0, "dev_seconds": 0.0}
    best, best_state, evaluations = None, [], []
    if dev:
        best, best_state = dev_score(), [p.detach().clone() for p in params]
        evaluations.append({"step": 0, "dev": best})
    best_step, bad, step, examples_seen = 0, 0, 0, 0
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
            if dev and (step % eval_every == 0 or step == total):
                score = dev_score()
                evaluations.append({"step": step, "dev": score, "loss": sum(losses) / len(losses)})
                logger.info(
                    "%s/%s step %d: loss %.4f dev %.4f", method.name, stage.name, step, evaluations[-1]["loss"], score
                )
                losses = []
                if score > best:
                    best, best_step, bad = score, step, 0
                    best_state = [p.detach().clone() for p in params]
                else:
                    bad += 1
                    if bad >= config.patience:
                        stopped_early = True
                        break
            if step >= total:
                break
    if dev:
        with torch.no_grad():
            for p, value in zip(params, best_state):
                p.copy_(value)
    else:
        best_step = step  # nothing to select on: keep the last state
    optimizer.zero_grad(set_to_none=True)  # ft's gradients are the size of the backbone
    method.requires_grad_(False)
    return {
        "stage": stage.name,
        "trainable_parameters": sum(p.numel() for p in params),
        "steps": step,
        "step_budget": total,
        "stopped_early": stopped_early,
        "best_step": best_step,
        "best_dev": best,
        "examples_seen": examples_seen,
        **timing,
        "evaluations": evaluations,
    }


def fit(
    method: AdaptMethod,
    encoder: MRCEncoder,
    train: Sequence[MRCExample],
    dev: Sequence[MRCExample],
    config: AdaptConfig,
) -> dict:
    """Run every stage of ``method`` on the few-shot ``train`` set, selecting on ``dev``; returns a summary."""
    encoded = encoder.encode_all(train)
    stages = [run_stage(method, stage, encoder, encoded, dev, config, i) for i, stage in enumerate(method.stages())]
    return {
        "steps": sum(s["steps"] for s in stages),
        "examples_seen": sum(s["examples_seen"] for s in stages),
        "train_seconds": sum(s["train_seconds"] for s in stages),
        "dev_seconds": sum(s["dev_seconds"] for s in stages),
        "best_dev": stages[-1]["best_dev"],
        "stages": stages,
    }

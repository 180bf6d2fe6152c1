"""One few-shot adaptation run end to end, and reopening its saved result.

:func:`adapt` is what ``modprompt adapt`` and ``benchmarks/fewshot.py`` call: the task (resolved once) ->
few-shot splits -> method -> each split encoded once -> training under the config's protocol, selecting on
dev (:mod:`modprompt.adapt.loop`) -> test metrics -> (optionally) the adapted files -> a JSON-able result.
:meth:`AdaptMethod.from_pretrained <modprompt.adapt.methods.AdaptMethod.from_pretrained>` reopens the adapted
files on their backbone (and bank) for prediction.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.loop import CachedEncoder, fit
from modprompt.adapt.methods import DEFAULT_NUM_TOKENS, create_method
from modprompt.adapt.registry import METHODS
from modprompt.backbone import Backbone, check_backbone, resolve_backbone
from modprompt.checksum import file_sha256
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.fewshot import fewshot_splits, subset
from modprompt.data.mrc import MRCExample, TaskKind
from modprompt.data.spec import load_spec
from modprompt.data.task import Task, get_task
from modprompt.device import resolve_device
from modprompt.evaluate import evaluate, main_metric
from modprompt.modular.model import WEIGHTS_NAME as BANK_WEIGHTS
from modprompt.modular.model import read_bank_config

logger = logging.getLogger(__name__)

def fit_max_length(config: AdaptConfig, backbone: Backbone, examples: list[MRCExample]) -> AdaptConfig:
    """``config`` with ``max_length`` raised, if needed, to keep ``min_passage_tokens`` of passage beside the
    longest query and options of ``examples``.

    :func:`adapt` passes the train and dev examples (protocol 2): a setting of the run is never read off its
    test inputs. A label-set task puts all its label words into every example as the options, so they are
    counted; the test inputs were also read under protocol 1, which changed no stored result (the longest
    queries and options were in train or dev for every stored cell).
    """
    probe = MRCEncoder(backbone.tokenizer, EncodingConfig(config.max_length, DEFAULT_NUM_TOKENS))
    needed = probe.fixed_length(examples) + config.min_passage_tokens
    if needed <= config.max_length:
        return config
    logger.info("query and options need %d tokens: max_length %d -> %d", needed - config.min_passage_tokens,
                config.max_length, needed)  # fmt: skip
    return dataclasses.replace(config, max_length=needed)


def settings_in_effect(config: AdaptConfig, task: str | Task) -> AdaptConfig:
    """``config`` with the settings that cannot change its run on ``task`` put as they act, so that two configs
    equal here run alike: ``long_passages`` ``"cut"`` for a task without extractive passages (only those are
    ever windowed)."""
    task = task if isinstance(task, Task) else get_task(task)
    passages = config.long_passages if task.kind is TaskKind.EXTRACTIVE_QA else "cut"
    return dataclasses.replace(config, long_passages=passages)


def resolve_task(task: str | Task | None, task_spec: str | Path | None = None) -> Task:
    """The task of a run, looked up once: a user spec (read and registered) or a registered task's name."""
    if task_spec is not None:
        return load_spec(Path(task_spec).resolve(), replace=True)
    if task is None:
        raise ValueError("give a task name or a task spec")
    return task if isinstance(task, Task) else get_task(task)


def adapt(
    config: AdaptConfig,
    task: str | Task | None,
    data_root: str | Path,
    *,
    bank: str | Path | None = None,
    backbone: Backbone | str | Path | None = None,
    task_spec: str | Path | None = None,
    out: str | Path | None = None,
    device: torch.device | str | None = None,
    lenient: bool = False,
    progress: bool | None = None,
) -> dict:
    """Adapt to one task's few-shot split of ``config.seed``, test, optionally save to ``out``; the result.

    ``task_spec`` (a user task spec, :mod:`modprompt.data.spec`) replaces ``task``. ``lenient`` skips
    malformed records of the task's files instead of stopping (logged). ``backbone`` defaults
    to the bank's. ``device``: where to train (:func:`~modprompt.device.resolve_device`; None: where the
    backbone is). ``progress``: a bar over the training steps (None: only when stderr is a terminal).
    The result holds the method, task, seed, the protocol, exact trainable parameter count, the test
    metrics and main ``metric`` (accuracy, else F1), the best dev score and the run step it was reached at
    (``chosen_step``), optimisation time (``train_seconds``), the wall time of training with its dev
    evaluations (``fit_seconds``), steps, their budget, dev evaluations and examples seen, each stage's
    summary, and what the run started from besides the backbone (the bank's path, and the sha256 of the
    bank given; for ``prefinetune``, the pre-finetuned model's path and weights sha256).
    """
    started = time.perf_counter()
    if task_spec is not None:
        task_spec = Path(task_spec).resolve()
    resolved = resolve_task(task, task_spec)  # looked up once; the splits below get the Task itself
    task = resolved.name
    if config.method not in METHODS:
        raise KeyError(f"unknown adaptation method {config.method!r}; known: {sorted(METHODS)}")
    if METHODS[config.method].needs_bank and bank is None:
        raise ValueError(f"method {config.method!r} adapts a pre-trained prompt bank; give one (--bank)")
    recorded = read_bank_config(bank)["backbone"] if bank is not None else None
    train, dev, test = fewshot_splits(resolved, config.seed, data_root, config.k_per_label, lenient=lenient)
    dev, test = subset(dev, config.dev_limit), subset(test, config.test_limit)
    backbone = resolve_backbone(backbone, recorded)
    if recorded is not None:
        check_backbone(recorded, backbone, f"bank {bank}")
    requested = config
    # Protocol 1 also read the test inputs (kept so that its runs reproduce; it changed no stored result).
    config = fit_max_length(config, backbone, train + dev + (test if config.protocol == 1 else []))
    method = create_method(backbone, config, task, bank)
    method.to(resolve_device(device) if device is not None else backbone.device)
    if method.needs_bank and task in method.bank_tasks:
        logger.warning("task %s was one of the bank's pre-training tasks; the result is not few-shot transfer", task)
    encoder = CachedEncoder(method.encoder())
    # A test input whose query and options leave too little room gets room at test time only (the same rule as
    # fit_max_length, applied to the inputs scored), so that max_length, which shapes training and selection,
    # never comes from test inputs. Protocol 1 sized max_length from them already.
    test_length = fit_max_length(config, backbone, test).max_length
    test_encoder = encoder if test_length == config.max_length else CachedEncoder(
        MRCEncoder(encoder.tokenizer, dataclasses.replace(encoder.config, max_length=test_length), encoder.device)
    )
    for split, split_encoder in ((train, encoder), (dev, encoder), (test, test_encoder)):
        split_encoder.encode_all(split)  # once each: preparation, training, dev evaluations and test reuse them
    method.prepare(encoder, train)
    logger.info(
        "adapting %s to %s (seed %d) on %s: %d trainable parameters, %d train / %d dev / %d test examples",
        config.method, task, config.seed, method.device, method.trainable_parameters(), len(train), len(dev),
        len(test),
    )  # fmt: skip
    fit_started = time.perf_counter()
    summary = fit(method, encoder, train, dev, config, progress=progress)
    fit_seconds = time.perf_counter() - fit_started
    test_started = time.perf_counter()
    metrics = evaluate(method.forward, test_encoder, test, config.eval_batch_size, progress) if test else {}
    result = {
        "method": config.method,
        "task": task,
        "seed": config.seed,
        "protocol": config.protocol,
        "trainable_parameters": method.trainable_parameters(),
        "metric": main_metric(metrics) if test else None,
        "test": metrics,
        "best_dev": summary["best_dev"],
        "train_seconds": summary["train_seconds"],
        "fit_seconds": fit_seconds,
        "test_seconds": time.perf_counter() - test_started,
        "steps": summary["steps"],
        "step_budget": summary["step_budget"],
        "dev_evaluations": summary["dev_evaluations"],
        "chosen_step": summary["chosen_step"],
        "examples_seen": summary["examples_seen"],
        "examples": {"train": len(train), "dev": len(dev), "test": len(test)},
        # with windows, the training steps draw from the windows holding an answer; without, one per example
        "train_windows": summary["train_windows"],
        "backbone": backbone.info.name,
        "device": str(method.device),
        "bank": str(Path(bank).resolve()) if method.needs_bank else None,
        # every run given a bank records which (pt and deep-pt take their prompt length from it)
        "bank_sha256": file_sha256(Path(bank) / BANK_WEIGHTS) if bank is not None else None,
        "num_prompt_tokens": method.num_prompt_tokens,
        "prefinetuned": method.identity().get("prefinetuned"),
        "config": requested.to_dict(),
        "max_length": config.max_length,
        **({"test_max_length": test_length} if test_length != config.max_length else {}),
        "stages": summary["stages"],
    }
    if out is not None:
        brief = {k: v for k, v in result.items() if k not in ("stages", "config")}
        method.save_pretrained(out, extra={"task_spec": str(task_spec) if task_spec else None, "result": brief})
        result["out"] = str(Path(out).resolve())
    result["wall_seconds"] = time.perf_counter() - started
    return result

"""``modprompt adapt`` and ``modprompt predict``: adapt a bank to a few-shot task, then use it on a file."""

from __future__ import annotations

import argparse

from modprompt.adapt.config import AdaptConfig
from modprompt.cli import (
    SPLIT_FLAGS,
    add_config_flags,
    add_data_argument,
    add_device_argument,
    add_lenient_argument,
    config_flags,
)

#: command-line flags that set AdaptConfig fields of the same name (dashes for underscores)
_CONFIG_FLAGS = {
    **SPLIT_FLAGS,
    "max_length": (int, "tokens per example (only the passage is cut)"),
    "num_tokens": (int, "prompt tokens of pt/deep-pt (default: the bank's, else 16)"),
    "batch_size": (int, None),
    "max_epochs": (int, None),
    "max_steps": (int, "cap on the optimiser steps of each stage (0: train nothing, score the start)"),
    "eval_every": (int, "steps between dev evaluations (default: one epoch)"),
    "patience": (int, "dev evaluations without improvement before a stage stops"),
    "lr_router": (float, "routers (mp2 stage 1, route-only, route-per-layer)"),
    "lr_prompt": (float, "bank modules/projections in mp2 stage 2"),
    "lr_soft_prompt": (float, "pt and deep-pt prompts"),
    "lr_head": (float, "the fresh head of pt, deep-pt and ft"),
    "lr_backbone": (float, "ft's backbone"),
    "mp2_tune": (str, "mp2 stage 2 tunes the bank's 'modules', 'projection' or 'both'"),
    "prefinetuned": (str, "prefinetune: the pre-finetuned model folder (RUN_DIR/model of `modprompt prefinetune`)"),
}


def add_adapt(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a pre-trained prompt bank (or a baseline) to a few-shot task; prints a JSON result",
        description="Train on the task's k-shot train split with early stopping on its k-shot dev split, "
        "score the test split, and save the adapted parameters to --out.",
    )
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--task", help="a built-in downstream task (`modprompt tasks --role downstream`)")
    task.add_argument("--task-spec", help="a user task spec JSON (see examples/own_task)")
    p.add_argument(
        "--method",
        required=True,
        help="mp2, route-only, route-per-layer, pt, deep-pt, ft, child-f, child-d, prefinetune "
        "(or another registered one)",
    )
    p.add_argument("--bank", help="the pre-trained bank folder (needed by mp2 and route-*; sets n for pt/deep-pt)")
    p.add_argument("--seed", type=int, default=0, help="few-shot split (FewCLUE: 0..4) and initialisation seed")
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    add_data_argument(p)
    p.add_argument("--out", help="save the adapted parameters here (for `modprompt predict`)")
    p.add_argument("--router-shared", action="store_true", help="mp2: one router for all layers in stage 1")
    add_lenient_argument(p)
    add_device_argument(p)
    add_config_flags(p, _CONFIG_FLAGS, AdaptConfig(method="mp2"))
    p.set_defaults(func=run_adapt)


def run_adapt(args: argparse.Namespace) -> int:
    from modprompt.adapt.run import adapt
    from modprompt.cli import data_root_arg, print_json
    from modprompt.data.readers import collect_skips, skip_summary

    overrides = config_flags(args, _CONFIG_FLAGS)
    config = AdaptConfig(args.method, seed=args.seed, router_shared=args.router_shared, **overrides)
    with collect_skips() as skipped:
        result = adapt(
            config,
            args.task,
            data_root_arg(args.data),
            bank=args.bank,
            backbone=args.backbone,
            task_spec=args.task_spec,
            out=args.out,
            device=args.device,
            lenient=args.lenient,
        )
    result["skipped"] = skip_summary(skipped)
    for stage in result["stages"]:
        stage.pop("evaluations")
    print_json(result)
    return 0


def add_predict(sub) -> None:
    p = sub.add_parser(
        "predict",
        help="predict a file of records with an adapted task; writes one JSON line per record",
        description="Records may be unlabelled; labelled ones are also scored. A user task's records use the "
        "fields of its spec; a built-in task's: text (+ text_pair for sentence pairs), optional label "
        "(an option word); chid: text, options, optional label.",
    )
    p.add_argument("--adapted", required=True, help="the folder `modprompt adapt --out` wrote")
    p.add_argument("--input", required=True, help="records to predict (jsonl, json, csv or tsv)")
    p.add_argument("--output", required=True, help="where to write the predictions (JSON lines)")
    p.add_argument("--task-spec", help="the task spec (default: the one recorded at adaptation)")
    p.add_argument("--task", help="the adapted task's name (checked against the adapted folder)")
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the recorded one)")
    p.add_argument("--bank", help="the bank folder (default: the recorded path; checked by sha256)")
    p.add_argument("--batch-size", type=int, default=16)
    add_lenient_argument(p)
    add_device_argument(p)
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from modprompt.adapt.predict import predict_file, record_spec
    from modprompt.adapt.run import load_adapted, read_adapted_config
    from modprompt.cli import print_json

    spec = record_spec(read_adapted_config(args.adapted), args.input, args.task_spec, args.task)
    method = load_adapted(args.adapted, backbone=args.backbone, bank=args.bank, device=args.device)
    print_json(predict_file(method, args.input, args.output, spec, args.batch_size, lenient=args.lenient))
    return 0

"""``modprompt adapt`` and ``modprompt predict``: adapt a bank to a few-shot task, then use it on a file."""

from __future__ import annotations

import argparse

from modprompt.adapt.config import AdaptConfig
from modprompt.arguments import (
    add_data_argument,
    add_device_argument,
    add_lenient_argument,
    add_quiet_argument,
    progress_arg,
)
from modprompt.config_flags import add_dataclass_flags, dataclass_flag_values, flag_fields

#: AdaptConfig fields that are not flags of their own: the method is asked for with the methods' names
_NOT_FLAGS = ("method",)
#: every other AdaptConfig field is a flag of the same name (dashes for underscores), help from the field
_FLAGS = [f.name for f in flag_fields(AdaptConfig, exclude=_NOT_FLAGS)]


def add_adapt(sub) -> None:
    p = sub.add_parser(
        "adapt",
        help="adapt a pre-trained prompt bank (or a baseline) to a few-shot task; prints a JSON result",
        description="Train on the task's k-shot train split for the step budget, keep the checkpoint that "
        "scores best on its k-shot dev split, score the test split, and save the adapted parameters to --out. "
        "Under --protocol 2 (the default) a method's stages share the budget and no run stops early.",
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
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    add_data_argument(p)
    p.add_argument("--out", help="save the adapted parameters here (for `modprompt predict`)")
    add_lenient_argument(p)
    add_device_argument(p)
    add_quiet_argument(p)
    add_dataclass_flags(p.add_argument_group("settings (AdaptConfig)"), AdaptConfig, _FLAGS)
    p.set_defaults(func=run_adapt)


def run_adapt(args: argparse.Namespace) -> int:
    from modprompt.adapt.methods import unused_settings
    from modprompt.adapt.registry import METHODS
    from modprompt.adapt.run import adapt
    from modprompt.arguments import data_root_arg, print_json
    from modprompt.data.readers import collect_skips, skip_summary

    given = dataclass_flag_values(args, _FLAGS)
    # A flag that would change nothing is a mistake to hear of, not a silent no-op.
    unused = [name for name in unused_settings(args.method) if name in given]
    if unused:
        readers = {name: ", ".join(m for m in METHODS if name in METHODS[m].settings) for name in unused}
        flags = "; ".join(f"--{name.replace('_', '-')} (used by {readers[name]})" for name in unused)
        raise SystemExit(f"method {args.method} does not use {flags}")
    config = AdaptConfig(args.method, **given)
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
            progress=progress_arg(args),
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
    add_quiet_argument(p)
    p.set_defaults(func=run_predict)


def run_predict(args: argparse.Namespace) -> int:
    from modprompt.adapt.methods import AdaptMethod, read_adapted_config
    from modprompt.adapt.predict import predict_file, record_spec
    from modprompt.arguments import print_json

    spec = record_spec(read_adapted_config(args.adapted), args.input, args.task_spec, args.task)
    method = AdaptMethod.from_pretrained(args.adapted, backbone=args.backbone, bank=args.bank, device=args.device)
    print_json(predict_file(method, args.input, args.output, spec, args.batch_size, lenient=args.lenient,
                            progress=progress_arg(args)))
    return 0

"""The ``modprompt`` command (also ``python -m modprompt``). Each subcommand parses its arguments and calls the
library; results are JSON. The helpers subcommands share are in :mod:`modprompt.arguments`."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from modprompt.arguments import (
    add_data_argument,
    add_run_arguments,
    data_root_arg,
    print_json,
    print_run_summary,
    progress_arg,
)

logger = logging.getLogger("modprompt")


# -- modprompt tasks -----------------------------------------------------------------------------


def _add_tasks(sub) -> None:
    p = sub.add_parser(
        "tasks",
        help="list every registered task with its kind, role and split sizes, or check a task spec (--check)",
        description="Without --check: one line per registered task. With --check SPEC: what the spec yields per "
        "split (examples kept and dropped, and why; label distribution; three examples as the model sees them; "
        "token lengths under the backbone's tokenizer and how many passages a run would cut), before any run.",
    )
    p.add_argument("--json", action="store_true", help="print the full table (or the check) as JSON")
    add_data_argument(p)
    p.add_argument("--role", choices=["upstream", "downstream"], help="only tasks of this role")
    p.add_argument("--lenient", action="store_true", help="skip malformed records instead of stopping")
    p.add_argument("--check", metavar="SPEC", help="check a user task spec JSON (see examples/own_task)")
    p.add_argument(
        "--backbone",
        default="gemma-3-270m",
        help="with --check: whose tokenizer counts the tokens, a local model folder or 'gemma-3-270m' (default)",
    )
    p.add_argument(
        "--max-length", type=int, help="with --check: tokens per example, as `adapt --max-length` (default 256)"
    )
    p.set_defaults(func=_run_tasks)


def _run_tasks(args) -> int:
    from modprompt.data.registry import task_table

    if args.check:
        return _run_check(args)

    table = task_table(data_root_arg(args.data), lenient=args.lenient)
    if args.role:
        table = [row for row in table if row["role"] == args.role]
    if args.json:
        print_json(table)
        return 0
    width = max(len(row["name"]) for row in table)
    for row in table:
        splits = " ".join(f"{k}={v}" for k, v in row["splits"].items())
        options = row["num_options"] if row["num_options"] is not None else "-"
        print(f"{row['name']:<{width}}  {row['role']:<10}  {row['kind']:<15}  options={options:<4} {splits}")
    return 0


def _load_tokenizer(name_or_path: str):
    """The tokenizer of a backbone (no model weights are loaded)."""
    from transformers import AutoTokenizer

    from modprompt.backbone import EMBEDDED_DEFAULT

    if name_or_path == EMBEDDED_DEFAULT:
        from modprompt.gemma import gemma_path

        return AutoTokenizer.from_pretrained(gemma_path())
    if not Path(name_or_path).is_dir():
        raise FileNotFoundError(f"backbone folder not found: {name_or_path} (or use {EMBEDDED_DEFAULT!r})")
    return AutoTokenizer.from_pretrained(name_or_path)


def _run_check(args) -> int:
    from modprompt.data.spec import check_spec

    overrides = {"max_length": args.max_length} if args.max_length else {}
    report = check_spec(args.check, lambda: _load_tokenizer(args.backbone), lenient=args.lenient, **overrides)
    report["backbone"] = args.backbone
    if args.json:
        print_json(report)
        return 0
    print(f"{report['task']}: {report['kind']}, format {report['format']}, spec {report['spec']}")
    print(f"tokens under {args.backbone}'s tokenizer, max_length {report['max_length']}")
    for split, part in report["splits"].items():
        dropped = ", ".join(f"{reason} {n}" for reason, n in part["dropped"].items()) or "none"
        print(f"\n[{split}] {part['kept']} examples kept of {part['examples']}; dropped: {dropped}; "
              f"malformed records skipped: {part['skipped']['records']}")  # fmt: skip
        for problem in part["skipped"]["first"]:
            print(f"  skipped: {problem}")
        if part["labels"]:
            print("  labels: " + ", ".join(f"{label} {n}" for label, n in part["labels"].items()))
        tokens = part["tokens"]
        if tokens:
            line = (f"  tokens: median {tokens['median']:g}, p95 {tokens['p95']:g}, max {tokens['max']}; "
                    f"{tokens['passages_cut']} of {part['kept']} passages cut")  # fmt: skip
            if "answers_cut" in tokens:
                line += f", {tokens['answers_cut']} answers cut off ({tokens['answers_in_no_window']} in no window)"
            print(line)
        for example in part["shown"]:
            passage = example["passage"].replace("\n", "\\n")  # one line per field
            passage = passage if len(passage) <= 160 else passage[:157] + "..."
            print(f"  - {example['source']}")
            print(f"    query:   {example['query']}")
            print(f"    passage: {passage}")
            if example["options"]:
                print(f"    options: {' | '.join(example['options'])}")
            print(f"    answer:  {example['answer']}")
    return 0


# -- modprompt data ------------------------------------------------------------------------------


def _add_data(sub) -> None:
    p = sub.add_parser("data", help="fetch the raw task files into the cache and verify every sha256")
    p.add_argument("--dest", help="where to put the files (default: $MODPROMPT_DATA or ~/.cache/modprompt/data)")
    p.add_argument("--mirror", help="copy from a local mirror folder (OWNER+NAME/<path>) instead of downloading")
    p.add_argument("--base-url", help="download from this base URL instead of each file's public URL")
    p.add_argument("--only", nargs="*", help="only these files or folders (OWNER+NAME/<path>)")
    p.add_argument("--verify", action="store_true", help="only check what is already there")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run_data)


def _run_data(args) -> int:
    from modprompt.data.download import fetch, verify

    dest = data_root_arg(args.dest)
    if args.verify:
        problems = verify(dest, only=args.only)
        print_json({"dest": str(dest), "ok": not problems, "problems": problems})
        return 0 if not problems else 1
    report = fetch(
        dest,
        mirror=Path(args.mirror) if args.mirror else None,
        base_url=args.base_url,
        only=args.only,
        progress=False if args.no_progress else None,
    )
    print_json(
        {
            "dest": str(dest),
            "ok": report.ok,
            "fetched": len(report.fetched),
            "copied": len(report.copied),
            "verified": len(report.verified),
            "failed": report.failed,
        }
    )
    return 0 if report.ok else 1


# -- modprompt backbone --------------------------------------------------------------------------


def _add_backbone(sub) -> None:
    p = sub.add_parser("backbone", help="prepare or describe a backbone")
    p.add_argument("action", choices=["prepare", "info"], help="prepare: convert the embedded Gemma; info: describe")
    p.add_argument("--backbone", default="gemma-3-270m", help="a local model folder or 'gemma-3-270m'")
    p.add_argument("--overwrite", action="store_true", help="convert again even if the cache looks complete")
    p.set_defaults(func=_run_backbone)


def _run_backbone(args) -> int:
    if args.action == "prepare":
        from modprompt.gemma import prepare_gemma

        print_json({"path": str(prepare_gemma(overwrite=args.overwrite))})
        return 0
    from modprompt.backbone import load_backbone

    backbone = load_backbone(args.backbone)
    print_json(backbone.info.to_dict())
    return 0


# -- modprompt pretrain -------------------------------------------------------------------------


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="pre-train a modular prompt bank on the upstream tasks (resumable)")
    add_run_arguments(
        p,
        config_help="a pre-training config JSON (e.g. modprompt/configs/pretrain-gemma.json)",
        run_dir_help="run folder: checkpoints, history, and the bank in RUN_DIR/bank",
    )
    p.set_defaults(func=_run_pretrain)


def _run_pretrain(args) -> int:
    from modprompt.modular.pretrain import PretrainConfig, pretrain

    config = PretrainConfig.from_json(args.config)
    summary = pretrain(config, args.run_dir, data_root_arg(args.data), until=args.until, device=args.device,
                       progress=progress_arg(args))
    print_run_summary(summary)
    return 0


def _subcommands() -> tuple:
    # Each feature owns its subcommand module; imported here, on demand, to keep start-up light.
    from modprompt.adapt.cli import add_adapt, add_predict
    from modprompt.baselines.prefinetune_cli import add_parser as add_prefinetune
    from modprompt.blackbox.cli import add_bbt_parser, add_serve_parser

    return (
        _add_tasks, _add_data, _add_backbone, _add_pretrain, add_prefinetune, add_adapt, add_predict,
        add_serve_parser, add_bbt_parser,
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modprompt",
        description="Multi-task pre-trained modular prompts (MP2) for few-shot learning.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _subcommands():
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return args.func(args)
    except (FileNotFoundError, KeyError, ValueError, RuntimeError) as err:
        logger.error("%s", err)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

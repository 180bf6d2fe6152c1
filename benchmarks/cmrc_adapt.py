"""CMRC 2018 few-shot adaptation before and after issue 27: passages cut against windows, and the linear span head
against the bilinear one, on one seed.

The task is ``benchmarks/specs/cmrc2018-heldout.json``: CMRC 2018 read as a user task whose train split is the
official dev file (16 questions drawn for train, 16 for dev) and whose test split is the official trial file
(held out from bank pre-training, which trained on the official dev file as the built-in task's train split).
Cells, each one ``modprompt adapt`` run at the fair table's budget (32 steps, dev every 8, 200 test questions):

* route-only and mp2 with ``--long-passages cut`` (as adaptation read CMRC before windows) and with windows;
  both keep the bank's linear head;
* pt (a fresh head) with windows, with ``--span-head linear`` and with the bilinear head.

Each cell's result is stored as soon as it finishes (``results/cmrc-adapt/<cell>.json``); running the command
again runs only the missing cells, then writes ``results/cmrc-adapt.{json,md}``. About 2 hours on a 2-core CPU
with nothing else running (see ``benchmarks/README.md``), minutes on a GPU (``--device cuda``):

    python benchmarks/cmrc_adapt.py --bank modprompt/banks/gemma-3-270m --data ../shared/data/raw
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from machine import describe_machine

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.run import adapt
from modprompt.backbone import resolve_backbone
from modprompt.modular.model import read_bank_config

RESULTS = Path(__file__).parent / "results"
SPEC = Path(__file__).parent / "specs" / "cmrc2018-heldout.json"
#: cell name -> (method, AdaptConfig settings that make the cell)
CELLS = {
    "route-only-cut": ("route-only", {"long_passages": "cut"}),
    "route-only-windows": ("route-only", {"long_passages": "windows"}),
    "mp2-cut": ("mp2", {"long_passages": "cut"}),
    "mp2-windows": ("mp2", {"long_passages": "windows"}),
    "pt-windows-linear": ("pt", {"span_head": "linear"}),
    "pt-windows-bilinear": ("pt", {"span_head": "bilinear"}),
}

logger = logging.getLogger("cmrc_adapt")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", default="modprompt/banks/gemma-3-270m")
    parser.add_argument("--backbone", help="default: the bank's")
    parser.add_argument("--data", default="../shared/data/raw", help="the task data mirror (the spec names its files)")
    parser.add_argument("--spec", default=str(SPEC))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cells", nargs="+", default=list(CELLS), choices=list(CELLS))
    parser.add_argument("--max-steps", type=int, default=32)
    parser.add_argument("--eval-every", type=int, default=8)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--device", default=None)
    parser.add_argument("--name", default="cmrc-adapt", help="results/NAME/ for the cells, results/NAME.{json,md}")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    folder = RESULTS / args.name
    folder.mkdir(parents=True, exist_ok=True)
    backbone = None
    for name in args.cells:
        path = folder / f"{name}.json"
        if path.is_file():
            continue
        if backbone is None:
            backbone = resolve_backbone(args.backbone, read_bank_config(args.bank)["backbone"])
        method, settings = CELLS[name]
        config = AdaptConfig(method, seed=args.seed, max_steps=args.max_steps, eval_every=args.eval_every,
                             test_limit=args.test_limit, **settings)  # fmt: skip
        logger.info("cell %s", name)
        result = adapt(config, None, args.data, bank=args.bank, backbone=backbone, task_spec=args.spec,
                       device=args.device, progress=False)  # fmt: skip
        result["machine"] = describe_machine(args.device)
        result["span_head"] = config.span_head  # the head the run trained (bank methods: kept the bank's linear one)
        path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    cells = {n: json.loads((folder / f"{n}.json").read_text()) for n in CELLS if (folder / f"{n}.json").is_file()}
    command = "python benchmarks/cmrc_adapt.py " + " ".join(sys.argv[1:])
    summary = {"command": command.strip(), "cells": {
        n: {k: c[k] for k in ("method", "test", "best_dev", "chosen_step", "train_windows", "examples", "bank_sha256",
                              "wall_seconds", "machine", "span_head")} | {"long_passages": c["config"]["long_passages"]}
        for n, c in cells.items()
    }}  # fmt: skip
    (RESULTS / f"{args.name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    lines = [
        "# CMRC 2018 few-shot adaptation: passages cut or in windows, linear or bilinear span head",
        "",
        f"Command: `{summary['command']}`. Task `{Path(args.spec).name}` (train: 16 questions drawn from the official",
        f"dev file, dev: 16 more; test: {args.test_limit} of the official trial file), seed {args.seed},",
        f"{args.max_steps} steps, dev every {args.eval_every}. Exact match and F1 on the test questions.",
        "",
        "| cell | method | long passages | span head | train windows (of questions) | EM | F1 | wall s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for n, c in summary["cells"].items():
        test = c["test"]
        lines.append(f"| {n} | {c['method']} | {c['long_passages']} | {c['span_head']} | {c['train_windows']} "
                     f"({c['examples']['train']}) | {test['exact_match']:.3f} | {test['f1']:.3f} | "
                     f"{c['wall_seconds']:.0f} |")  # fmt: skip
    lines.append("")
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""The few-shot benchmark: adaptation methods × downstream tasks × seeds, on one backbone and bank.

Every run calls the same library function as ``modprompt adapt`` (:func:`modprompt.adapt.run.adapt`)
with the same settings except the method and the seed, so a table compares methods and nothing else.
Each (method, task, seed) result is written to ``RESULTS/NAME/<method>/<task>/seed<seed>.json`` as soon
as it finishes; a rerun skips the results that are there, so a stopped run continues where it stopped
(a stored result made with other settings is an error: use another ``--name``). Then the stored results
are aggregated to ``RESULTS/NAME.json``, ``RESULTS/NAME.md`` (mean ± sample std over seeds per task and
their average, trainable parameters and training time per method) and ``RESULTS/NAME.png``.

CPU budget caps (``--test-limit``, ``--dev-limit``, ``--max-steps``, ...) apply to every method alike and
are written into the outputs. ``--test-limit N`` scores the first N of one fixed shuffle of each test
set: the same examples for every method and seed.

    python benchmarks/fewshot.py --bank runs/pretrain-gemma/bank --test-limit 300
    python benchmarks/fewshot.py --bank BANK --methods mp2 pt --tasks eprstmt --seeds 0 1 --aggregate-only
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path

import torch
from result_grid import ResultGrid, write_table

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import BANK_WEIGHTS, METHODS, file_sha256
from modprompt.adapt.run import adapt, bank_backbone, resolve_backbone
from modprompt.data.builtin import DOWNSTREAM_TASKS
from modprompt.data.download import default_data_root

logger = logging.getLogger("fewshot")

RESULTS = Path(__file__).parent / "results"
DEFAULT_METHODS = ("mp2", "route-only", "route-per-layer", "pt", "deep-pt", "ft")
#: AdaptConfig fields the benchmark sets from its arguments (the budget and the shared settings)
SHARED = ("k_per_label", "max_length", "batch_size", "max_epochs", "max_steps", "eval_every", "patience",
          "test_limit", "dev_limit")  # fmt: skip


def _grid(args: argparse.Namespace) -> ResultGrid:
    # The pre-finetuned model's path may differ: only ``prefinetune`` reads it, so adding that method later is allowed.
    return ResultGrid(args.results / args.name, args.methods, args.tasks, args.seeds, AdaptConfig,
                      per_run_fields=("method", "seed", "prefinetuned"))  # fmt: skip


def run_all(args: argparse.Namespace, grid: ResultGrid) -> None:
    """Run every missing (method, task, seed), storing each result as it finishes."""
    bank_sha256 = file_sha256(Path(args.bank) / BANK_WEIGHTS)
    grid.check_identity({"bank_sha256": bank_sha256, "backbone": args.backbone or bank_backbone(args.bank)["name"]})
    shared = {name: getattr(args, name) for name in SHARED if getattr(args, name) is not None}
    if args.prefinetuned:
        shared["prefinetuned"] = str(Path(args.prefinetuned).resolve())
    todo, done = grid.missing(lambda method, seed: AdaptConfig(method, seed=seed, **shared))
    logger.info("%d results stored, %d to run", done, len(todo))
    if not todo:
        return
    backbone = resolve_backbone(args.backbone, bank_backbone(args.bank))
    for i, (config, task, path) in enumerate(todo, 1):
        logger.info("[%d/%d] %s on %s, seed %d", i, len(todo), config.method, task, config.seed)
        result = adapt(config, task, args.data, bank=args.bank, backbone=backbone)
        grid.store(path, result)
        logger.info("  %s: metric %.4f, %.0f s", path.relative_to(grid.root), result["metric"], result["fit_seconds"])


def aggregate(args: argparse.Namespace, grid: ResultGrid) -> dict:
    """Mean ± sample std over the stored seeds of each (method, task), and per-method summaries."""
    return grid.summary(
        {"fit_seconds": "fit_seconds_per_run"},
        metric="accuracy on the test set (F1 for extractive tasks), mean ± sample std over seeds",
        bank=str(Path(args.bank).resolve()),
    )


def write_markdown(summary: dict, path: Path, seeds: int) -> None:
    intro = (
        f"Backbone `{summary['backbone']}`, bank `{summary['bank']}`. {summary['metric']} "
        f"({seeds} seeds; a cell over fewer seeds shows their count). Train time is the wall time of one run's "
        "training with its dev evaluations, averaged over runs."
    )
    columns = {"train s/run": ("fit_seconds_per_run", ".1f")}
    write_table(summary, path, seeds, "Few-shot adaptation benchmark", intro, "trainable params", columns)


def write_plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = summary["tasks"]
    methods = list(summary["methods"])
    width = 0.8 / max(1, len(methods))
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * (len(tasks) + 1)), 4))
    for i, method in enumerate(methods):
        entry = summary["methods"][method]
        means = [100 * entry["tasks"][t]["mean"] if t in entry["tasks"] else math.nan for t in tasks]
        stds = [100 * entry["tasks"][t]["std"] if t in entry["tasks"] else 0.0 for t in tasks]
        means.append(100 * entry["average"] if entry["average"] is not None else math.nan)
        stds.append(0.0)
        xs = [x + (i - (len(methods) - 1) / 2) * width for x in range(len(tasks) + 1)]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=method)
    ax.set_xticks(range(len(tasks) + 1), [*tasks, "average"], rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Few-shot adaptation on {summary['backbone']} (mean ± std over seeds)", fontsize="medium")
    ax.legend(fontsize="small", ncols=min(len(methods), 3))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", required=True, help="the pre-trained bank folder")
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    p.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS))
    p.add_argument("--tasks", nargs="+", default=list(DOWNSTREAM_TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: $MODPROMPT_DATA or the cache)")
    p.add_argument("--results", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default="fewshot", help="stem of the outputs and of the per-run folder")
    p.add_argument("--aggregate-only", action="store_true", help="only aggregate the stored results")
    p.add_argument("--prefinetuned", help="the pre-finetuned model folder, for the 'prefinetune' method")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's); use 1 while another heavy process shares a 2-core machine",
    )
    for name in SHARED:
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"AdaptConfig.{name} for every run")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    args.data = args.data or default_data_root()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.threads:
        # Two processes with two threads each on two cores make every matmul wait: 5-10x slower steps.
        torch.set_num_threads(args.threads)
    grid = _grid(args)
    if not args.aggregate_only:
        started = time.perf_counter()
        run_all(args, grid)
        logger.info("runs took %.0f s", time.perf_counter() - started)
    summary = aggregate(args, grid)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_markdown(summary, args.results / f"{args.name}.md", len(args.seeds))
    write_plot(summary, args.results / f"{args.name}.png")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main()

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
    python benchmarks/fewshot.py --bank BANK --methods mp2 pt --tasks iflytek --run-only  # fill cells, keep the table
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

from result_grid import ResultGrid, add_grid_arguments, run_grid, write_table

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.registry import METHODS
from modprompt.adapt.run import adapt
from modprompt.backbone import resolve_backbone
from modprompt.baselines.adapt_methods import prefinetuned_identity
from modprompt.checksum import file_sha256
from modprompt.modular.model import WEIGHTS_NAME as BANK_WEIGHTS
from modprompt.modular.model import read_bank_config

logger = logging.getLogger("fewshot")

REPO = Path(__file__).resolve().parents[1]

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
    grid.check_identity({"bank_sha256": bank_sha256, "backbone": args.backbone or read_bank_config(args.bank)["backbone"]["name"]})
    shared = {name: getattr(args, name) for name in SHARED if getattr(args, name) is not None}
    if args.prefinetuned:
        shared["prefinetuned"] = str(Path(args.prefinetuned).resolve())
        if "prefinetune" in grid.methods:
            _check_prefinetuned_model(grid, Path(args.prefinetuned))
    todo, done = grid.missing(lambda method, seed: AdaptConfig(method, seed=seed, **shared))
    logger.info("%d results stored, %d to run", done, len(todo))
    if not todo:
        return
    backbone = resolve_backbone(args.backbone, read_bank_config(args.bank)["backbone"])
    for i, (config, task, path) in enumerate(todo, 1):
        logger.info("[%d/%d] %s on %s, seed %d", i, len(todo), config.method, task, config.seed)
        result = adapt(config, task, args.data, bank=args.bank, backbone=backbone, device=args.device)
        grid.store(path, result, result["device"])
        logger.info("  %s: metric %.4f, %.0f s", path.relative_to(grid.root), result["metric"], result["fit_seconds"])


def _prefinetuned_models(paths: Iterable[Path]) -> list[dict]:
    """The pre-finetuned models (path and weights sha256) that the ``prefinetune`` results at ``paths`` started from."""
    models = {}
    for path in paths:
        record = json.loads(path.read_text()).get("prefinetuned") if path.is_file() else None
        if record:
            models[record["sha256"]] = record
    return list(models.values())


def _check_prefinetuned_model(grid: ResultGrid, model: Path) -> None:
    """One ``prefinetune`` row comes from one pre-finetuned model: a rebuilt model (another sha256) may not add
    results to a row that started from another, whichever of its tasks this run covers."""
    sha256 = prefinetuned_identity(model)["sha256"]
    row = grid.root / "prefinetune"
    stored = [m["sha256"] for m in _prefinetuned_models(row.glob("*/seed*.json")) if m["sha256"] != sha256]
    if stored:
        raise SystemExit(
            f"stored prefinetune results started from the pre-finetuned model with weights sha256 {stored[0]}; "
            f"{model} has sha256 {sha256}. Use that model, or delete {row} to rerun the row."
        )


def aggregate(args: argparse.Namespace, grid: ResultGrid) -> dict:
    """Mean ± sample std over the stored seeds of each (method, task), and per-method summaries."""
    return grid.summary(
        {"fit_seconds": "fit_seconds_per_run", "wall_seconds": "wall_seconds_per_run"},
        metric="accuracy on the test set (F1 for extractive tasks), mean ± sample std over seeds",
        bank=args.bank,
        prefinetuned=_prefinetuned_models(grid.path("prefinetune", t, s) for t in grid.tasks for s in grid.seeds),
    )


def write_markdown(summary: dict, path: Path, seeds: int) -> None:
    intro = (
        f"Backbone `{summary['backbone']}`, bank `{summary['bank']}`. {summary['metric']} "
        f"({seeds} seeds; a cell over fewer seeds shows their count). Train time is the wall time of one run's "
        "training with its dev evaluations; run time is the whole run's, which adds loading the split, building "
        "the method (the full-model methods copy the backbone), its preparation (Child-Tuning_D's Fisher pass over "
        "the whole training split) and scoring the test set. Both are averaged over runs."
    )
    for model in summary["prefinetuned"]:
        where = Path(model["path"])
        shown = where.relative_to(REPO) if where.is_relative_to(REPO) else where  # not this machine's absolute path
        intro += f" `prefinetune` starts from the pre-finetuned model `{shown}` (weights sha256 {model['sha256']})."
    columns = {"train s/run": ("fit_seconds_per_run", ".1f"), "run s/run": ("wall_seconds_per_run", ".1f")}
    write_table(summary, path, seeds, "Few-shot adaptation benchmark", intro, "trainable params", columns)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(p, DEFAULT_METHODS, "fewshot")
    p.add_argument("--prefinetuned", help="the pre-finetuned model folder, for the 'prefinetune' method")
    for name in SHARED:
        p.add_argument("--" + name.replace("_", "-"), type=int, help=f"AdaptConfig.{name} for every run")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    return run_grid(args, _grid(args), run_all, aggregate, write_markdown, "Few-shot adaptation", argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main()

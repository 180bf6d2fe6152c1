"""The black-box few-shot benchmark: mp2-bb, bbt, bbtv2 × downstream tasks × seeds, on one backbone and bank.

Every run calls the same library function as ``modprompt bbt`` (:func:`modprompt.blackbox.tune.tune_task`)
with the same settings except the method and the seed. By default the optimisers score in-process
(the same objective interface as over HTTP, without the transport); ``--server URL`` sends every call to
a running ``modprompt serve`` of the same bank instead. Each (method, task, seed) result is written to
``RESULTS/NAME/<method>/<task>/seed<seed>.json`` as soon as it finishes, and each run's optimiser state to
``--work`` after every generation, so a stopped benchmark continues where it stopped, even mid-run. The
stored results are aggregated to ``RESULTS/NAME.json``, ``RESULTS/NAME.md`` and ``RESULTS/NAME.png`` in the
layout of ``benchmarks/fewshot.py`` (mean ± sample std over seeds per task and their average), with the calls per run
and each method's train-set evaluations against the budget its own paper reports results at: every method gets
the same budget here, so the table says what share of its own each one had (a share well below 100% is that
method's search cut short, not the method's performance).

    python benchmarks/blackbox.py --bank modprompt/banks/gemma-3-270m --preset cpu --test-limit 300
    python benchmarks/blackbox.py --bank BANK --methods mp2-bb --tasks eprstmt --seeds 0 1 --aggregate-only
    python benchmarks/blackbox.py --bank BANK --methods mp2-bb --tasks bustm --run-only  # fill cells, keep the table
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
from pathlib import Path

from result_grid import ResultGrid, add_grid_arguments, run_grid, write_table

from modprompt.arguments import progress_arg
from modprompt.blackbox.config import METHODS, PAPER_BUDGETS, PRESETS, TuneConfig
from modprompt.blackbox.tune import load_bank_modules, tune_task
from modprompt.checksum import file_sha256
from modprompt.modular.model import WEIGHTS_NAME as BANK_WEIGHTS
from modprompt.progress import Progress

logger = logging.getLogger("blackbox")

#: TuneConfig fields the benchmark sets from its arguments, the same for every method and seed
SHARED = {
    "router": str, "router_evaluations": int, "router_initial_points": int, "router_kappa": float,
    "router_dev_every": int, "prompt_evaluations": int, "popsize": int, "bound": float, "bound_on": str,
    "dim": int, "dev_every": int, "k_per_label": int, "test_limit": int, "dev_limit": int,
}  # fmt: skip


def _config(args: argparse.Namespace, method: str, seed: int) -> TuneConfig:
    return TuneConfig.preset(args.preset, method, seed, **{name: getattr(args, name) for name in SHARED})


def _objective(args: argparse.Namespace):
    from modprompt.blackbox.objective import InProcessObjective, RemoteObjective

    if args.server:
        from modprompt.blackbox.client import API_KEY_ENV, Client

        return RemoteObjective(Client(args.server, os.environ.get(API_KEY_ENV, "").split(",")[0] or None))
    from modprompt.blackbox.scoring import Scorer

    return InProcessObjective(Scorer.from_bank(args.bank, args.backbone, args.device, max_length=args.max_length))


def run_all(args: argparse.Namespace, grid: ResultGrid) -> None:
    """Run every missing (method, task, seed), storing each result as it finishes."""
    todo, done = grid.missing(lambda method, seed: _config(args, method, seed))
    logger.info("%d results stored, %d to run", done, len(todo))
    if not todo:
        return
    objective = _objective(args)
    info = objective.info
    shape = [info.num_layers, info.num_modules, info.num_tokens, info.rank]
    bank_sha256 = file_sha256(Path(args.bank) / BANK_WEIGHTS)
    grid.check_identity({"bank_sha256": bank_sha256, "backbone": info.backbone["name"], "shape": shape})
    # A served model does not send its bank's modules; mp2-bb reads them from --bank (the served bank) to
    # start its stage 2 at their routed mix. In-process, tune reads the scorer's own.
    modules = load_bank_modules(args.bank) if args.server else None
    with Progress(len(todo), args.name, "run", progress_arg(args)).shown() as bar:  # each run shows its own too
        for i, (config, task, path) in enumerate(todo, 1):
            logger.info("[%d/%d] %s on %s, seed %d", i, len(todo), config.method, task, config.seed)
            state = args.work / args.name / config.method / task / f"seed{config.seed}.state"
            result = tune_task(objective, task, args.data, config, state, modules, progress=progress_arg(args))
            result["server"] = args.server or "in-process"
            grid.store(path, result, None if args.server else args.device)
            logger.info("  %s: metric %.4f, %d calls, %.0f s", path.relative_to(grid.root), result["metric"],
                        result["calls"], result["train_seconds"])  # fmt: skip
            bar.step(metric=result["metric"])


def aggregate(args: argparse.Namespace, grid: ResultGrid) -> dict:
    """Mean ± sample std over the stored seeds of each (method, task), per-method summaries, and each
    method's train-set evaluations per run against the budget its own paper reports results at."""
    summary = grid.summary(
        {"train_seconds": "train_seconds_per_run", "calls": "calls_per_run", "tokens": "tokens_per_run"},
        metric="accuracy on the test set, mean ± sample std over seeds",
        bank=args.bank,
        server=args.server or "in-process",
    )
    for method, entry in summary["methods"].items():
        # Counted from each stored result's evaluations, which results stored before "budget" also hold.
        spent, sized = [], set()
        for task in grid.tasks:
            for seed in grid.seeds:
                path = grid.path(method, task, seed)
                if path.is_file():
                    result = json.loads(path.read_text())
                    spent.append(result["evaluations"]["router"] + result["evaluations"]["prompt"])
                    sized.add("spread" if result.get("spread") else "rms")
        if method != "mp2-bb":  # how its random projections were sized (results before the spread: the RMS)
            entry["projection"] = "/".join(sorted(sized)) or None
        paper = PAPER_BUDGETS[method]
        entry["evaluations_per_run"] = statistics.fmean(spent) if spent else None
        entry["paper_budget"] = paper["router"] + paper["prompt"]
        entry["paper_budget_source"] = paper["source"]
        entry["budget_share"] = entry["evaluations_per_run"] / entry["paper_budget"] if spent else None
    return summary


def write_markdown(summary: dict, path: Path, seeds: int) -> None:
    intro = (
        f"Backbone `{summary['backbone']}`, bank `{summary['bank']}`, scored {summary['server']}. "
        f"{summary['metric']} ({seeds} seeds; a cell over fewer seeds shows their count). Calls are requests "
        "to the model (train, dev and test scoring, a population one call; a BBT or BBTv2 run also measures the "
        "hidden states' spread once) and tokens the input tokens they forwarded (every candidate's, padding not "
        "counted); train time is the wall time of one run's optimisation with "
        "its dev evaluations, averaged over runs.\n\n"
        "**Budgets.** Every method had the same budget: `evaluations/run` train-set evaluations (router and prompt "
        "candidates; dev and test scoring not counted). Each method's own paper reports its results at a larger "
        "one (`paper's budget`; sources below the table), and `share` is the part of it these runs had. A row "
        "well below 100% is that method's search cut short, not the method's performance: BBT and BBTv2 at 4.5% "
        "of their 8,000 calls (BBTv2: 20 evaluations per layer here against 320 on its 24-layer model) say "
        "nothing about BBT or BBTv2 at their budgets."
    )
    sized = {m: e["projection"] for m, e in summary["methods"].items() if e.get("projection")}
    if sized:
        intro += (
            "\n\n**Random projections** (BBT, BBTv2): sized as BBTv2's normal projection, entries of std "
            "ŝ_l / (√d σ), ŝ_l the spread of the hidden states entering layer l on the train inputs (std after "
            "five rounds of clipping at ±3 std)."
        )
    older = [f"{m} ({'all' if sizes == 'rms' else 'some'} of its runs)" for m, sizes in sized.items() if "rms" in sizes]
    if older:
        intro += (
            f" **Runs stored before the spread was measured**, {', '.join(older)}, sized the projections by the "
            "bank's layer RMS, which on Gemma 3 is 3-16× the spread at layers 1-17: their first candidates were "
            "up to 8× the size of the states they were added to."
        )
    settings = summary.get("settings") or {}
    if settings.get("bound_on") == "offset" and settings.get("router_dev_every") is None:
        intro += (
            "\n\n**Settings of before mp2-bb followed MP2's script** (these runs were stored then; the settings "
            "line reads them as they ran): `router_dev_every: null`, the router of lowest train loss was kept "
            "(MP2 keeps the dev-best); `router_kappa: null`, scikit-optimize's default acquisition (MP2: UCB, "
            "κ = 2); `sigma_first: \"same\"`, σ 0.1 at every layer (MP2: 0.5 at the first); `bound_on: "
            "\"offset\"`, ±5 bounded the offset from the routed mix (MP2 bounds the intrinsic vector)."
        )
    columns = {
        "calls/run": ("calls_per_run", ".0f"),
        "tokens/run": ("tokens_per_run", ",.0f"),
        "train s/run": ("train_seconds_per_run", ".1f"),
        "evaluations/run": ("evaluations_per_run", ".0f"),
        "paper's budget": ("paper_budget", ","),
        "share": ("budget_share", ".1%"),
    }
    write_table(summary, path, seeds, "Black-box few-shot benchmark", intro, "searched numbers", columns)
    sources = [f"- {method}: {entry['paper_budget_source']}" for method, entry in summary["methods"].items()]
    with path.open("a") as handle:
        handle.write("\n*paper's budget*, the train-set evaluations each method's own work reports results at:\n\n")
        handle.write("\n".join(sources) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(p, METHODS, "blackbox")
    p.add_argument("--server", help="score through this `modprompt serve` URL ($MODPROMPT_API_KEY) instead")
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget defaults (flags override)")
    p.add_argument("--max-length", type=int, default=256, help="in-process: tokens per example")
    p.add_argument("--work", type=Path, default=Path("runs/benchmarks"), help="optimiser states, for resuming")
    for name, kind in SHARED.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"TuneConfig.{name} for every run")
    args = p.parse_args(argv)
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {list(METHODS)}")
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    grid = ResultGrid(args.results / args.name, args.methods, args.tasks, args.seeds, TuneConfig)
    return run_grid(args, grid, run_all, aggregate, write_markdown, "Black-box few-shot tuning", argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main()

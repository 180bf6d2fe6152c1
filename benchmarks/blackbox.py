"""The black-box few-shot benchmark: mp2-bb, bbt, bbtv2 × downstream tasks × seeds, on one backbone and bank.

Every run calls the same library function as ``modprompt bbt`` (:func:`modprompt.blackbox.tune.tune_task`)
with the same settings except the method and the seed. By default the optimisers score in-process
(the same objective interface as over HTTP, without the transport); ``--server URL`` sends every call to
a running ``modprompt serve`` of the same bank instead. Each (method, task, seed) result is written to
``RESULTS/NAME/<method>/<task>/seed<seed>.json`` as soon as it finishes, and each run's optimiser state to
``--work`` after every generation, so a stopped benchmark continues where it stopped, even mid-run. The
stored results are aggregated to ``RESULTS/NAME.json`` and ``RESULTS/NAME.md`` in the layout of
``benchmarks/fewshot.py`` (mean ± sample std over seeds per task and their average), with the calls per run.

    python benchmarks/blackbox.py --bank runs/pretrain-gemma/bank --preset cpu --test-limit 300
    python benchmarks/blackbox.py --bank BANK --methods mp2-bb --tasks eprstmt --seeds 0 1 --aggregate-only
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path

from fewshot import _cell, _mean_std, result_path

from modprompt.adapt.methods import BANK_WEIGHTS, file_sha256
from modprompt.blackbox.tune import METHODS, PRESETS, TuneConfig, tune_task
from modprompt.data.builtin import DOWNSTREAM_TASKS
from modprompt.data.download import default_data_root

logger = logging.getLogger("blackbox")

RESULTS = Path(__file__).parent / "results"
#: TuneConfig fields the benchmark sets from its arguments, the same for every method and seed
SHARED = {
    "router": str, "router_evaluations": int, "router_initial_points": int, "prompt_evaluations": int,
    "popsize": int, "bound": float, "dim": int, "dev_every": int, "k_per_label": int, "test_limit": int,
    "dev_limit": int,
}  # fmt: skip


def _settings(config: TuneConfig) -> dict:
    """What must agree between a stored result and this run: the config without method and seed."""
    return {k: v for k, v in config.to_dict().items() if k not in ("method", "seed")}


def _config(args: argparse.Namespace, method: str, seed: int) -> TuneConfig:
    return TuneConfig.preset(args.preset, method, seed, **{name: getattr(args, name) for name in SHARED})


def _objective(args: argparse.Namespace):
    from modprompt.blackbox.objective import InProcessObjective, RemoteObjective

    if args.server:
        from modprompt.blackbox.client import API_KEY_ENV, Client

        return RemoteObjective(Client(args.server, os.environ.get(API_KEY_ENV, "").split(",")[0] or None))
    from modprompt.blackbox.scoring import Scorer

    return InProcessObjective(Scorer.from_bank(args.bank, args.backbone, max_length=args.max_length))


def check_identity(args: argparse.Namespace, root: Path, objective) -> None:
    """Stored results must come from the same bank (by sha256) and backbone as this run's."""
    info = objective.info
    identity = {
        "bank_sha256": file_sha256(Path(args.bank) / BANK_WEIGHTS),
        "backbone": info.backbone["name"],
        "shape": [info.num_layers, info.num_modules, info.num_tokens, info.rank],
    }
    path = root / "identity.json"
    if path.is_file():
        stored = json.loads(path.read_text())
        if stored != identity:
            raise SystemExit(f"{root} holds results of another bank or backbone ({stored}); use another --name")
    else:
        root.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(identity, indent=2) + "\n")


def run_all(args: argparse.Namespace, root: Path) -> None:
    """Run every missing (method, task, seed), storing each result as it finishes."""
    todo, done = [], 0
    for method in args.methods:
        for task in args.tasks:
            for seed in args.seeds:
                config = _config(args, method, seed)
                path = result_path(root, method, task, seed)
                if path.is_file():
                    stored = json.loads(path.read_text())
                    if _settings(TuneConfig.from_dict(stored["config"])) != _settings(config):
                        raise SystemExit(f"{path} was made with other settings; rerun with another --name")
                    done += 1
                else:
                    todo.append((config, task, path))
    logger.info("%d results stored, %d to run", done, len(todo))
    if not todo:
        return
    objective = _objective(args)
    check_identity(args, root, objective)
    for i, (config, task, path) in enumerate(todo, 1):
        logger.info("[%d/%d] %s on %s, seed %d", i, len(todo), config.method, task, config.seed)
        state = args.work / args.name / config.method / task / f"seed{config.seed}.pkl"
        result = tune_task(objective, task, args.data, config, state)
        result["server"] = args.server or "in-process"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)  # a run killed while writing leaves no half result behind
        logger.info("  %s: metric %.4f, %d calls, %.0f s", path.relative_to(root), result["metric"],
                    result["calls"], result["train_seconds"])  # fmt: skip


def aggregate(args: argparse.Namespace, root: Path) -> dict:
    """Mean ± sample std over the stored seeds of each (method, task), and per-method summaries."""
    methods: dict[str, dict] = {}
    settings, backbone = None, None
    for method in args.methods:
        tasks, params, seconds, calls = {}, set(), [], []
        for task in args.tasks:
            scores = {}
            for seed in args.seeds:
                path = result_path(root, method, task, seed)
                if not path.is_file():
                    continue
                result = json.loads(path.read_text())
                settings = settings or _settings(TuneConfig.from_dict(result["config"]))
                backbone = backbone or result["backbone"]
                scores[seed] = result["metric"]
                params.add(result["trainable_parameters"])
                seconds.append(result["train_seconds"])
                calls.append(result["calls"])
            if scores:
                mean, std = _mean_std(list(scores.values()))
                tasks[task] = {"mean": mean, "std": std, "n": len(scores), "seeds": scores}
        complete = len(tasks) == len(args.tasks) and all(t["n"] == len(args.seeds) for t in tasks.values())
        methods[method] = {
            "trainable_parameters": sorted(params)[0] if len(params) == 1 else sorted(params),
            "train_seconds_per_run": statistics.fmean(seconds) if seconds else None,
            "calls_per_run": statistics.fmean(calls) if calls else None,
            "runs": len(seconds),
            "tasks": tasks,
            "average": statistics.fmean(t["mean"] for t in tasks.values()) if complete else None,
        }
    return {
        "backbone": backbone,
        "bank": str(Path(args.bank).resolve()),
        "server": args.server or "in-process",
        "tasks": list(args.tasks),
        "seeds": list(args.seeds),
        "settings": settings,
        "metric": "accuracy on the test set, mean ± sample std over seeds",
        "methods": methods,
    }


def write_markdown(summary: dict, path: Path, seeds: int) -> None:
    tasks = summary["tasks"]
    lines = [
        "# Black-box few-shot benchmark",
        "",
        f"Backbone `{summary['backbone']}`, bank `{summary['bank']}`, scored {summary['server']}. "
        f"{summary['metric']} ({seeds} seeds; a cell over fewer seeds shows their count). Calls are score "
        "requests (train, dev and test; a population is one call); train time is the wall time of one run's "
        "optimisation with its dev evaluations, averaged over runs.",
        "",
        f"Settings (the same for every method): `{json.dumps(summary['settings'], ensure_ascii=False)}`",
        "",
        "| method | searched numbers | " + " | ".join(tasks) + " | average | calls/run | train s/run |",
        "|---|---:|" + "---:|" * len(tasks) + "---:|---:|---:|",
    ]
    for method, entry in summary["methods"].items():
        cells = [_cell(entry["tasks"].get(task), seeds) for task in tasks]
        average = f"{100 * entry['average']:.1f}" if entry["average"] is not None else "–"
        calls = f"{entry['calls_per_run']:.0f}" if entry["calls_per_run"] is not None else "–"
        seconds = f"{entry['train_seconds_per_run']:.1f}" if entry["train_seconds_per_run"] is not None else "–"
        params = entry["trainable_parameters"]
        params = f"{params:,}" if isinstance(params, int) else ", ".join(f"{p:,}" for p in params) or "–"
        lines.append(f"| {method} | {params} | " + " | ".join(cells) + f" | {average} | {calls} | {seconds} |")
    path.write_text("\n".join(lines) + "\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", required=True, help="the pre-trained bank folder (the one the server serves)")
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    p.add_argument("--server", help="score through this `modprompt serve` URL ($MODPROMPT_API_KEY) instead")
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--tasks", nargs="+", default=list(DOWNSTREAM_TASKS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="budget defaults (flags override)")
    p.add_argument("--max-length", type=int, default=256, help="in-process: tokens per example")
    p.add_argument("--data", type=Path, default=None, help="data folder (default: $MODPROMPT_DATA or the cache)")
    p.add_argument("--results", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--work", type=Path, default=Path("runs/benchmarks"), help="optimiser states, for resuming")
    p.add_argument("--name", default="blackbox", help="stem of the outputs and of the per-run folder")
    p.add_argument("--aggregate-only", action="store_true", help="only aggregate the stored results")
    for name, kind in SHARED.items():
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"TuneConfig.{name} for every run")
    args = p.parse_args(argv)
    args.data = args.data or default_data_root()
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    root = args.results / args.name
    if not args.aggregate_only:
        started = time.perf_counter()
        run_all(args, root)
        logger.info("runs took %.0f s", time.perf_counter() - started)
    summary = aggregate(args, root)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_markdown(summary, args.results / f"{args.name}.md", len(args.seeds))
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main()

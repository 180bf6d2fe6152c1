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
import os
import statistics
import sys
import time
from pathlib import Path

import torch

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


def result_path(root: Path, method: str, task: str, seed: int) -> Path:
    return root / method / task / f"seed{seed}.json"


def _settings(config: AdaptConfig) -> dict:
    """What must agree between a stored result and this run: the config without method, seed and the
    pre-finetuned model's path (only ``prefinetune`` reads it, so adding that method later is allowed)."""
    return {k: v for k, v in config.to_dict().items() if k not in ("method", "seed", "prefinetuned")}


def check_identity(args: argparse.Namespace, root: Path) -> None:
    """Stored results must come from the same bank (by sha256) and backbone as this run's."""
    identity = {
        "bank_sha256": file_sha256(Path(args.bank) / BANK_WEIGHTS),
        "backbone": args.backbone or bank_backbone(args.bank)["name"],
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
    check_identity(args, root)
    shared = {name: getattr(args, name) for name in SHARED if getattr(args, name) is not None}
    if args.prefinetuned:
        shared["prefinetuned"] = str(Path(args.prefinetuned).resolve())
    todo, done = [], 0
    for method in args.methods:
        for task in args.tasks:
            for seed in args.seeds:
                config = AdaptConfig(method, seed=seed, **shared)
                path = result_path(root, method, task, seed)
                if path.is_file():
                    stored = json.loads(path.read_text())
                    if _settings(AdaptConfig.from_dict(stored["config"])) != _settings(config):
                        raise SystemExit(f"{path} was made with other settings; rerun with another --name")
                    done += 1
                else:
                    todo.append((config, task, path))
    logger.info("%d results stored, %d to run", done, len(todo))
    if not todo:
        return
    backbone = resolve_backbone(args.backbone, bank_backbone(args.bank))
    for i, (config, task, path) in enumerate(todo, 1):
        logger.info("[%d/%d] %s on %s, seed %d", i, len(todo), config.method, task, config.seed)
        result = adapt(config, task, args.data, bank=args.bank, backbone=backbone)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)  # a run killed while writing leaves no half result behind
        logger.info("  %s: metric %.4f, %.0f s", path.relative_to(root), result["metric"], result["fit_seconds"])


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(args: argparse.Namespace, root: Path) -> dict:
    """Mean ± sample std over the stored seeds of each (method, task), and per-method summaries."""
    methods: dict[str, dict] = {}
    settings, backbone = None, None
    for method in args.methods:
        tasks, params, seconds = {}, set(), []
        for task in args.tasks:
            scores = {}
            for seed in args.seeds:
                path = result_path(root, method, task, seed)
                if not path.is_file():
                    continue
                result = json.loads(path.read_text())
                settings = settings or _settings(AdaptConfig.from_dict(result["config"]))
                backbone = backbone or result["backbone"]
                scores[seed] = result["metric"]
                params.add(result["trainable_parameters"])
                seconds.append(result["fit_seconds"])
            if scores:
                mean, std = _mean_std(list(scores.values()))
                tasks[task] = {"mean": mean, "std": std, "n": len(scores), "seeds": scores}
        complete = len(tasks) == len(args.tasks) and all(t["n"] == len(args.seeds) for t in tasks.values())
        methods[method] = {
            "trainable_parameters": sorted(params)[0] if len(params) == 1 else sorted(params),
            "fit_seconds_per_run": statistics.fmean(seconds) if seconds else None,
            "runs": len(seconds),
            "tasks": tasks,
            # The average over tasks is only comparable between methods when every cell is complete.
            "average": statistics.fmean(t["mean"] for t in tasks.values()) if complete else None,
        }
    return {
        "backbone": backbone,
        "bank": str(Path(args.bank).resolve()),
        "tasks": list(args.tasks),
        "seeds": list(args.seeds),
        "settings": settings,
        "metric": "accuracy on the test set (F1 for extractive tasks), mean ± sample std over seeds",
        "methods": methods,
    }


def _cell(entry: dict | None, seeds: int) -> str:
    """``mean ± std`` in percent; a cell over fewer seeds than asked shows how many."""
    if entry is None:
        return "–"
    text = f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
    return text if entry["n"] == seeds else f"{text} (n={entry['n']})"


def write_markdown(summary: dict, path: Path, seeds: int) -> None:
    tasks = summary["tasks"]
    lines = [
        "# Few-shot adaptation benchmark",
        "",
        f"Backbone `{summary['backbone']}`, bank `{summary['bank']}`. {summary['metric']} "
        f"({seeds} seeds; a cell over fewer seeds shows their count). Train time is the wall time of one run's "
        "training with its dev evaluations, averaged over runs.",
        "",
        f"Settings (the same for every method): `{json.dumps(summary['settings'], ensure_ascii=False)}`",
        "",
        "| method | trainable params | " + " | ".join(tasks) + " | average | train s/run |",
        "|---|---:|" + "---:|" * len(tasks) + "---:|---:|",
    ]
    for method, entry in summary["methods"].items():
        cells = [_cell(entry["tasks"].get(task), seeds) for task in tasks]
        average = f"{100 * entry['average']:.1f}" if entry["average"] is not None else "–"
        seconds = f"{entry['fit_seconds_per_run']:.1f}" if entry["fit_seconds_per_run"] is not None else "–"
        params = entry["trainable_parameters"]
        params = f"{params:,}" if isinstance(params, int) else ", ".join(f"{p:,}" for p in params) or "–"
        lines.append(f"| {method} | {params} | " + " | ".join(cells) + f" | {average} | {seconds} |")
    path.write_text("\n".join(lines) + "\n")


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
    root = args.results / args.name
    if not args.aggregate_only:
        started = time.perf_counter()
        run_all(args, root)
        logger.info("runs took %.0f s", time.perf_counter() - started)
    summary = aggregate(args, root)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_markdown(summary, args.results / f"{args.name}.md", len(args.seeds))
    write_plot(summary, args.results / f"{args.name}.png")
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main()

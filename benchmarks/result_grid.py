"""The stored results the benchmarks share: methods × tasks × seeds, one JSON file per run.

A benchmark (``fewshot.py``, ``blackbox.py``) writes each (method, task, seed) result to
``ROOT/<method>/<task>/seed<seed>.json`` as soon as it finishes, so a rerun skips what is there and a
stopped benchmark continues where it stopped. A stored result must have been made with this run's
settings and from the same bank and backbone; a mismatch is an error that asks for another ``--name``.
The stored results are summarised as mean ± sample std over seeds per (method, task), and written as
``NAME.json``, a markdown table with one row per method (``NAME.md``) and a bar chart (``NAME.png``).
"""

from __future__ import annotations

import argparse
import inspect
import json
import logging
import math
import os
import shlex
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machine import describe_machine, machine_text

from modprompt.arguments import add_device_argument, add_quiet_argument
from modprompt.data.download import default_data_root
from modprompt.data.fewshot import fewshot_splits, subset
from modprompt.data.mrc import Role
from modprompt.data.task import all_tasks
from modprompt.device import resolve_device

logger = logging.getLogger(__name__)

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class ResultGrid:
    """The results of one benchmark name: where they are stored and what must agree between them."""

    root: Path
    methods: Sequence[str]
    tasks: Sequence[str]
    seeds: Sequence[int]
    #: the config class of a run (``to_dict`` / ``from_dict``), as stored under a result's "config"
    config_type: Any
    #: config fields allowed to differ between the runs of one benchmark; every other one must agree
    per_run_fields: tuple[str, ...] = ("method", "seed")

    def path(self, method: str, task: str, seed: int) -> Path:
        return self.root / method / task / f"seed{seed}.json"

    def cells(self, method: str) -> list[Path]:
        """The stored results of ``method`` over this grid's tasks and seeds."""
        paths = (self.path(method, task, seed) for task in self.tasks for seed in self.seeds)
        return [p for p in paths if p.is_file()]

    def settings(self, config: Any) -> dict:
        """What must agree between a stored result and this run: the config without the per-run fields."""
        return {k: v for k, v in config.to_dict().items() if k not in self.per_run_fields}

    def check_identity(self, identity: dict, write: bool = True) -> None:
        """Stored results must come from the same bank and backbone as this run's, described by ``identity``
        (written by the first run unless not ``write``, compared by every later one)."""
        path = self.root / "identity.json"
        if path.is_file():
            stored = json.loads(path.read_text())
            if stored != identity:
                message = f"{self.root} holds results of another bank or backbone ({stored}); use another --name"
                raise SystemExit(message)
        elif write:
            self.root.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(identity, indent=2) + "\n")

    def missing(self, make_config: Callable[[str, int], Any]) -> tuple[list[tuple[Any, str, Path]], int]:
        """The (config, task, path) of every run not stored yet, and how many are stored.

        ``make_config(method, seed)`` is this run's config; a stored result made with other settings is an error.
        """
        todo, done = [], 0
        for method in self.methods:
            for task in self.tasks:
                for seed in self.seeds:
                    config = make_config(method, seed)
                    path = self.path(method, task, seed)
                    if path.is_file():
                        stored = json.loads(path.read_text())
                        if self.settings(self.config_type.from_dict(stored["config"])) != self.settings(config):
                            raise SystemExit(f"{path} was made with other settings; rerun with another --name")
                        done += 1
                    else:
                        todo.append((config, task, path))
        return todo, done

    @staticmethod
    def store(path: Path, result: dict, device: str | None = None) -> None:
        """Write one run's result, with the machine (and ``device``) it ran on: its times mean nothing without."""
        ResultGrid.store_as_is(path, {**result, "machine": describe_machine(device)})

    @staticmethod
    def store_as_is(path: Path, result: dict) -> None:
        """Write a result that already says its machine (a run copied from another table keeps its own)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        os.replace(tmp, path)  # a run killed while writing leaves no half result behind

    def summary(self, per_run: dict[str, str], metric: str, **context: Any) -> dict:
        """Mean ± sample std over the stored seeds of each (method, task), and per-method summaries.

        ``per_run`` maps a result field to the summary key of its mean over a method's runs (e.g. seconds);
        ``context`` (the bank, ...) goes into the summary after the backbone, ``metric`` says what is scored.
        Every stored result must have the settings of the first (a table never mixes budgets or protocols).
        """
        methods: dict[str, dict] = {}
        settings, backbone, first = None, None, None
        machines: Counter[str] = Counter()  # JSON of each run's machine ("null": stored before it was recorded)
        for method in self.methods:
            tasks, params, runs = {}, set(), []
            for task in self.tasks:
                scores = {}
                for seed in self.seeds:
                    path = self.path(method, task, seed)
                    if not path.is_file():
                        continue
                    result = json.loads(path.read_text())
                    these = self.settings(self.config_type.from_dict(result["config"]))
                    if settings is None:
                        settings, first = these, path
                    elif these != settings:
                        differ = sorted(k for k in {*settings, *these} if settings.get(k) != these.get(k))
                        raise SystemExit(f"{path} was made with other settings than {first} ({', '.join(differ)}); "
                                         "a table holds runs of one budget and protocol")  # fmt: skip
                    backbone = backbone or result["backbone"]
                    scores[seed] = result["metric"]
                    params.add(result["trainable_parameters"])
                    runs.append(result)
                    machines[json.dumps(result.get("machine"), sort_keys=True)] += 1
                if scores:
                    mean, std = _mean_std(list(scores.values()))
                    tasks[task] = {"mean": mean, "std": std, "n": len(scores), "seeds": scores}
            complete = len(tasks) == len(self.tasks) and all(t["n"] == len(self.seeds) for t in tasks.values())
            methods[method] = {
                "trainable_parameters": sorted(params)[0] if len(params) == 1 else sorted(params),
                **{key: statistics.fmean(r[field] for r in runs) if runs else None for field, key in per_run.items()},
                "runs": len(runs),
                "tasks": tasks,
                # The average over tasks is only comparable between methods when every cell is complete.
                "average": statistics.fmean(t["mean"] for t in tasks.values()) if complete else None,
            }
        return {
            "backbone": backbone,
            **context,
            "tasks": list(self.tasks),
            "seeds": list(self.seeds),
            "settings": settings,
            "metric": metric,
            "methods": methods,
            "machines": [{"machine": json.loads(m), "runs": n} for m, n in machines.most_common()],
        }


def majority_accuracy(tasks: Sequence[str], data_root: Path, test_limit: int | None) -> dict[str, float]:
    """Per task, the test accuracy of always answering its most frequent label, on the test examples the
    benchmark scores (the first ``test_limit`` of the fixed shuffle): the floor every method has to beat."""
    floors = {}
    for task in tasks:
        test = subset(fewshot_splits(task, 0, data_root)[2], test_limit)  # the test split is the same for every seed
        labels = Counter(e.label for e in test if e.label is not None)
        if labels:
            floors[task] = max(labels.values()) / sum(labels.values())
    return floors


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def _cell(entry: dict | None, seeds: int) -> str:
    """``mean ± std`` in percent; a cell over fewer seeds than asked shows how many."""
    if entry is None:
        return "–"
    text = f"{100 * entry['mean']:.1f} ± {100 * entry['std']:.1f}"
    return text if entry["n"] == seeds else f"{text} (n={entry['n']})"


def write_table(
    summary: dict, path: Path, seeds: int, title: str, intro: str, params: str, columns: dict[str, tuple[str, str]]
) -> None:
    """The summary as a markdown table, one row per method: ``params`` heads the trainable-parameter
    column, and ``columns`` maps each heading after the average to a per-method summary key and its format."""
    tasks = summary["tasks"]
    lines = [
        f"# {title}",
        "",
        intro,
        "",
        f"Settings (the same for every method): `{json.dumps(summary['settings'], ensure_ascii=False)}`",
        "",
        f"Command (it runs the missing cells, then writes this table): `{summary['command']}`",
        "",
        "Runs per machine (times from different machines do not compare): "
        + "; ".join(f"{machine_text(m['machine'])}: {m['runs']}" for m in summary["machines"]),
        "",
        f"| method | {params} | " + " | ".join(tasks) + " | average | " + " | ".join(columns) + " |",
        "|---|---:|" + "---:|" * len(tasks) + "---:|" + "---:|" * len(columns),
    ]
    for method, entry in summary["methods"].items():
        cells = [_cell(entry["tasks"].get(task), seeds) for task in tasks]
        average = f"{100 * entry['average']:.1f}" if entry["average"] is not None else "–"
        extra = [format(entry[key], spec) if entry[key] is not None else "–" for key, spec in columns.values()]
        counts = entry["trainable_parameters"]
        counts = f"{counts:,}" if isinstance(counts, int) else ", ".join(f"{p:,}" for p in counts) or "–"
        lines.append(f"| {method} | {counts} | " + " | ".join(cells) + f" | {average} | " + " | ".join(extra) + " |")
    floors = summary.get("majority", {})
    if floors:
        cells = [f"{100 * floors[t]:.1f}" if t in floors else "–" for t in tasks]
        average = f"{100 * statistics.fmean(floors.values()):.1f}" if len(floors) == len(tasks) else "–"
        dashes = " | ".join("–" for _ in columns)
        lines.append("| *majority label* | 0 | " + " | ".join(cells) + f" | {average} | {dashes} |")
        lines += ["", "*majority label*: the accuracy of always answering each task's most frequent test label."]
    path.write_text("\n".join(lines) + "\n")


def write_plot(summary: dict, path: Path, title: str) -> None:
    """Mean ± std per task (and the average over tasks) as grouped bars, one colour per method."""
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
        stds.append(math.nan)  # the average over tasks has no spread over seeds to show
        xs = [x + (i - (len(methods) - 1) / 2) * width for x in range(len(tasks) + 1)]
        ax.bar(xs, means, width, yerr=stds, capsize=2, label=method)
    floors = summary.get("majority", {})
    drawn = [(x, floors[task]) for x, task in enumerate(tasks) if task in floors]
    for j, (x, floor) in enumerate(drawn):
        label = "majority label" if j == 0 else None
        ax.hlines(100 * floor, x - 0.45, x + 0.45, colors="black", linestyles="dashed", label=label)
    ax.set_xticks(range(len(tasks) + 1), [*tasks, "average"], rotation=30)
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"{title} on {summary['backbone']} (mean ± std over seeds)", fontsize="medium")
    ax.legend(fontsize="small", ncols=min(len(methods), 3))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def add_grid_arguments(
    p: argparse.ArgumentParser, methods: Sequence[str], name: str, bank_required: bool = True
) -> None:
    """The arguments every grid benchmark takes: what to run, where the data and results are, threads, --quiet.

    ``bank_required=False`` leaves checking ``--bank`` to the script (one of its modes may not need it)."""
    p.add_argument("--bank", required=bank_required, help="the pre-trained bank folder")
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    p.add_argument("--methods", nargs="+", default=list(methods))
    p.add_argument("--tasks", nargs="+", default=[t.name for t in all_tasks(Role.DOWNSTREAM) if t.builtin])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    p.add_argument("--data", type=Path, default=None, help="data folder (default: $MODPROMPT_DATA or the cache)")
    p.add_argument("--results", type=Path, default=RESULTS, help="results folder (default benchmarks/results)")
    p.add_argument("--name", default=name, help="stem of the outputs and of the per-run folder")
    only = p.add_mutually_exclusive_group()
    only.add_argument("--aggregate-only", action="store_true", help="only aggregate the stored results")
    only.add_argument(
        "--run-only",
        action="store_true",
        help="only run and store the missing results, leaving NAME.json/.md/.png as they are "
        "(to fill part of a larger table, e.g. one task, without rewriting it)",
    )
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: torch's); use 1 while another heavy process shares a 2-core machine",
    )
    add_device_argument(p)
    add_quiet_argument(p)


def run_grid(
    args: argparse.Namespace,
    grid: ResultGrid,
    run_all: Callable[[argparse.Namespace, ResultGrid], None],
    aggregate: Callable[[argparse.Namespace, ResultGrid], dict],
    write_markdown: Callable[[dict, Path, int], None],
    title: str,
    argv: Sequence[str] | None,
) -> dict | None:
    """Run what is missing (unless ``--aggregate-only``), then write ``NAME.json``, ``.md`` and ``.png``
    and return the summary (unless ``--run-only``: then None).

    ``argv`` are the script's arguments (None: ``sys.argv``); less ``--aggregate-only``, they are written
    into the outputs as the command that makes the table.
    """
    argv = sys.argv[1:] if argv is None else argv
    script = Path(inspect.getfile(run_all)).name
    args.data = args.data or default_data_root()
    if not args.aggregate_only:
        args.device = resolve_device(args.device)
        if args.threads:
            import torch

            # Two processes with two threads each on two cores make every matmul wait: 5-10x slower steps.
            torch.set_num_threads(args.threads)
        started = time.perf_counter()
        run_all(args, grid)
        logger.info("runs took %.0f s", time.perf_counter() - started)
        if args.run_only:
            return None
    summary = {"command": f"python benchmarks/{script} " + shlex.join(a for a in argv if a != "--aggregate-only"),
               **aggregate(args, grid)}  # fmt: skip
    if summary["settings"] is not None:
        summary["majority"] = majority_accuracy(grid.tasks, args.data, summary["settings"].get("test_limit"))
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    write_markdown(summary, args.results / f"{args.name}.md", len(args.seeds))
    write_plot(summary, args.results / f"{args.name}.png", title)
    return summary

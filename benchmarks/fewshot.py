"""The few-shot benchmark: adaptation methods × downstream tasks × seeds, on one backbone and bank.

Every run calls the same library function as ``modprompt adapt`` (:func:`modprompt.adapt.run.adapt`)
with the same settings except the method and the seed, so a table compares methods and nothing else.
Each (method, task, seed) result is written to ``RESULTS/NAME/<method>/<task>/seed<seed>.json`` as soon
as it finishes; a rerun skips the results that are there, so a stopped run continues where it stopped
(a stored result made with other settings is an error: use another ``--name``). Then the stored results
are aggregated to ``RESULTS/NAME.json``, ``RESULTS/NAME.md`` (mean ± sample std over seeds per task and
their average, trainable parameters and training time per method, and each method's budget: steps and
dev evaluations per run) and ``RESULTS/NAME.png``.

**One table, one protocol, one bank.** The settings (``--protocol`` among them, see
:mod:`modprompt.adapt.config`) are the same for every cell of a table, and a table that finds a cell made
otherwise stops. ``NAME/identity.json`` names the bank by its weights' sha256 and every cell records it, so
a new bank at the same path never adds cells to an old bank's table: give it another ``--name``.
``--side-by-side A B`` puts the tables ``A`` and ``B`` (say the old bank's and the new one's) in one
table, a row per method and table, each row saying its bank and protocol.

**Carrying cells over.** ``--carry-from OLD`` copies into this table each cell of table ``OLD`` that this
table's protocol would have run exactly alike (:func:`carry_check`: a single-stage method that trained its
whole budget, dev scored at the same steps, the same checkpoint chosen under this protocol's tie rule, the
same ``max_length`` and every other setting the same, and a bank that the method does not read or that is
the same); each carried cell says where it came from. ``--plan`` lists what is still to run, with each
run's time estimated from the cells of ``--estimate-from`` (default: ``--carry-from``).

CPU budget caps (``--test-limit``, ``--dev-limit``, ``--max-steps``, ...) apply to every method alike and
are written into the outputs. ``--test-limit N`` scores the first N of one fixed shuffle of each test
set: the same examples for every method and seed.

    python benchmarks/fewshot.py --bank modprompt/banks/gemma-3-270m --test-limit 300
    python benchmarks/fewshot.py --bank BANK --methods mp2 pt --tasks eprstmt --seeds 0 1 --aggregate-only
    python benchmarks/fewshot.py --bank BANK --methods mp2 pt --tasks iflytek --run-only  # fill cells, keep the table
    python benchmarks/fewshot.py --side-by-side fewshot fewshot-fair --name fewshot-banks
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import statistics
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from result_grid import RESULTS, ResultGrid, add_grid_arguments, run_grid, write_table

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.loop import dev_evaluations, run_budget, split_budget
from modprompt.adapt.registry import METHODS
from modprompt.adapt.run import adapt, fit_max_length, settings_in_effect
from modprompt.arguments import progress_arg
from modprompt.backbone import Backbone, resolve_backbone
from modprompt.baselines.adapt_methods import prefinetuned_identity
from modprompt.checksum import file_sha256
from modprompt.config_flags import add_dataclass_flags, dataclass_flag_values, flag_fields
from modprompt.data.fewshot import fewshot_splits, subset
from modprompt.modular.model import WEIGHTS_NAME as BANK_WEIGHTS
from modprompt.modular.model import read_bank_config
from modprompt.progress import Progress

logger = logging.getLogger("fewshot")

REPO = Path(__file__).resolve().parents[1]
#: where the repository keeps its banks: a table names its bank by sha256 and, if one is here, by folder
BANKS = REPO / "modprompt" / "banks"

DEFAULT_METHODS = ("mp2", "route-only", "route-per-layer", "pt", "deep-pt", "ft")
#: AdaptConfig fields that differ between the runs of one table (the grid's axes, and the prefinetune model)
PER_RUN = ("method", "seed", "prefinetuned")
#: AdaptConfig fields the benchmark sets for every run from its arguments (the budget and the shared settings)
SHARED = tuple(f.name for f in flag_fields(AdaptConfig, exclude=PER_RUN))
#: methods that take their prompt length from the bank when ``num_tokens`` is not set (adapt.methods'
#: ``_with_num_tokens``): their cells depend on the bank through it alone
PROMPT_LENGTH_FROM_BANK = ("pt", "deep-pt")

PROTOCOL_TEXT = {
    1: (
        "**Protocol 1** (runs before protocol 2): every stage had a step budget of its own (`max_steps`, or "
        "`max_epochs` epochs if fewer; the table below), so mp2, with two stages, had twice a single-stage "
        "method's, and every stage scored dev at its step 0 and every {every}; a stage stopped after "
        "`patience` = {patience} evaluations without improvement, so most runs trained less than their budget, "
        "and kept its best dev state, ties to the earlier step. `max_length` was sized from the train, dev and "
        "test inputs (a tokenizer-only check found that sizing it from train and dev alone changes no cell here)."
    ),
    2: (
        "**Protocol 2** (the fair one): every method has the same step budget for a run (`max_steps`, or "
        "`max_epochs` epochs if fewer; the table below), and a multi-stage method's stages share it in whole "
        "blocks of {every} (mp2: route, then prompts); no run stops early. Dev is scored at step 0 and "
        "every {every}, the same number of times for every method; a later stage starts from the "
        "state its predecessor chose, whose score is known and not scored again. The test score is that of the "
        "checkpoint best on dev among all the run's evaluations, step 0 included, ties to the later step. "
        "`max_length` is sized from the train and dev inputs only."
    ),
}


def _grid(args: argparse.Namespace) -> ResultGrid:
    # The pre-finetuned model's path may differ: only ``prefinetune`` reads it, so adding that method later is allowed.
    return ResultGrid(
        args.results / args.name, args.methods, args.tasks, args.seeds, AdaptConfig, per_run_fields=PER_RUN
    )


def _shared(args: argparse.Namespace) -> dict:
    """The AdaptConfig fields every run of this table gets (those not given keep AdaptConfig's defaults)."""
    shared = dataclass_flag_values(args, SHARED)
    if args.prefinetuned:
        shared["prefinetuned"] = str(Path(args.prefinetuned).resolve())
    return shared


def _identity(args: argparse.Namespace) -> dict:
    return {"bank_sha256": file_sha256(Path(args.bank) / BANK_WEIGHTS),
            "backbone": args.backbone or read_bank_config(args.bank)["backbone"]["name"]}  # fmt: skip


def run_all(args: argparse.Namespace, grid: ResultGrid) -> None:
    """Run every missing (method, task, seed), storing each result as it finishes (after carrying over the
    cells of ``--carry-from`` that this table's protocol would have run alike)."""
    identity = _identity(args)
    grid.check_identity(identity, write=not args.plan)  # a plan writes nothing
    shared = _shared(args)
    if args.prefinetuned and "prefinetune" in grid.methods:
        _check_prefinetuned_model(grid, Path(args.prefinetuned))
    todo, done = grid.missing(lambda method, seed: AdaptConfig(method, seed=seed, **shared))
    logger.info("%d results stored, %d to run", done, len(todo))
    backbone = None
    if todo and (args.carry_from or not args.plan):
        backbone = resolve_backbone(args.backbone, read_bank_config(args.bank)["backbone"])
    if todo and args.carry_from:
        todo = carry_over(grid, todo, args.results / args.carry_from, identity, backbone, args)
    if args.plan or args.carry_only:
        _print_plan(todo, args)
        return
    with Progress(len(todo), args.name, "run", progress_arg(args)).shown() as bar:  # each run shows its own too
        for i, (config, task, path) in enumerate(todo, 1):
            logger.info("[%d/%d] %s on %s, seed %d", i, len(todo), config.method, task, config.seed)
            result = adapt(config, task, args.data, bank=args.bank, backbone=backbone, device=args.device,
                           progress=progress_arg(args))  # fmt: skip
            grid.store(path, result, result["device"])
            logger.info("  %s: metric %.4f, %.0f s", path.relative_to(grid.root), result["metric"],
                        result["fit_seconds"])  # fmt: skip
            bar.step(metric=result["metric"])


# -- carrying cells over from another table --------------------------------------------------------------


def _stored_identity(root: Path) -> dict:
    path = root / "identity.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def _bank_folder(sha256: str) -> Path | None:
    """The repository's bank folder whose weights have ``sha256`` (None: none of them)."""
    for weights in sorted(BANKS.glob(f"*/{BANK_WEIGHTS}")):
        if file_sha256(weights) == sha256:
            return weights.parent
    return None


def chosen_step(result: dict) -> int:
    """The run step of the checkpoint a stored run was tested with (results before protocol 2 do not record it:
    a stage that kept its starting state kept what the stage before it chose)."""
    if "chosen_step" in result:
        return result["chosen_step"]
    chosen, offset = 0, 0
    for stage in result["stages"]:
        if stage["best_step"]:
            chosen = offset + stage["best_step"]
        offset += stage["steps"]
    return chosen


def carry_check(
    stored: dict, config: AdaptConfig, max_length: int, same_bank: bool, prompt_tokens_match: bool
) -> str | None:
    """Why the stored run ``stored`` is not exactly what ``config`` would run (None: it is, so it may be carried).

    ``max_length`` is what ``config``'s protocol sizes for the cell; ``same_bank``: the stored cell's bank is
    this table's; ``prompt_tokens_match``: the stored bank and this table's give the same prompt length.
    Settings are compared as they act (:func:`settings_in_effect`: a stored cell from before windows ran as a
    new one does where windows do not apply).
    """
    method = stored["method"]
    if not same_bank:
        if METHODS[method].needs_bank:
            return "another bank"
        if method in PROMPT_LENGTH_FROM_BANK and config.num_tokens is None and not prompt_tokens_match:
            return "another bank's prompt length"
    old = AdaptConfig.from_dict(stored["config"])
    as_new = dataclasses.replace(
        old, protocol=config.protocol, patience=config.patience, prefinetuned=config.prefinetuned
    )
    as_new = settings_in_effect(as_new, stored["task"]).to_dict()
    wanted = settings_in_effect(config, stored["task"]).to_dict()
    if as_new != wanted:
        changed = sorted(k for k, v in wanted.items() if as_new[k] != v)
        return f"other settings ({', '.join(changed)})"
    if len(stored["stages"]) != 1:
        return "several stages (their budgets differ between protocols)"
    (stage,) = stored["stages"]
    total, eval_every = run_budget(config, stored["examples"]["train"])
    if stage["stopped_early"] or stage["steps"] != total:
        return "stopped early"
    steps = [e["step"] for e in stage["evaluations"]]
    if steps != sorted({0, *range(eval_every, total + 1, eval_every), total}):
        return "dev scored at other steps"
    scores = [e["dev"] for e in stage["evaluations"]]
    best = max(scores)
    pick = max(i for i, s in enumerate(scores) if s == best) if config.protocol >= 2 else scores.index(best)
    if steps[pick] != stage["best_step"]:
        return "another checkpoint under this protocol's tie rule"
    if stored["max_length"] != max_length:
        return "another max_length"
    return None


def _prompt_tokens(bank: str | Path) -> int:
    return int(read_bank_config(bank)["prompt"]["num_tokens"])


#: the cells left to run: (config, task, path), as :meth:`ResultGrid.missing` lists them
Todo = list[tuple[AdaptConfig, str, Path]]


def carry_over(
    grid: ResultGrid, todo: Todo, source: Path, identity: dict, backbone: Backbone, args: argparse.Namespace
) -> Todo:
    """Store each missing cell that table ``source`` holds and :func:`carry_check` passes; the rest stay to do."""
    source_identity = _stored_identity(source)
    if source_identity.get("backbone") != identity["backbone"]:
        raise SystemExit(
            f"{source} holds results of backbone {source_identity.get('backbone')}, not {identity['backbone']}"
        )
    same_bank = source_identity.get("bank_sha256") == identity["bank_sha256"]
    old_bank = _bank_folder(source_identity["bank_sha256"]) if not same_bank else Path(args.bank)
    prompt_tokens_match = old_bank is not None and _prompt_tokens(old_bank) == _prompt_tokens(args.bank)
    left, reasons, splits = [], Counter(), {}
    for config, task, path in todo:
        stored_path = source / path.relative_to(grid.root)
        if not stored_path.is_file():
            reasons["not in the source table"] += 1
            left.append((config, task, path))
            continue
        stored = json.loads(stored_path.read_text())
        key = (task, config.seed)
        if key not in splits:
            train, dev, _ = fewshot_splits(task, config.seed, args.data, config.k_per_label)
            splits[key] = train + subset(dev, config.dev_limit)
        max_length = fit_max_length(config, backbone, splits[key]).max_length
        reason = carry_check(stored, config, max_length, same_bank, prompt_tokens_match)
        if reason is None and config.method == "prefinetune":
            model = prefinetuned_identity(config.prefinetuned)["sha256"] if config.prefinetuned else None
            same_model = model == (stored.get("prefinetuned") or {}).get("sha256")
            reason = None if same_model else "another pre-finetuned model"
        if reason is not None:
            reasons[reason] += 1
            left.append((config, task, path))
            continue
        stage = stored["stages"][0]
        carried = {
            **stored,
            "protocol": config.protocol,
            "config": config.to_dict(),
            "step_budget": stage["step_budget"],
            "dev_evaluations": len(stage["evaluations"]),
            "chosen_step": stage["best_step"],
            # carry_check found the run the same under this table's bank: the cell is this bank's (and says
            # which bank it ran from)
            "bank_sha256": identity["bank_sha256"],
            "stages": [{**stage, "best_run_step": stage["best_step"], "dev_evaluations": len(stage["evaluations"])}],
            "carried_from": {
                "table": source.name,
                "path": stored_path.relative_to(source.parent).as_posix(),
                "protocol": stored.get("protocol", 1),
                "bank_sha256": stored.get("bank_sha256", source_identity["bank_sha256"]),
                "config": stored["config"],
            },
        }
        ResultGrid.store_as_is(path, carried)
        reasons["carried"] += 1
    logger.info("carried from %s: %s", source.name, dict(reasons))
    return left


# -- what is left to run, and its time -------------------------------------------------------------------


def estimate_seconds(reference: Path, config: AdaptConfig, task: str) -> float | None:
    """A run's wall time estimated from the stored runs of the same method and task in table ``reference``:
    per stage, its mean time per step times this run's steps; per dev evaluation, its mean time times this
    run's evaluations; and the rest of a run (loading, preparation, test) as it was. None: no such runs."""
    runs = [json.loads(p.read_text()) for p in sorted((reference / config.method / task).glob("seed*.json"))]
    if not runs:
        return None
    estimates = []
    for run in runs:
        stages = run["stages"]
        total, eval_every = run_budget(config, run["examples"]["train"])
        if config.protocol == 1:  # every stage its whole budget and its own evaluations (an upper bound)
            budgets, evals = [total] * len(stages), len(stages) * dev_evaluations(total, eval_every)
        else:
            budgets, evals = split_budget(total, eval_every, len(stages)), dev_evaluations(total, eval_every)
        made = sum(1 for s in stages for e in s["evaluations"] if not e.get("carried"))
        dev_seconds = sum(s["dev_seconds"] for s in stages) / max(1, made)
        train = sum(b * s["train_seconds"] / s["steps"] for b, s in zip(budgets, stages) if s["steps"])
        estimates.append(run["wall_seconds"] - run["fit_seconds"] + train + evals * dev_seconds)
    return statistics.fmean(estimates)


def _print_plan(todo: Todo, args: argparse.Namespace) -> None:
    """The cells left to run and their estimated times, as JSON on stdout."""
    reference = args.results / (args.estimate_from or args.carry_from or args.name)
    cells, per_method = [], Counter()
    for config, task, path in todo:
        seconds = estimate_seconds(reference, config, task)
        cells.append({"cell": path.relative_to(args.results).as_posix(), "estimated_seconds": seconds})
        per_method[config.method] += seconds or 0.0
    known = [c["estimated_seconds"] for c in cells if c["estimated_seconds"] is not None]
    plan = {
        "to_run": len(cells),
        "estimated_from": reference.name,
        "estimated_hours": sum(known) / 3600,
        "unestimated": len(cells) - len(known),
        "hours_per_method": {m: s / 3600 for m, s in per_method.items()},
        "cells": cells,
    }
    sys.stdout.write(json.dumps(plan, indent=2) + "\n")


# -- aggregation -----------------------------------------------------------------------------------------


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


def _stats(values: list[int]) -> dict:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def _span(stats: dict) -> str:
    """``value`` when every run had it, else ``mean (min–max)``."""
    if stats["min"] == stats["max"]:
        return str(stats["min"])
    return f"{stats['mean']:.1f} ({stats['min']}–{stats['max']})"


def rose_above_start(result: dict) -> bool:
    """Whether a run's best dev score is above its step 0's. Under protocol 2 ties go to the later step, so a
    run whose dev score never moved chooses its last step: "not step 0" alone does not say that training helped."""
    scores = [dev for _, dev in _dev_scores(result)]
    return max(scores) > scores[0]


def budgets(grid: ResultGrid) -> dict:
    """Per method, what its stored runs spent and chose: stages and their step budgets, steps trained, dev
    evaluations, runs stopped early, runs whose chosen checkpoint was step 0 (the untouched start) and runs
    whose best dev score rose above step 0's."""
    table = {}
    for method in grid.methods:
        runs = [json.loads(p.read_text()) for p in grid.cells(method)]
        if not runs:
            continue
        budgets_seen = Counter(" + ".join(str(s["step_budget"]) for s in r["stages"]) for r in runs)
        evaluations = [sum(1 for s in r["stages"] for e in s["evaluations"] if not e.get("carried")) for r in runs]
        table[method] = {
            "stages": " + ".join(s["stage"] for s in runs[0]["stages"]),
            "step_budget": sorted(budgets_seen),
            "steps": _stats([r["steps"] for r in runs]),
            "dev_evaluations": _stats(evaluations),
            "stopped_early": sum(any(s["stopped_early"] for s in r["stages"]) for r in runs),
            "chose_step_0": sum(chosen_step(r) == 0 for r in runs),
            "rose_above_step_0": sum(rose_above_start(r) for r in runs),
            "carried": sum("carried_from" in r for r in runs),
            "runs": len(runs),
        }
    return table


def _bank_record(grid: ResultGrid) -> dict:
    """The table's bank: sha256 (``identity.json``, checked against every cell that records one), the path its
    cells ran it from, and the repository folder that holds those weights now."""
    sha256 = _stored_identity(grid.root).get("bank_sha256")
    paths = set()
    for method in grid.methods:
        for path in grid.cells(method):
            result = json.loads(path.read_text())
            if result.get("bank_sha256", sha256) != sha256:
                raise SystemExit(f"{path} ran from bank sha256 {result['bank_sha256']}, not the table's {sha256}")
            if result.get("bank"):
                paths.add(_shown(Path(result["bank"])))
    folder = _bank_folder(sha256) if sha256 else None
    return {"sha256": sha256, "ran_from": sorted(paths), "folder": _shown(folder) if folder else None}


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is in it (not this machine's absolute path)."""
    return path.relative_to(REPO).as_posix() if path.is_relative_to(REPO) else str(path)


def aggregate(args: argparse.Namespace, grid: ResultGrid) -> dict:
    """Mean ± sample std over the stored seeds of each (method, task), per-method summaries and budgets."""
    summary = grid.summary(
        {"fit_seconds": "fit_seconds_per_run", "wall_seconds": "wall_seconds_per_run"},
        metric="accuracy on the test set (F1 for extractive tasks), mean ± sample std over seeds",
        bank=args.bank,
        prefinetuned=_prefinetuned_models(grid.path("prefinetune", t, s) for t in grid.tasks for s in grid.seeds),
    )
    summary["bank_identity"] = _bank_record(grid)
    if len(summary["bank_identity"]["ran_from"]) == 1:  # the path the cells ran it from, not today's argument
        summary["bank"] = summary["bank_identity"]["ran_from"][0]
    settings = summary["settings"] or {}
    summary["protocol"] = settings.get("protocol")
    summary["budgets"] = budgets(grid)
    return summary


def _bank_text(summary: dict) -> str:
    bank = summary.get("bank_identity") or {}
    text = f"bank `{summary['bank']}`"
    if bank.get("sha256"):
        text += f" (weights sha256 {bank['sha256'][:12]}…"
        if bank["folder"] and bank["folder"] != summary["bank"]:
            text += f", now at `{bank['folder']}`"
        elif not bank["folder"]:
            text += ", not a folder of `modprompt/banks`"
        text += ")"
    return text


def _protocol_text(settings: dict) -> str:
    """The protocol's paragraph, with the table's budget in it."""
    protocol, every = settings["protocol"], settings["eval_every"]
    if settings["max_steps"] == 0:
        return (f"**Protocol {protocol}, nothing trained** (`max_steps` 0): every run scores its starting point, "
                "once on dev" + (" per stage" if protocol == 1 else "") + ", and is tested with it.")  # fmt: skip
    return PROTOCOL_TEXT[protocol].format(**settings, every=f"{every} steps" if every is not None else "one epoch")


def _budget_lines(summary: dict) -> list[str]:
    """The protocol's rule and each method's budget (steps, dev evaluations) and choices, as Markdown."""
    settings = summary["settings"] or {}
    protocol = settings.get("protocol")
    if protocol not in PROTOCOL_TEXT:
        return []
    carried = any(entry["carried"] for entry in summary["budgets"].values())
    # Protocol 1 kept the earlier step on a tie, so there "rose above step 0" is "did not choose step 0".
    rose = protocol >= 2
    lines = [_protocol_text(settings), "",
             "| method | stages | step budget | steps trained | dev evaluations | stopped early | chose step 0 |"
             + (" dev rose above step 0 |" if rose else "") + (" carried over |" if carried else ""),
             "|---|---|---:|---:|---:|---:|---:|" + ("---:|" if rose else "") + ("---:|" if carried else "")]  # fmt: skip
    for method, entry in summary["budgets"].items():
        runs = entry["runs"]
        lines.append(
            f"| {method} | {entry['stages']} | {', '.join(entry['step_budget'])} | {_span(entry['steps'])} | "
            f"{_span(entry['dev_evaluations'])} | {entry['stopped_early']} of {runs} | "
            f"{entry['chose_step_0']} of {runs} |"
            + (f" {entry['rose_above_step_0']} of {runs} |" if rose else "")
            + (f" {entry['carried']} of {runs} |" if carried else "")
        )
    lines += ["", "*step budget* per stage; *steps trained* and *dev evaluations* per run (mean, and range where "
              "runs differ); *chose step 0*: runs whose test score is that of their untrained start"
              + ("; *dev rose above step 0*: runs whose best dev score is above their step 0's (ties go to the "
                 "later step, so a run whose dev score never moved chose its last step)" if rose else "")
              + ("; *carried over*: runs copied from another table that this protocol would have run alike "
                 "(each cell's `carried_from` names it)." if carried else ".")]  # fmt: skip
    return lines


def write_markdown(summary: dict, path: Path, seeds: int) -> None:
    intro = (
        f"Backbone `{summary['backbone']}`, {_bank_text(summary)}. {summary['metric']} "
        f"({seeds} seeds; a cell over fewer seeds shows their count). Train time is the wall time of one run's "
        "training with its dev evaluations; run time is the whole run's, which adds loading the split, building "
        "the method (the full-model methods copy the backbone), its preparation (Child-Tuning_D's Fisher pass over "
        "the whole training split) and scoring the test set. Both are averaged over runs."
    )
    for model in summary["prefinetuned"]:
        where = _shown(Path(model["path"]))  # not this machine's absolute path
        intro += f" `prefinetune` starts from the pre-finetuned model `{where}` (weights sha256 {model['sha256']})."
    budget = _budget_lines(summary)
    if budget:
        intro += "\n\n" + "\n".join(budget)
    columns = {"train s/run": ("fit_seconds_per_run", ".1f"), "run s/run": ("wall_seconds_per_run", ".1f")}
    write_table(summary, path, seeds, "Few-shot adaptation benchmark", intro, "trainable params", columns)


def _dev_scores(result: dict) -> list[tuple[int, float]]:
    """(run step, dev score) of every dev evaluation a run made (not the scores a stage carried in)."""
    scores, offset = [], 0
    for stage in result["stages"]:
        scores += [(offset + e["step"], e["dev"]) for e in stage["evaluations"] if not e.get("carried")]
        offset += stage["steps"]
    return scores


def compare_tables(args: argparse.Namespace, grid: ResultGrid) -> dict:
    """Each stored cell of this table beside the same cell of table ``args.compare_with``: the same test metric,
    the same dev scores at the same steps and the same chosen checkpoint? (A reproduction check: run cells again
    under another name and compare.) Written to ``RESULTS/NAME-vs-OTHER.json`` and returned."""
    other = args.results / args.compare_with
    cells = []
    for method in grid.methods:
        for path in grid.cells(method):
            twin = other / path.relative_to(grid.root)
            if not twin.is_file():
                continue
            a, b = json.loads(path.read_text()), json.loads(twin.read_text())
            losses = [(e.get("loss"), f.get("loss")) for s, t in zip(a["stages"], b["stages"])
                      for e, f in zip(s["evaluations"], t["evaluations"]) if "loss" in e and "loss" in f]  # fmt: skip
            cells.append({
                "cell": path.relative_to(grid.root).as_posix(),
                "metric": [a["metric"], b["metric"]],
                "chosen_step": [chosen_step(a), chosen_step(b)],
                "same": (a["metric"], _dev_scores(a), chosen_step(a)) == (b["metric"], _dev_scores(b), chosen_step(b)),
                "max_loss_difference": max((abs(x - y) for x, y in losses), default=None),
                "machines": [a.get("machine"), b.get("machine")],
            })  # fmt: skip
    report = {"table": grid.root.name, "compared_with": other.name, "cells": len(cells),
              "same": sum(c["same"] for c in cells), "results": cells}  # fmt: skip
    (args.results / f"{grid.root.name}-vs-{other.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def side_by_side(args: argparse.Namespace) -> dict:
    """One table from the stored tables ``args.side_by_side`` (their ``NAME.json``): a row per method and table,
    saying its bank (sha256) and protocol, so that an old bank's rows stand beside a new one's."""
    missing = [name for name in args.side_by_side if not (args.results / f"{name}.json").is_file()]
    if missing:
        names = ", ".join(f"{n}.json" for n in missing)
        raise SystemExit(f"no {names} in {args.results}: aggregate those tables first")
    tables = [(name, json.loads((args.results / f"{name}.json").read_text())) for name in args.side_by_side]
    tasks = list(dict.fromkeys(t for _, s in tables for t in s["tasks"]))
    lines = ["# Few-shot adaptation: tables side by side", "",
             "Each row is one method in one stored table, with that table's bank (weights sha256) and protocol; "
             "see each table's own page for its settings and budgets. Rows of different protocols do not compare "
             "as methods: protocol 1 gave multi-stage methods more steps and let runs stop early.", "",
             "| method | table | bank | protocol | " + " | ".join(tasks) + " | average |",
             "|---|---|---|---:|" + "---:|" * (len(tasks) + 1)]  # fmt: skip
    rows = []
    methods = list(dict.fromkeys(m for _, s in tables for m in s["methods"]))
    for method in methods:
        for name, summary in tables:
            entry = summary["methods"].get(method)
            if entry is None or not entry["runs"]:
                continue
            seeds = len(summary["seeds"])
            cells = []
            for task in tasks:
                cell = entry["tasks"].get(task)
                text = "–" if cell is None else f"{100 * cell['mean']:.1f} ± {100 * cell['std']:.1f}"
                cells.append(text if cell is None or cell["n"] == seeds else f"{text} (n={cell['n']})")
            bank = summary.get("bank_identity") or {}
            sha = (bank.get("sha256") or "?")[:12]
            shown = f"{sha} (`{bank['folder']}`)" if bank.get("folder") else sha
            protocol = summary.get("protocol") or (summary.get("settings") or {}).get("protocol", 1)
            average = f"{100 * entry['average']:.1f}" if entry["average"] is not None else "–"
            row = f"| {method} | [{name}]({name}.md) | {shown} | {protocol} | "
            lines.append(row + " | ".join(cells) + f" | {average} |")
            rows.append({"method": method, "table": name, "bank_sha256": sha, "protocol": protocol,
                         "tasks": entry["tasks"], "average": entry["average"]})  # fmt: skip
    (args.results / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    result = {"tables": args.side_by_side, "tasks": tasks, "rows": rows}
    (args.results / f"{args.name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_grid_arguments(p, DEFAULT_METHODS, "fewshot", bank_required=False)
    p.add_argument("--prefinetuned", help="the pre-finetuned model folder, for the 'prefinetune' method")
    add_dataclass_flags(p.add_argument_group("settings of every run (AdaptConfig)"), AdaptConfig, SHARED)
    carry = p.add_argument_group("carrying cells over, planning")
    carry.add_argument("--carry-from", metavar="NAME", help="first copy the cells of table NAME that this protocol "
                       "would have run exactly alike (each says where it came from)")  # fmt: skip
    carry.add_argument(
        "--carry-only", action="store_true", help="with --carry-from: carry, print the plan, run nothing"
    )
    carry.add_argument(
        "--plan", action="store_true", help="print the cells left to run and their estimated times (JSON); run nothing"
    )
    carry.add_argument(
        "--estimate-from", metavar="NAME", help="the table whose stored runs time the plan (default: --carry-from)"
    )
    p.add_argument(
        "--side-by-side",
        nargs="+",
        metavar="NAME",
        help="write one table (--name) from the stored tables NAME ..., a row per method and table",
    )
    p.add_argument("--compare-with", metavar="NAME", help="compare this table's stored cells with table NAME's "
                   "(metric, dev scores, chosen step), write NAME-vs-... .json and print it; runs nothing")  # fmt: skip
    args = p.parse_args(argv)
    if args.compare_with:
        return args
    if args.side_by_side:
        if args.name in ("fewshot", *args.side_by_side):
            p.error("--side-by-side writes a table of its own: give it a --name that is not one of its tables")
        return args
    if args.bank is None:
        p.error("--bank is required")
    unknown = sorted(set(args.methods) - set(METHODS))
    if unknown:
        p.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    try:
        AdaptConfig(args.methods[0], **_shared(args))
    except ValueError as error:
        p.error(str(error))
    if args.carry_only and not args.carry_from:
        p.error("--carry-only needs --carry-from")
    if args.plan or args.carry_only:
        if args.aggregate_only:
            p.error("--plan and --carry-only run nothing and write no table; drop --aggregate-only")
        args.run_only = True  # no table: the plan is the output
    return args


def main(argv: list[str] | None = None) -> dict | None:
    args = parse_args(argv)
    if args.side_by_side:
        return side_by_side(args)
    if args.compare_with:
        report = compare_tables(args, _grid(args))
        sys.stdout.write(json.dumps({k: v for k, v in report.items() if k != "results"}) + "\n")
        return report
    return run_grid(args, _grid(args), run_all, aggregate, write_markdown, "Few-shot adaptation", argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    main()

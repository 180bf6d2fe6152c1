"""One black-box run timed phase by phase, today's code against an earlier commit's, side by side in one run.

The same ``modprompt bbt`` run (``tune_task``: the method, task, seed and preset given) is made by each code
tree in turn, in its own process with its ``modprompt`` first on the path: ``--baseline REV`` is exported
from git (``git archive``) into a temporary folder. Each process times every scoring call by phase (router
candidates, prompt candidates, dev and test scoring) through a wrapper of the objective, and the rest of the
run (the optimisers, state saving) as the remainder. Then the two runs are compared: the candidates asked
for, every loss and accuracy, the dev selection, the chosen parameters and the test score; a faster code is
only a speed-up if they agree (losses within ``--tolerance``).

    python benchmarks/blackbox_speed.py --bank modprompt/banks/gemma-3-270m --baseline 194bd79 --threads 2

The baseline's run records every scoring call; today's replays it (see :func:`measure`), since the router
search's GP turns a loss that differs in its 7th digit into another proposal and a free run would compare
two different searches (``--free`` makes one anyway). Writes ``RESULTS/NAME.json`` and ``RESULTS/NAME.md``;
each run's JSON result and the record go to ``--work``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

logger = logging.getLogger("blackbox_speed")

ROOT = Path(__file__).resolve().parent.parent
PHASES = ("router", "prompt", "dev", "test")
#: budget fields a run may set over its preset (for short checks; the benchmark's run keeps the preset's)
BUDGET = ("router_evaluations", "prompt_evaluations", "popsize")


def measure(args: argparse.Namespace) -> dict:
    """The run itself, with whichever ``modprompt`` the path gives (called in a child process).

    ``--record`` writes every scoring call (its example set, candidates, base and results) as a JSON line;
    ``--replay`` reads such a file and, call by call, checks that the optimisers ask for exactly the recorded
    candidates, scores them for real (that is the time measured), and hands the optimisers the recorded results,
    so that both runs take the same path however the last digits of a loss fall. The largest difference between
    the recorded and the real losses is what the replay reports.
    """
    import torch
    from machine import describe_machine

    import modprompt
    from modprompt.arguments import data_root_arg
    from modprompt.blackbox.config import TuneConfig
    from modprompt.blackbox.objective import InProcessObjective
    from modprompt.blackbox.params import CandidateResult
    from modprompt.blackbox.scoring import Scorer
    from modprompt.blackbox.tune import tune_task

    torch.set_num_threads(args.threads)
    seconds = dict.fromkeys(PHASES, 0.0)
    calls = dict.fromkeys(PHASES, 0)
    replay = [json.loads(line) for line in args.replay.read_text().splitlines()] if args.replay else None
    record = args.record.open("w") if args.record else None
    check = {"calls": 0, "candidates_differ": 0, "max_loss_difference": 0.0, "accuracies_differ": 0,
             "max_loss_difference_by_phase": dict.fromkeys(PHASES, 0.0)}  # fmt: skip

    class Timed(InProcessObjective):
        """Times each evaluation by phase: which uploaded set (train, dev, test in upload order) and, on
        train, whether the candidates are routers; records or replays it."""

        def __init__(self, scorer) -> None:
            super().__init__(scorer)
            self.kinds: dict[str, str] = {}

        def upload(self, examples):
            uploaded = super().upload(examples)
            self.kinds[uploaded.parts[0]] = ("train", "dev", "test")[min(len(self.kinds), 2)]
            return uploaded

        def evaluate(self, examples, candidates, space=None, base=None, with_scores=False):
            kind = self.kinds[examples.parts[0]]
            phase = ("router" if candidates[0].router is not None else "prompt") if kind == "train" else kind
            options = {"base": base, "with_scores": with_scores} | ({} if space is None else {"space": space})
            started = time.perf_counter()
            results = super().evaluate(examples, candidates, **options)
            seconds[phase] += time.perf_counter() - started
            calls[phase] += 1
            asked = {"set": kind, "candidates": [c.to_dict() for c in candidates],
                     "base": None if base is None else base.to_dict()}  # fmt: skip
            got = [{"loss": r.loss, "accuracy": r.accuracy} for r in results]
            if record is not None:
                record.write(json.dumps({**asked, "results": got}) + "\n")
            if replay is None:
                return results
            recorded = replay[check["calls"]]
            check["calls"] += 1
            if {k: recorded[k] for k in asked} != asked:
                check["candidates_differ"] += 1
            for mine, theirs in zip(got, recorded["results"], strict=True):
                difference = abs(mine["loss"] - theirs["loss"])
                check["max_loss_difference"] = max(check["max_loss_difference"], difference)
                by_phase = check["max_loss_difference_by_phase"]
                by_phase[phase] = max(by_phase[phase], difference)
                check["accuracies_differ"] += mine["accuracy"] != theirs["accuracy"]
            if kind == "test":  # the test score is today's own, compared by the caller
                return results
            return [CandidateResult(loss=r["loss"], accuracy=r["accuracy"]) for r in recorded["results"]]

    objective = Timed(Scorer.from_bank(args.bank, args.backbone, max_length=args.max_length))
    budget = {name: getattr(args, name) for name in BUDGET}
    config = TuneConfig.preset(args.preset, args.method, args.seed, test_limit=args.test_limit,
                               dev_limit=args.dev_limit, **budget)  # fmt: skip
    started = time.perf_counter()
    result = tune_task(objective, args.task, data_root_arg(args.data), config, state_path=None, progress=False)
    wall = time.perf_counter() - started
    if record is not None:
        record.close()
    result["timing"] = {
        "wall_seconds": wall,
        "seconds": {**seconds, "other": wall - sum(seconds.values())},
        "calls": calls,
        "modprompt": str(Path(modprompt.__file__).parent),
        "machine": describe_machine(),
    }
    if replay is not None:
        result["replay"] = {**check, "recorded_calls": len(replay)}
    return result


def _export(revision: str, into: Path) -> Path:
    """The tree of ``revision`` (a commit of this repository) in ``into``."""
    archive = into / "tree.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", "-o", str(archive), revision], check=True)
    tree = into / revision
    with tarfile.open(archive) as tar:
        tar.extractall(tree, filter="data")
    return tree


def _run_child(tree: Path, args: argparse.Namespace, out: Path, extra: list[str]) -> dict:
    """``measure`` in a child process whose ``modprompt`` is ``tree``'s."""
    command = [sys.executable, str(Path(__file__).resolve()), "--measure", "--out", str(out), *_passed(args), *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tree), str(ROOT / "benchmarks")])}
    logger.info("running %s with modprompt from %s", args.method, tree)
    subprocess.run(command, check=True, cwd=ROOT, env=env)
    return json.loads(out.read_text())


def _passed(args: argparse.Namespace) -> list[str]:
    flags = ["bank", "backbone", "task", "method", "seed", "preset", "threads", "test_limit", "dev_limit",
             "max_length", "data", *BUDGET]
    return [item for name in flags if getattr(args, name) is not None
            for item in (f"--{name.replace('_', '-')}", str(getattr(args, name)))]  # fmt: skip


def compare(baseline: dict, current: dict, tolerance: float) -> dict:
    """Where today's run agrees with the baseline's: with a replay, every candidate asked for is the recorded
    one and every real loss is within ``tolerance`` of the recorded loss, with the same accuracies; then the
    same choices (by construction) and today's own test score against the baseline's."""
    same = {
        "chosen_at": (baseline["best_dev"] or {}).get("at") == (current["best_dev"] or {}).get("at"),
        "parameters": baseline["parameters"] == current["parameters"],
        "test_accuracy": baseline["test"]["accuracy"] == current["test"]["accuracy"],
        "test_loss": abs(baseline["test"]["loss"] - current["test"]["loss"]) <= tolerance,
    }
    comparison = {"test_loss_difference": abs(baseline["test"]["loss"] - current["test"]["loss"]),
                  "parted_at": _parted_at(baseline["history"], current["history"], tolerance)}  # fmt: skip
    replay = current.get("replay")
    if replay is not None:
        same["candidates"] = replay["candidates_differ"] == 0 and replay["calls"] == replay["recorded_calls"]
        same["losses"] = replay["max_loss_difference"] <= tolerance
        same["accuracies"] = replay["accuracies_differ"] == 0
        comparison["replay"] = replay
    return {**comparison, "same": same, "exact": all(same.values())}


def _parted_at(a: list[dict], b: list[dict], tolerance: float) -> str | None:
    """The first history entry (a router evaluation or a generation) whose best loss differs, or None."""
    for x, y in zip(a, b):
        if abs(x["best_loss"] - y["best_loss"]) > tolerance:
            where = f"router evaluation {x['evaluations']}"
            if x["stage"] == "prompt":
                where = f"generation {x['generation']}"
            return f"{where}: best loss {x['best_loss']:.6f} against {y['best_loss']:.6f}"
    return None


def write_markdown(summary: dict, path: Path) -> None:
    runs = summary["runs"]
    machine = runs[0]["timing"]["machine"]
    lines = [
        "# Black-box run time, side by side",
        "",
        f"One `{summary['method']}` run (`--preset {summary['preset']}`) on {summary['task']}, seed "
        f"{summary['seed']}, test limit {summary['test_limit']}, dev limit {summary['dev_limit']}, in-process "
        f"scoring, {summary['threads']} threads, made by each code tree in turn in one invocation, on "
        f"{machine['cpu']} ({machine['isa']}, {machine['cpus']} CPUs).",
        "",
        f"Command: `{summary['command']}`",
        "",
        "| code | wall s | router s | prompt s | dev s | test s | other s | tokens | test accuracy | test loss |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        t = run["timing"]
        s = t["seconds"]
        lines.append(f"| {run['code']} | {t['wall_seconds']:.0f} | {s['router']:.0f} | {s['prompt']:.0f} | "
                     f"{s['dev']:.0f} | {s['test']:.0f} | {s['other']:.0f} | {run['tokens']:,} | "
                     f"{run['test']['accuracy']:.3f} | {run['test']['loss']:.6f} |")  # fmt: skip
    c = summary["comparison"]
    agreement = ", ".join(f"{k}: {'same' if v else 'DIFFERENT'}" for k, v in c["same"].items())
    lines += ["", f"Speed-up: **{summary['speedup']:.2f}×** in wall time ({agreement}; tolerance "
              f"{summary['tolerance']:g})."]  # fmt: skip
    replay = c.get("replay")
    if replay is not None:
        phases = ", ".join(f"{k} {v:.1e}" for k, v in replay["max_loss_difference_by_phase"].items())
        lines += [
            "",
            f"Today's run replays the baseline's: its optimisers were handed the baseline's recorded results, so "
            f"both took one path, and each of its {replay['calls']} scoring calls asked for exactly the recorded "
            f"candidates ({replay['candidates_differ']} differed) and scored them for real: the largest loss "
            f"difference was {replay['max_loss_difference']:.1e} (by phase: {phases}), "
            f"{replay['accuracies_differ']} accuracies differed. Its test score is its own.",
        ]
    elif c["parted_at"] is not None:
        lines += [
            "",
            "Without a replay each run's optimisers saw its own losses, and the two searches parted at "
            f"{c['parted_at']}: from there on they are two different searches, and their scores differ by chance, "
            "not by code.",
        ]
    lines += [
        "",
        "*router*, *prompt*: train-set scoring of the router search and of the layer-wise CMA-ES; *dev*, *test*: "
        "their scoring; *other*: the optimisers (GP, CMA-ES), state and bookkeeping; *tokens*: input tokens "
        "scored, every candidate's, padding not counted.",
    ]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bank", required=True)
    p.add_argument("--backbone", help="a local model folder (default: the bank's)")
    p.add_argument("--baseline", help="the commit to compare with (a git revision; required)")
    p.add_argument("--free", action="store_true",
                   help="no replay: today's optimisers see today's losses (their path parts from the baseline's "
                        "where a loss differs in its last digits)")  # fmt: skip
    p.add_argument("--task", default="eprstmt")
    p.add_argument("--method", default="mp2-bb")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--preset", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--test-limit", type=int, default=200)
    p.add_argument("--dev-limit", type=int, default=32)
    p.add_argument("--max-length", type=int, default=256)
    for name in BUDGET:
        p.add_argument("--" + name.replace("_", "-"), type=int, help="over the preset's (default: the preset's)")
    p.add_argument("--data", help="the data root (default: modprompt's)")
    p.add_argument("--tolerance", type=float, default=1e-5)
    p.add_argument("--name", default="blackbox-speed")
    p.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, default=ROOT / "runs" / "blackbox-speed", help="each run's result and record")
    p.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--record", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--replay", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.measure:
        args.out.write_text(json.dumps(measure(args), indent=2) + "\n")
        return 0
    if not args.baseline:
        p.error("--baseline is required")
    args.work.mkdir(parents=True, exist_ok=True)
    stem = args.work / f"{args.method}-{args.task}-seed{args.seed}"
    calls = Path(f"{stem}-{args.baseline}.calls.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        tree = _export(args.baseline, Path(tmp))
        baseline = _run_child(tree, args, Path(f"{stem}-{args.baseline}.json"), ["--record", str(calls)])
    today = _run_child(ROOT, args, Path(f"{stem}-today.json"), [] if args.free else ["--replay", str(calls)])
    runs = [{**baseline, "code": args.baseline}, {**today, "code": "today"}]
    summary = {
        "command": "python benchmarks/blackbox_speed.py " + " ".join(sys.argv[1:]),
        **{
            k: getattr(args, k)
            for k in ("baseline", "method", "task", "seed", "preset", "threads", "test_limit", "dev_limit", "tolerance")
        },
        "runs": [
            {k: run[k] for k in ("code", "timing", "tokens", "calls", "cache", "test", "best_dev")} for run in runs
        ],
        "comparison": compare(baseline, today, args.tolerance),
        "speedup": baseline["timing"]["wall_seconds"] / today["timing"]["wall_seconds"],
    }
    write_markdown(summary, args.results / f"{args.name}.md")
    (args.results / f"{args.name}.json").write_text(json.dumps(summary, indent=2) + "\n")
    logger.info("wrote %s", args.results / f"{args.name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())

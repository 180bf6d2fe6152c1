"""Does routing matter? Each upstream task's held-out split scored with its own learned route, with the
uniform route, and with another task's route.

The held-out examples are the ones pre-training evaluates on (the run config's ``held_out_per_task``
and seed; ``--per-task`` takes the first N of them for a quicker look). "Another task's route" is one
fixed derangement of the bank's tasks (seeded, no task keeps its own), so every task is scored with
exactly one foreign route. The uniform route gives every module weight 1/K at every layer. Routing
matters when own > uniform > another's.

    python benchmarks/route_ablation.py --bank modprompt/banks/gemma-3-270m \\
        --config modprompt/configs/pretrain-gemma.json --name route-ablation --threads 2
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from modprompt.backbone import load_backbone
from modprompt.arguments import data_root_arg
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.evaluate import evaluate, main_metric
from modprompt.modular.model import ModularPromptModel
from modprompt.modular.pretrain import PretrainConfig
from modprompt.training.upstream import upstream_data

RESULTS = Path(__file__).parent / "results"
CONDITIONS = ("own", "uniform", "other")


def derangement(n: int, seed: int) -> list[int]:
    """A seeded permutation of range(n) that moves every index."""
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(n)
        if n < 2 or not (perm == np.arange(n)).any():
            return perm.tolist()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--config", default="modprompt/configs/pretrain-gemma.json",
                        help="the pre-training config whose held-out sample, max_length and seed to use")  # fmt: skip
    parser.add_argument("--data", help="data root (default: the shared mirror)")
    parser.add_argument("--per-task", type=int, help="score only the first N held-out examples of each task")
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=list(CONDITIONS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the derangement")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--name", default="route-ablation", help="results file stem under benchmarks/results/")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    config = PretrainConfig.from_json(args.config)
    model = ModularPromptModel.from_pretrained(args.bank, load_backbone(config.backbone)).eval()
    encoder = MRCEncoder(model.backbone.tokenizer, EncodingConfig(config.max_length, model.config.num_tokens))
    _, held_out = upstream_data(model.tasks, data_root_arg(args.data), config.held_out_per_task, config.train.seed)
    if args.per_task:
        held_out = {task: examples[: args.per_task] for task, examples in held_out.items()}

    with torch.no_grad():
        own = model.router(torch.arange(len(model.tasks)))  # (tasks, layers, K) at inference
    k = own.shape[-1]
    perm = derangement(len(model.tasks), args.seed)
    routes = {
        "own": own,
        "uniform": torch.full_like(own, 1.0 / k),
        "other": own[perm],
    }
    results: dict[str, dict[str, float]] = {task: {} for task in held_out}
    started = time.perf_counter()
    for condition in args.conditions:
        for task, examples in held_out.items():
            weights = routes[condition][model.router.task_index(task)]

            def forward(batch: dict, tasks: list[str], weights: torch.Tensor = weights):
                prompts = model.bank.prompts(weights.expand(len(tasks), -1, -1))
                return model.forward_with_prompts(batch, prompts)

            results[task][condition] = main_metric(evaluate(forward, encoder, examples))
        print(f"{condition}: mean {np.mean([r[condition] for r in results.values()]):.4f}", flush=True)
    means = {c: float(np.mean([r[c] for r in results.values()])) for c in args.conditions}
    result = {
        "command": "python benchmarks/route_ablation.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "bank": args.bank,
        "backbone": config.backbone,
        "examples_per_task": {task: len(examples) for task, examples in held_out.items()},
        "derangement": {model.tasks[i]: model.tasks[j] for i, j in enumerate(perm)},
        "per_task": results,
        "mean": means,
        "seconds": time.perf_counter() - started,
    }
    out = RESULTS / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    return result


def markdown(r: dict) -> str:
    conditions = list(r["mean"])
    n = sorted(set(r["examples_per_task"].values()))
    lines = [
        f"# Route ablation: `{r['bank']}` on {r['backbone']}",
        "",
        f"Held-out upstream examples ({'–'.join(map(str, [n[0], n[-1]])) if len(n) > 1 else n[0]} per task, "
        f"{len(r['per_task'])} tasks), main metric (accuracy, or F1 for extractive QA), each task scored with "
        "its own learned route, the uniform route (1/K per module), and another task's route (one fixed "
        "derangement, in the JSON).",
        "",
        "| task | " + " | ".join(conditions) + " |",
        "|---|" + "---:|" * len(conditions),
        *[f"| {t} | " + " | ".join(f"{v[c]:.3f}" for c in conditions) + " |" for t, v in sorted(r["per_task"].items())],
        "| **mean** | " + " | ".join(f"**{r['mean'][c]:.3f}**" for c in conditions) + " |",
        "",
        *_paired(r["per_task"], conditions),
        f"    {r['command']}",
        "",
    ]
    return "\n".join(lines)


def _paired(per_task: dict[str, dict[str, float]], conditions: list[str]) -> list[str]:
    """Own route against each other condition, paired by task: mean difference, its standard error over
    tasks, and the tasks where own is better, worse or the same."""
    if "own" not in conditions or len(per_task) < 2:
        return []
    lines = ["| own against | mean difference | standard error | tasks better / worse / tied |", "|---|---:|---:|---|"]
    for other in (c for c in conditions if c != "own"):
        diffs = np.array([v["own"] - v[other] for v in per_task.values()])
        se = diffs.std(ddof=1) / np.sqrt(len(diffs))
        counts = f"{(diffs > 0).sum()} / {(diffs < 0).sum()} / {(diffs == 0).sum()}"
        lines.append(f"| {other} | {diffs.mean():+.3f} | {se:.3f} | {counts} |")
    return [*lines, ""]


if __name__ == "__main__":
    main()

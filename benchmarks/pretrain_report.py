"""Report of a multi-task run: training curve (PNG), and a results JSON + Markdown table.

Reads the run folder written by ``modprompt pretrain`` or ``modprompt prefinetune`` (its final
``history.json``, or the latest checkpoint of a run still in progress) and compares the per-task
held-out metric of the first evaluation (the untrained bank or model, step 0) with the last.

For a pre-training run it also diagnoses the routing, from the bank file alone (``--bank``, default the
run's ``bank/``): per task, the normalised entropy of its route (1.0 = uniform over the K modules,
mean over layers) and its largest module weight (mean over layers); each module's usage over tasks;
and the task × task similarity of routes (cosine of the layers × K weights), drawn as a heat map with
the tasks grouped by kind. Identical routes for every task give similarity 1.0 everywhere.

    python benchmarks/pretrain_report.py --run-dir benchmarks/runs/pretrain-gemma --name pretrain-gemma
    python benchmarks/pretrain_report.py --stage prefinetune --run-dir runs/prefinetune-gemma --name prefinetune-gemma
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
from safetensors.torch import load_file

from modprompt.evaluate import main_metric
from modprompt.modular.model import WEIGHTS_NAME, read_bank_config
from modprompt.modular.router import route_weights

RESULTS = Path(__file__).parent / "results"

#: the upstream tasks by what they ask, for grouping the route-similarity heat map; a task not listed
#: (a bank pre-trained on other tasks) is grouped under its kind
GROUPS = {
    "sentiment": ["book_review", "chnsenticorp_htl", "ewect", "waimai", "shopping_books", "shopping_clothes",
                  "shopping_computer", "shopping_fruit", "shopping_heater", "shopping_hotel", "shopping_mengniu",
                  "shopping_phone", "shopping_shampoo", "shopping_tablet"],
    "topic": ["thucnews", "shopping_category", "csl_category", "kuake_qic", "chip_ctc"],
    "nli": ["cmnli", "snli", "cinlid"],
    "paraphrase / similarity": ["afqmc", "pawsx", "oppo", "chip_sts", "kuake_qqr", "kuake_qtr", "stsb"],
    "relation": ["finre", "sanwen"],
    "coreference / keywords": ["cluewsc", "csl"],
    "multiple choice": ["ccpm"],
    "extractive QA": ["cmrc2018"],
}  # fmt: skip


def task_group(task: str) -> str:
    for group, tasks in GROUPS.items():
        if task in tasks:
            return group
    from modprompt.data.task import get_task

    return get_task(task).kind.value


def routing_diagnostics(bank_dir: Path) -> dict:
    """Route entropy, largest weight, module usage and route similarity of the bank saved in ``bank_dir``."""
    meta = read_bank_config(bank_dir)
    logits = load_file(bank_dir / WEIGHTS_NAME)["router.logits"].double()
    if logits.dim() == 2:  # a shared router: the same K logits at every layer
        logits = logits[:, None].expand(-1, meta["prompt"]["num_layers"], -1)
    weights = route_weights(logits)  # (tasks, layers, K)
    k = weights.shape[-1]
    entropy = -(weights * weights.log()).sum(-1) / torch.log(torch.tensor(float(k)))
    largest = weights.amax(-1)
    flat = weights.flatten(1)
    flat = flat / flat.norm(dim=1, keepdim=True)
    tasks = meta["tasks"]
    order = sorted(range(len(tasks)), key=lambda i: (list(GROUPS).index(g) if (g := task_group(tasks[i])) in GROUPS
                                                   else len(GROUPS), g, tasks[i]))  # fmt: skip
    similarity = flat @ flat.T
    groups = [task_group(t) for t in tasks]
    same = [(i, j) for i in range(len(tasks)) for j in range(len(tasks)) if i != j and groups[i] == groups[j]]
    other = [(i, j) for i in range(len(tasks)) for j in range(len(tasks)) if groups[i] != groups[j]]
    return {
        "bank": str(bank_dir),
        "logits_min": float(logits.min()),
        "logits_max": float(logits.max()),
        "per_task": {
            t: {"group": groups[i], "entropy": float(entropy[i].mean()), "largest_weight": float(largest[i].mean())}
            for i, t in enumerate(tasks)
        },
        "mean_entropy": float(entropy.mean()),
        "mean_largest_weight": float(largest.mean()),
        # each module's mean weight over tasks and layers, and how many (task, layer) routes it leads
        "module_usage": weights.mean((0, 1)).tolist(),
        "module_leads": torch.bincount(weights.argmax(-1).flatten(), minlength=k).tolist(),
        "similarity_order": [tasks[i] for i in order],
        "similarity": similarity[order][:, order].tolist(),
        "mean_similarity_same_group": float(sum(similarity[i, j] for i, j in same) / max(len(same), 1)),
        "mean_similarity_other_groups": float(sum(similarity[i, j] for i, j in other) / max(len(other), 1)),
    }


def routing_markdown(d: dict, name: str) -> list[str]:
    lines = [
        "",
        f"## Routing (from `{d['bank']}`)",
        "",
        f"Router logits lie in [{d['logits_min']:.2f}, {d['logits_max']:.2f}]. Mean normalised route entropy "
        f"over tasks and layers: **{d['mean_entropy']:.3f}** (1.0 = uniform); mean largest module weight: "
        f"**{d['mean_largest_weight']:.3f}** (uniform: {1 / len(d['module_usage']):.3f}).",
        "",
        f"Route similarity (cosine of the layers × K weights), mean over task pairs of one group: "
        f"{d['mean_similarity_same_group']:.3f}; of different groups: {d['mean_similarity_other_groups']:.3f}. "
        f"Heat map: `{name}-routes.png`.",
        "",
        "Module usage (mean weight over tasks and layers; routes led):",
        "",
        "| module | " + " | ".join(str(i) for i in range(len(d["module_usage"]))) + " |",
        "|---|" + "---:|" * len(d["module_usage"]),
        "| mean weight | " + " | ".join(f"{u:.3f}" for u in d["module_usage"]) + " |",
        "| routes led | " + " | ".join(str(n) for n in d["module_leads"]) + " |",
        "",
        "| task | group | route entropy | largest weight |",
        "|---|---|---:|---:|",
        *[f"| {t} | {v['group']} | {v['entropy']:.3f} | {v['largest_weight']:.3f} |"
          for t, v in sorted(d["per_task"].items(), key=lambda kv: (kv[1]["group"], kv[0]))],
    ]  # fmt: skip
    return lines


def plot_similarity(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = d["similarity_order"]
    fig, ax = plt.subplots(figsize=(10, 9))
    image = ax.imshow(d["similarity"], vmin=0, vmax=1, cmap="viridis")
    labels = [f"{t} ({d['per_task'][t]['group']})" for t in tasks]
    ax.set_xticks(range(len(tasks)), labels, rotation=90, fontsize=7)
    ax.set_yticks(range(len(tasks)), labels, fontsize=7)
    fig.colorbar(image, ax=ax, fraction=0.04, label="route similarity (cosine)")
    ax.set_title(f"task × task route similarity; mean entropy {d['mean_entropy']:.2f}, "
                 f"mean largest weight {d['mean_largest_weight']:.2f}")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def load_run(run_dir: Path) -> dict:
    final = run_dir / "history.json"
    if final.is_file():
        return json.loads(final.read_text())
    state = torch.load(run_dir / "checkpoint" / "state.pt", weights_only=False)
    keys = ("history", "evaluations", "examples_seen", "tokens_seen", "train_seconds")
    return {"finished": False, "steps": state["step"], **{k: state[k] for k in keys}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", required=True)
    parser.add_argument("--name", required=True, help="results file stem under benchmarks/results/")
    parser.add_argument("--stage", choices=["pretrain", "prefinetune"], default="pretrain", help="the run's command")
    parser.add_argument("--bank", help="the bank whose routing to diagnose (pretrain; default: RUN_DIR/bank)")
    args = parser.parse_args()
    run_dir = Path(args.run_dir)
    run = load_run(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    evaluations = run["evaluations"]
    first, last = (evaluations[0], evaluations[-1]) if evaluations else (None, None)
    per_task = {}
    if first and last and last is not first:
        for task, metrics in last["results"].items():
            per_task[task] = {"untrained": main_metric(first["results"][task]), "trained": main_metric(metrics)}

    def mean(key: str) -> float | None:
        return sum(v[key] for v in per_task.values()) / len(per_task) if per_task else None

    trained_thing = "bank" if args.stage == "pretrain" else "model"
    windows = run["history"]  # one record per log window: its steps' loss, seconds and real tokens
    result = {
        "command": f"modprompt {args.stage} --config <config> --run-dir {args.run_dir}",
        "config": config,
        "finished": run.get("finished", True),
        "steps": run["steps"],
        "examples_seen": run["examples_seen"],
        "tokens_seen": run["tokens_seen"],
        "train_hours": run["train_seconds"] / 3600,
        # Real (unpadded) tokens through forward+backward per second of optimisation. The median window is
        # the machine's rate; the overall figure also holds windows slowed by other processes on the CPU.
        "tokens_per_s_overall": run["tokens_seen"] / run["train_seconds"],
        "tokens_per_s_median_window": statistics.median(h["tokens_per_s"] for h in windows) if windows else None,
        "evaluated_at_steps": [e["step"] for e in evaluations],
        "held_out": per_task,
        "mean_untrained": mean("untrained"),
        "mean_trained": mean("trained"),
        "loss_curve": [(h["step"], h["loss"]) for h in run["history"]],
    }
    if args.stage == "pretrain":
        bank_dir = Path(args.bank) if args.bank else run_dir / "bank"
        result["routing"] = routing_diagnostics(bank_dir)
        # extractive examples whose answer max_length cuts away, dropped before training (recorded in the bank)
        result["unreachable_dropped"] = read_bank_config(bank_dir)["training"].get("unreachable_dropped")
        plot_similarity(result["routing"], RESULTS / f"{args.name}-routes.png")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [s for s, _ in result["loss_curve"]]
    losses = [loss for _, loss in result["loss_curve"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, lw=0.8, alpha=0.4, label="log window (10 steps)")
    # A step sees one task (pre-training) or a few (pre-finetuning) and tasks differ in difficulty, so a window
    # is noisy: the trend shows over several.
    smooth = [statistics.fmean(losses[max(0, i - 9) : i + 1]) for i in range(len(losses))]
    ax.plot(steps, smooth, lw=1.8, color="tab:blue", label="mean of the last 10 windows")
    ax.legend(loc="upper center", fontsize="small")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over log window)")
    if evaluations:
        held = ax.twinx()
        means = [sum(main_metric(m) for m in e["results"].values()) / len(e["results"]) for e in evaluations]
        held.plot([e["step"] for e in evaluations], means, "o--", color="tab:orange")
        held.set_ylabel("held-out main metric, mean over tasks", color="tab:orange")
    ax.set_title(f"{args.name}: {run['steps']} steps, {run['tokens_seen'] / 1e6:.2f}M tokens")
    fig.tight_layout()
    fig.savefig(RESULTS / f"{args.name}.png", dpi=120)

    lines = [
        f"# {'Pre-training' if args.stage == 'pretrain' else 'Pre-finetuning'} run `{args.name}`",
        "",
        f"Command: `{result['command']}` (config in the JSON). Finished: {result['finished']}.",
        "",
        f"Steps {run['steps']}, examples {run['examples_seen']}, tokens {run['tokens_seen']}, "
        f"train time {result['train_hours']:.2f} h. Training curve: `{args.name}.png`.",
        "",
        f"Throughput (real tokens through forward+backward): {result['tokens_per_s_overall']:.0f} tokens/s over "
        f"the whole run, {result['tokens_per_s_median_window'] or 0:.0f} tokens/s in the median log window "
        "(the overall figure includes windows slowed by other processes sharing the CPU).",
        "",
    ]
    if per_task:
        lines += [
            f"Held-out main metric (accuracy, or F1 for extractive QA) per upstream task, untrained {trained_thing} "
            f"(step {first['step']}) vs trained (step {last['step']}):",
            "",
            "| task | untrained | trained |",
            "|---|---|---|",
            *[f"| {t} | {v['untrained']:.3f} | {v['trained']:.3f} |" for t, v in sorted(per_task.items())],
            f"| **mean** | **{result['mean_untrained']:.3f}** | **{result['mean_trained']:.3f}** |",
        ]
    if result.get("unreachable_dropped"):
        dropped = ", ".join(f"{task} {n}" for task, n in result["unreachable_dropped"].items())
        lines += ["", f"Training examples dropped because truncation to {config['max_length']} tokens cuts their "
                  f"answer away: {dropped}."]  # fmt: skip
    if "routing" in result:
        lines += routing_markdown(result["routing"], args.name)
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

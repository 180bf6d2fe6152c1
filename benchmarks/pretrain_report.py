"""Report of a multi-task run: training curve (PNG), and a results JSON + Markdown table.

Reads the run folder written by ``modprompt pretrain`` or ``modprompt prefinetune`` (its final
``history.json``, or the latest checkpoint of a run still in progress) and compares the per-task
held-out metric of the first evaluation (the untrained bank or model, step 0) with the last.

    python benchmarks/pretrain_report.py --run-dir benchmarks/runs/pretrain-gemma --name pretrain-gemma
    python benchmarks/pretrain_report.py --stage prefinetune --run-dir runs/prefinetune-gemma --name prefinetune-gemma
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from modprompt.evaluate import main_metric

RESULTS = Path(__file__).parent / "results"


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
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

"""Short pre-training probes side by side: routing diagnostics, training loss and a quick route ablation.

Each probe is a pre-training run of the same length as the intended run (so its learning-rate and
temperature schedules are that run's first steps), stopped early with ``--until``; its configs live in
``benchmarks/pretrain_probes/``. For each run folder this reads the bank saved when the call ended,
the logged training loss, and (if present) the ablation written by ``route_ablation.py`` under
``results/pretrain-probes/<probe>-ablation.json``.

    for p in router-lr-0.01 router-lr-0.05 router-lr-0.2; do
      modprompt pretrain --config benchmarks/pretrain_probes/$p.json --run-dir benchmarks/runs/probe-$p --until 200
      python benchmarks/route_ablation.py --bank benchmarks/runs/probe-$p/bank \\
        --config benchmarks/pretrain_probes/$p.json --per-task 10 --conditions own uniform other \\
        --name pretrain-probes/$p-ablation
    done
    python benchmarks/pretrain_probes.py --runs benchmarks/runs/probe-router-lr-0.01 ...
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from pretrain_report import RESULTS, load_run, routing_diagnostics


def probe_row(run_dir: Path) -> dict:
    run = load_run(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    name = run_dir.name.removeprefix("probe-")
    routing = routing_diagnostics(run_dir / "bank")
    losses = [h["loss"] for h in run["history"]]
    ablation_file = RESULTS / "pretrain-probes" / f"{name}-ablation.json"
    ablation = json.loads(ablation_file.read_text())["mean"] if ablation_file.is_file() else None
    return {
        "probe": name,
        "config": config,
        "steps": run["steps"],
        "train_seconds": run["train_seconds"],
        "loss_first_50": statistics.fmean(losses[:5]) if losses else None,
        "loss_last_50": statistics.fmean(losses[-5:]) if losses else None,
        "mean_entropy": routing["mean_entropy"],
        "mean_largest_weight": routing["mean_largest_weight"],
        "logits_range": [routing["logits_min"], routing["logits_max"]],
        "similarity_same_group": routing["mean_similarity_same_group"],
        "similarity_other_groups": routing["mean_similarity_other_groups"],
        "ablation": ablation,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="probe run folders")
    parser.add_argument("--name", default="pretrain-probes")
    args = parser.parse_args()
    rows = [probe_row(Path(r)) for r in args.runs]
    (RESULTS / f"{args.name}.json").write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")
    lines = [
        "# Pre-training probes",
        "",
        "Each probe: the intended run's config with one change, stopped early. Loss: mean of the first and last "
        "five 10-step log windows. Entropy: mean normalised route entropy (1.0 = uniform). Ablation: held-out "
        "main metric, mean over tasks, with each task's own route / the uniform route / another task's route.",
        "",
        "| probe | lr_router | route entropy weight | steps | loss first → last | route entropy | largest weight "
        "| logits | ablation own / uniform / other |",
        "|---|---:|---:|---:|---|---:|---:|---|---|",
    ]
    for r in rows:
        ablation = " / ".join(f"{r['ablation'][c]:.3f}" for c in ("own", "uniform", "other") if c in r["ablation"]) \
            if r["ablation"] else "–"  # fmt: skip
        lines.append(
            f"| {r['probe']} | {r['config']['lr_router']} | {r['config'].get('route_entropy_weight', 0)} | {r['steps']} "
            f"| {r['loss_first_50']:.3f} → {r['loss_last_50']:.3f} | {r['mean_entropy']:.3f} "
            f"| {r['mean_largest_weight']:.3f} | [{r['logits_range'][0]:.2f}, {r['logits_range'][1]:.2f}] | {ablation} |"
        )
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()

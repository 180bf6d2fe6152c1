"""What a GPU buys: the same work timed on a lent GPU and on this project's 2-core CPUs, as ratios.

The GPU runs used a randomly initialised Gemma 3 270M (the real config and tokenizer; the weights cannot
reach the lent machine), so their scores mean nothing; the work per step (shapes, token counts, steps)
is the real one. Few-shot cells compare per optimiser step and per test example, because the CPU runs
stopped early and the GPU runs (``--patience 100``) did not; black-box cells compare whole runs, whose
calls and tokens are identical. Made on the GPU machine (``--device cuda``) with::

    python benchmarks/fewshot.py --bank modprompt/banks/gemma-3-270m --backbone RANDOM_GEMMA --device cuda \
        --seeds 0 --test-limit 200 --dev-limit 32 --name gpu-fewshot --max-steps 32 --eval-every 8 \
        --protocol 1 --patience 100 --tasks csldcp iflytek
    python benchmarks/blackbox.py --bank modprompt/banks/gemma-3-270m --backbone RANDOM_GEMMA --device cuda \
        --seeds 0 --test-limit 200 --dev-limit 32 --name gpu-blackbox --preset cpu --tasks eprstmt
    modprompt pretrain|prefinetune --config CONFIG_WITH_RANDOM_GEMMA --run-dir RUN --until 200 --device cuda

then compared here with ``python benchmarks/device_compare.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from machine import machine_text

RESULTS = Path(__file__).parent / "results"


def _cells(root: Path) -> dict[tuple[str, str], list[dict]]:
    cells: dict[tuple[str, str], list[dict]] = {}
    for path in sorted(root.glob("*/*/seed*.json")):
        cells.setdefault((path.parts[-3], path.parts[-2]), []).append(json.loads(path.read_text()))
    return cells


def _per_step(runs: list[dict]) -> float:
    return sum(r["train_seconds"] for r in runs) / sum(r["steps"] for r in runs)


def _per_test_example(runs: list[dict]) -> float:
    return sum(r["test_seconds"] for r in runs) / sum(r["examples"]["test"] for r in runs)


def _machine(runs: list[dict]) -> str:
    return machine_text(runs[0].get("machine"))


def fewshot_rows(gpu: Path, cpu: Path) -> list[dict]:
    """One row per (method, task) run on both: seconds per optimiser step and per test example."""
    cpu_cells = _cells(cpu)
    rows = []
    for (method, task), gpu_runs in sorted(_cells(gpu).items(), key=lambda item: (item[0][1], item[0][0])):
        cpu_runs = cpu_cells.get((method, task))
        if not cpu_runs:
            continue
        row = {"method": method, "task": task, "cpu_runs": len(cpu_runs), "cpu_machine": _machine(cpu_runs),
               "gpu_machine": _machine(gpu_runs)}  # fmt: skip
        for key, measure in (("step", _per_step), ("test_example", _per_test_example)):
            row[f"cpu_s_per_{key}"], row[f"gpu_s_per_{key}"] = measure(cpu_runs), measure(gpu_runs)
            row[f"{key}_speedup"] = row[f"cpu_s_per_{key}"] / row[f"gpu_s_per_{key}"]
        rows.append(row)
    return rows


def blackbox_rows(gpu: Path, cpu: Path) -> list[dict]:
    """One row per (method, task, seed) run on both with the same calls and tokens: whole-run seconds."""
    rows = []
    for path in sorted(gpu.glob("*/*/seed*.json")):
        other = cpu / path.relative_to(gpu)
        if not other.is_file():
            continue
        g, c = json.loads(path.read_text()), json.loads(other.read_text())
        if (g["calls"], g["tokens"]) != (c["calls"], c["tokens"]):
            continue  # another budget: not the same work
        rows.append({"method": g["method"], "task": g["task"], "seed": g["seed"], "calls": g["calls"],
                     "tokens": g["tokens"], "cpu_train_seconds": c["train_seconds"],
                     "gpu_train_seconds": g["train_seconds"], "speedup": c["train_seconds"] / g["train_seconds"],
                     "cpu_machine": machine_text(c.get("machine")), "gpu_machine": machine_text(g.get("machine"))})  # fmt: skip
    return rows


def multitask_rows(gpu: Path, cpu: Path) -> list[dict]:
    """Training tokens per second of the two multi-task stages (GPU: their first 200 steps)."""
    rows = []
    for stage in ("pretrain", "prefinetune"):
        g = json.loads((gpu / f"{stage}-200-steps.json").read_text())
        c = json.loads((cpu / f"{stage}-gemma.json").read_text())
        gpu_rate = g["tokens_seen"] / g["train_seconds"]
        rows.append({"stage": stage, "cpu_tokens_per_s": c["tokens_per_s_overall"], "gpu_tokens_per_s": gpu_rate,
                     "speedup": gpu_rate / c["tokens_per_s_overall"], "cpu_tokens": c["tokens_seen"],
                     "gpu_minutes_for_cpu_run": c["tokens_seen"] / gpu_rate / 60, "cpu_hours": c["train_hours"]})  # fmt: skip
    return rows


def write_markdown(result: dict, path: Path) -> None:
    lines = ["# What a GPU buys (the same work on a lent H100 and on the 2-core CPUs)", "",
             "GPU runs: randomly initialised Gemma 3 270M (real config and tokenizer), so only their times count. "
             "Command and method: `benchmarks/device_compare.py`'s docstring.", ""]  # fmt: skip
    few = result["fewshot"]
    if few:
        lines += [f"## Few-shot adaptation, batch 8 (GPU: {few[0]['gpu_machine']})", "",
                  "| task | method | CPU runs | CPU s/step | GPU s/step | × | CPU s/test example | GPU s/test example | × |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        for r in few:
            lines.append(f"| {r['task']} | {r['method']} | {r['cpu_runs']} | {r['cpu_s_per_step']:.2f} | "
                         f"{r['gpu_s_per_step']:.3f} | {r['step_speedup']:.0f} | {r['cpu_s_per_test_example']:.3f} | "
                         f"{r['gpu_s_per_test_example']:.4f} | {r['test_example_speedup']:.0f} |")  # fmt: skip
        lines += ["", "CPU machines: " + "; ".join(sorted({r["cpu_machine"] for r in few})), ""]
    if result["blackbox"]:
        lines += ["## Black-box tuning, whole runs (`--preset cpu`, same calls and tokens)", "",
                  "| method | task | seed | calls | tokens | CPU s | GPU s | × |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in result["blackbox"]:
            lines.append(f"| {r['method']} | {r['task']} | {r['seed']} | {r['calls']} | {r['tokens']:,} | "
                         f"{r['cpu_train_seconds']:.0f} | {r['gpu_train_seconds']:.1f} | {r['speedup']:.0f} |")
        lines += ["", "CPU machines: " + "; ".join(sorted({r["cpu_machine"] for r in result["blackbox"]})), ""]
    lines += ["## Multi-task stages (1500 steps of 8 upstream examples)", "",
              "| stage | CPU tokens/s | GPU tokens/s | × | CPU hours for the run | GPU minutes for its tokens |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["multitask"]:
        lines.append(f"| {r['stage']} | {r['cpu_tokens_per_s']:.0f} | {r['gpu_tokens_per_s']:.0f} | {r['speedup']:.0f} | "
                     f"{r['cpu_hours']:.2f} | {r['gpu_minutes_for_cpu_run']:.1f} |")  # fmt: skip
    lines += ["", "CPU: the AVX2 machine of the released runs (`pretrain-gemma.md`, `prefinetune-gemma.md`).", ""]
    path.write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", type=Path, default=RESULTS)
    p.add_argument("--name", default="device_compare", help="stem of the outputs")
    args = p.parse_args(argv)
    r = args.results
    result = {
        "fewshot": fewshot_rows(r / "gpu-fewshot", r / "fewshot"),
        "blackbox": blackbox_rows(r / "gpu-blackbox", r / "blackbox"),
        "multitask": multitask_rows(r / "gpu-multitask", r),
    }
    steps = [row["step_speedup"] for row in result["fewshot"]]
    result["median_step_speedup"] = statistics.median(steps) if steps else None
    (r / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, r / f"{args.name}.md")
    return result


if __name__ == "__main__":
    main()

"""Serving cost of black-box tuning: loopback HTTP against in-process, the layer cache, concurrent clients.

The work is what BBTv2/MP2 stage 2 sends: ``--calls`` score requests, each a population of
``--population`` candidates on the same ``--examples`` few-shot training examples, visiting the layers in
turn while the base (the best so far) moves on after every call. The same requests run

1. in-process through :class:`~modprompt.blackbox.objective.InProcessObjective`, without and then with
   the layer cache (the cache's speedup in one run, and the largest difference of their outputs);
2. over loopback HTTP through :class:`~modprompt.blackbox.objective.RemoteObjective` against a server
   started here (layer cache on, empty at the start, as for case 1);
3. from ``--clients`` concurrent clients at once (each with its own candidates), against a fresh server.

Reported: calls/s, p50/p95 latency per call, HTTP overhead per call, cache hits. The backbone and bank
are whatever is given: ``--backbone gemma-3-270m --bank BANK`` for the real table, a tiny model to smoke-test.

    python benchmarks/serving.py --bank runs/pretrain-gemma/bank --examples 32 --population 10 --calls 36
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from machine import describe_machine, machine_text

from modprompt.blackbox.client import Client
from modprompt.blackbox.objective import InProcessObjective, Objective, RemoteObjective
from modprompt.blackbox.params import Candidate, Limits
from modprompt.blackbox.scoring import Scorer
from modprompt.blackbox.server import ServerThread, create_app
from modprompt.data.download import default_data_root
from modprompt.data.fewshot import fewshot_splits

RESULTS = Path(__file__).parent / "results"
KEY = "benchmark-key-0123456789"


def workload(scorer: Scorer, calls: int, population: int, seed: int) -> list[tuple[Candidate, list[Candidate]]]:
    """``calls`` layer-wise requests (base, population), the base taking each population's first member."""
    info = scorer.info()
    rng = np.random.default_rng(seed)
    base = Candidate(router=rng.uniform(-2, 2, info.num_modules).tolist())
    requests = []
    for call in range(calls):
        layer = call % info.num_layers
        members = [Candidate(intrinsic={layer: rng.normal(0, 0.1, info.intrinsic_size).tolist()})
                   for _ in range(population)]  # fmt: skip
        requests.append((base, members))
        base = members[0].over(base)
    return requests


def run(objective: Objective, examples, requests) -> dict:
    """Time every request through ``objective``; the losses come back for comparing paths."""
    dataset = objective.upload(examples)
    latencies, losses = [], []
    started = time.perf_counter()
    for base, members in requests:
        t = time.perf_counter()
        results = objective.evaluate(dataset, members, base=base)
        latencies.append(time.perf_counter() - t)
        losses.append([r.loss for r in results])
    wall = time.perf_counter() - started
    return {"wall_s": wall, "latencies": latencies, "losses": losses, "cache": objective.usage.cache}


def summary(runs: list[dict]) -> dict:
    """Calls/s at the median wall time of the repeats; latency percentiles over every call of every repeat."""
    walls = [r["wall_s"] for r in runs]
    latencies = sorted(t for r in runs for t in r["latencies"])
    calls = len(runs[0]["latencies"])
    return {
        "calls_per_run": calls,
        "wall_s": walls,
        "calls_per_s": calls / statistics.median(walls),
        "p50_s": statistics.median(latencies),
        "p95_s": latencies[int(round(0.95 * (len(latencies) - 1)))],
        "cache": runs[0]["cache"],
    }


def max_difference(a: list[list[float]], b: list[list[float]]) -> float:
    return max(abs(x - y) for row_a, row_b in zip(a, b) for x, y in zip(row_a, row_b))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", required=True)
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    p.add_argument("--task", default="eprstmt")
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--examples", type=int, default=32, help="training examples scored by every candidate")
    p.add_argument("--population", type=int, default=10)
    p.add_argument("--calls", type=int, default=36, help="score requests (generations) per run")
    p.add_argument("--clients", type=int, default=4, help="concurrent clients in case 3")
    p.add_argument("--repeats", type=int, default=3, help="the cases run interleaved this many times")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--out", type=Path, default=RESULTS / "serving.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    train = fewshot_splits(args.task, 0, args.data or default_data_root())[0][: args.examples]
    options = {"max_length": args.max_length, "batch_size": args.batch_size}
    model = Scorer.from_bank(args.bank, args.backbone, **options).model

    def fresh(**extra) -> Scorer:  # every run starts with an empty cache
        return Scorer(model, **options, **extra)

    requests = workload(fresh(), args.calls, args.population, seed=0)
    limits = Limits(max_candidates=max(64, args.population), timeout_s=3600)

    def loopback() -> dict:
        with ServerThread(create_app(fresh(), [KEY], limits)) as server:
            return run(RemoteObjective(Client(server.url, KEY, timeout=3600)), train, requests)

    def concurrent() -> dict:
        runs: list[dict] = [{} for _ in range(args.clients)]
        with ServerThread(create_app(fresh(), [KEY], limits)) as server:

            def client(i: int) -> None:
                work = workload(fresh(), args.calls, args.population, seed=100 + i)
                runs[i] = run(RemoteObjective(Client(server.url, KEY, timeout=3600)), train, work)

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
            started = time.perf_counter()
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            wall = time.perf_counter() - started
        latencies = [t for r in runs for t in r["latencies"]]
        per_client = [len(r["latencies"]) / r["wall_s"] for r in runs]
        return {"wall_s": wall, "latencies": latencies, "cache": {}, "per_client_calls_per_s": per_client}

    cases = {
        "in_process_uncached": lambda: run(InProcessObjective(fresh(cache_bytes=0)), train, requests),
        "in_process": lambda: run(InProcessObjective(fresh()), train, requests),
        "loopback": loopback,
        "concurrent": concurrent,
    }
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so machine noise hits every case alike
        for name, case in cases.items():
            runs[name].append(case())

    info = model.config
    result = {
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "backbone": model.backbone.info.to_dict(),
        "shape": {"layers": info.num_layers, "K": info.num_modules, "n": info.num_tokens, "r": info.rank},
        "work": {"task": args.task, "examples": len(train), "population": args.population, "calls": args.calls,
                 "batch_size": args.batch_size, "max_length": args.max_length, "repeats": args.repeats},  # fmt: skip
        "machine": describe_machine(),
        **{name: summary(case_runs) for name, case_runs in runs.items()},
    }
    uncached, cached, remote = runs["in_process_uncached"], runs["in_process"], runs["loopback"]
    # The speedup of each repeat (uncached and cached ran back to back), then their median.
    result["layer_cache_speedups"] = [u["wall_s"] / c["wall_s"] for u, c in zip(uncached, cached)]
    result["layer_cache_speedup"] = statistics.median(result["layer_cache_speedups"])
    result["cache_max_abs_difference"] = max_difference(uncached[0]["losses"], cached[0]["losses"])
    result["loopback_max_abs_difference"] = max_difference(cached[0]["losses"], remote[0]["losses"])
    result["http_overhead_per_call_s"] = (
        statistics.median(r["wall_s"] for r in remote) - statistics.median(r["wall_s"] for r in cached)
    ) / args.calls
    result["concurrent"]["clients"] = args.clients
    result["concurrent"]["per_client_calls_per_s"] = [r["per_client_calls_per_s"] for r in runs["concurrent"]]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    write_markdown(result, args.out.with_suffix(".md"))
    keys = ("layer_cache_speedup", "cache_max_abs_difference", "http_overhead_per_call_s")
    print(json.dumps({k: result[k] for k in keys}, indent=2))
    return result


def write_markdown(result: dict, path: Path) -> None:
    work = result["work"]
    c = result["concurrent"]
    rows = [
        ("in-process, no layer cache", result["in_process_uncached"]),
        ("in-process", result["in_process"]),
        ("loopback HTTP", result["loopback"]),
        (f"{c['clients']} concurrent clients (all calls)", c),
    ]
    lines = [
        f"# Serving black-box tuning ({result['backbone']['name']}, {machine_text(result['machine'])})",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Work: {work['calls']} layer-wise score requests, each {work['population']} candidates on "
        f"{work['examples']} {work['task']} examples (batch {work['batch_size']}, max length {work['max_length']}); "
        "the base moves on after every request, as in BBTv2/MP2 stage 2. Every case starts with an empty cache; "
        f"the cases ran interleaved {work['repeats']} times: calls/s at the median wall time, latency percentiles "
        "over every call.",
        "",
        "| path | calls/s | p50 s | p95 s | wall s (each repeat) | cache hits / run | blocks skipped / run |",
        "|---|---:|---:|---:|---|---:|---:|",
    ]
    for name, s in rows:
        cache = s["cache"]
        walls = ", ".join(f"{w:.1f}" for w in s["wall_s"])
        blocks = cache.get("blocks_skipped", 0) + cache.get("blocks_run", 0)
        skipped = f"{cache.get('blocks_skipped', 0)} of {blocks}" if cache else ""
        lines.append(
            f"| {name} | {s['calls_per_s']:.2f} | {s['p50_s']:.3f} | {s['p95_s']:.3f} | {walls} | "
            f"{cache.get('hits', '') if cache else ''} | {skipped} |"
        )
    per_client = "; ".join(", ".join(f"{x:.2f}" for x in repeat) for repeat in c["per_client_calls_per_s"])
    lines += [
        "",
        f"Layer cache: **{result['layer_cache_speedup']:.2f}×** faster in one run (median of "
        + ", ".join(f"{x:.2f}" for x in result["layer_cache_speedups"])
        + f"); largest loss difference to the uncached path {result['cache_max_abs_difference']:.1e}. "
        f"HTTP costs {1000 * result['http_overhead_per_call_s']:.1f} ms per call over loopback (largest loss "
        f"difference to in-process {result['loopback_max_abs_difference']:.1e}). With {c['clients']} clients "
        "the server runs model work one request at a time behind its lock, so the total rate stays near one "
        f"client's and each client waits its turn; per-client calls/s by repeat: {per_client}.",
    ]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()

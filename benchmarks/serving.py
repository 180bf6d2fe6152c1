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

    python benchmarks/serving.py --bank modprompt/banks/gemma-3-270m --examples 32 --population 10 --calls 36

``--robustness`` measures instead what hostile and careless clients cost the server under the default
limits of ``modprompt serve`` (``Limits()``, ``ServerConfig()``), and adds it to the same results
(``robustness`` in ``serving.json``, its own section in ``serving.md``): the peak memory one maximal
request adds to a ``modprompt serve`` process of its own (the largest legal population in either space,
the largest upload, and a flood of 16 MiB of zeros that is refused unread), the latency of ``/v1/health`` and ``/v1/info``
while the model is busy and the queue is full, and a keyed request's latency with three times more
idle sockets open than the connection limit. Without ``--bank`` it runs on a randomly initialised
Gemma 3 body of 18 layers of width 64 (the test suite's byte-level BPE tokenizer) and a random bank of
the released bank's shape (K 8, n 16, r 16), so that requests are as large as against Gemma 3 270M
while the model's own work stays small.

    python benchmarks/serving.py --robustness
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch
from machine import describe_machine, machine_text

from modprompt.blackbox.client import API_KEY_ENV, Client
from modprompt.blackbox.objective import InProcessObjective, Objective, RemoteObjective
from modprompt.blackbox.params import Candidate, Limits, example_to_dict
from modprompt.blackbox.scoring import Scorer
from modprompt.blackbox.server import ServerConfig, ServerThread, create_app, value_budget
from modprompt.data.download import default_data_root
from modprompt.data.fewshot import fewshot_splits

RESULTS = Path(__file__).parent / "results"
KEY = "benchmark-key-0123456789"
ROBUSTNESS_HEADING = "## Hostile and careless clients"


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


def _memory(pid: int) -> dict[str, int]:
    """A process's resident and peak resident memory in bytes (Linux)."""
    text = Path(f"/proc/{pid}/status").read_text()
    return {k: int(re.search(k + r":\s+(\d+) kB", text).group(1)) * 1024 for k in ("VmRSS", "VmHWM")}


def peak_rise(pid: int, send) -> dict:
    """The status (and, refused, the answer) of ``send()`` (an httpx response), how long it took, and how far
    the server process ``pid``'s peak resident memory rose above where it stood and what it holds after."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # resets the peak to the current resident size
    before = _memory(pid)["VmRSS"]
    started = time.perf_counter()
    response = send()
    seconds = time.perf_counter() - started
    after = _memory(pid)
    cost = {"status": response.status_code, "seconds": seconds, "peak_rise_mb": (after["VmHWM"] - before) / 2**20,
            "held_mb": (after["VmRSS"] - before) / 2**20}  # fmt: skip
    if response.status_code >= 400:
        cost["answer"] = response.json()
    return cost


def tiny_model(folder: Path, examples) -> tuple[Path, Path]:
    """Save a random Gemma 3 body of 18 layers of width 64 and a random bank of the released bank's shape."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from modprompt.backbone import load_backbone
    from modprompt.data.encoding import EncodingConfig, MRCEncoder
    from modprompt.modular.config import ModularPromptConfig
    from modprompt.modular.model import ModularPromptModel

    tokenizer = AutoTokenizer.from_pretrained(Path(__file__).parents[1] / "tests" / "fixtures" / "tokenizers" / "bpe")
    torch.manual_seed(0)
    config = Gemma3TextConfig(
        vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=18, num_attention_heads=4, num_key_value_heads=1,
        head_dim=16, query_pre_attn_scalar=16, intermediate_size=128, sliding_window=64,
        layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    body = folder / "backbone"
    Gemma3ForCausalLM(config).save_pretrained(body)
    tokenizer.save_pretrained(body)
    backbone = load_backbone(body)
    bank = ModularPromptModel(backbone, ModularPromptConfig(backbone.num_layers, backbone.hidden_size, num_tokens=16,
                                                           rank=16), ["upstream"])  # fmt: skip
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(256, 16))
    bank.calibrate(encoder.collate(encoder.encode_all(examples[:16])))
    return bank.save_pretrained(folder / "bank"), body


class Served:
    """``modprompt serve`` in a process of its own on a free loopback port (its memory is then its own)."""

    def __init__(self, bank: Path, backbone: Path | None, args: argparse.Namespace) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "modprompt.cli", "serve", "--bank", str(bank), "--port", str(self.port),
                        "--max-length", str(args.max_length), "--batch-size", str(args.batch_size)]  # fmt: skip
        self.command += ["--backbone", str(backbone)] if backbone else []
        self.command += ["--threads", str(args.threads)] if args.threads else []

    def __enter__(self) -> Served:
        env = {**os.environ, API_KEY_ENV: KEY}
        self.process = subprocess.Popen(self.command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(self.url + "/v1/health", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the server did not start: {' '.join(self.command)}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


def robustness(args: argparse.Namespace, train) -> dict:
    """What hostile and careless clients cost ``modprompt serve`` under its default limits."""
    limits, config = Limits(), ServerConfig()
    folder = Path(tempfile.mkdtemp(prefix="serving-robustness-"))
    bank, backbone = (Path(args.bank), args.backbone) if args.bank else tiny_model(folder, train)
    scorer = Scorer.from_bank(bank, backbone, max_length=args.max_length, batch_size=args.batch_size)
    info, budget, dim = scorer.info(limits), value_budget(scorer, limits), scorer.max_random_dim
    name = scorer.model.backbone.info.to_dict() | ({} if args.bank else {"name": "random Gemma 3 body, 18 layers of width 64"})
    del scorer
    rng = np.random.default_rng(0)
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    one = [example_to_dict(train[0])]

    def member(space: str) -> dict:
        width = dim if space == "random" else info.intrinsic_size
        vectors = {str(layer): rng.uniform(-1, 1, width).round(6).tolist() for layer in range(info.num_layers)}
        if space == "random":
            return {"intrinsic": vectors}
        return {"intrinsic": vectors, "router": rng.uniform(-2, 2, (info.num_layers, info.num_modules)).tolist()}

    def population(space: str) -> bytes:
        """The largest legal population in ``space``: every candidate and the base at every layer."""
        space_body = {"kind": "random", "seed": 0, "dim": dim} if space == "random" else {"kind": "bank"}
        return json.dumps({"examples": one, "space": space_body, "base": member(space),
                           "candidates": [member(space) for _ in range(limits.max_candidates)]}).encode()  # fmt: skip

    example = {"query": "评论的态度是？", "passage": "长" * limits.max_text_chars, "options": ["正面", "负面"], "label": 0}
    count = min(limits.max_examples, (limits.max_body_bytes - 100) // (len(json.dumps(example, ensure_ascii=False)
                                                                               .encode()) + 1))  # fmt: skip
    upload = json.dumps({"examples": [{**example, "query": f"{i}"} for i in range(count)]}, ensure_ascii=False).encode()
    zeros = b'{"candidates": [{"router": [' + b",".join([b"0"] * (limits.max_body_bytes // 2 - 40)) + b"]}]}"
    cases = [  # (name, path, bodies: the last one's cost is reported, the ones before warm the server up)
        ("largest random-space population, first", "/v1/score", [population("random")]),
        ("largest random-space population, again", "/v1/score", [population("random"), population("random")]),
        ("largest bank-space population", "/v1/score", [population("bank")]),
        (f"largest upload ({count} passages of {limits.max_text_chars} characters)", "/v1/datasets", [upload]),
        ("16 MiB of zeros (refused unread)", "/v1/score", [zeros]),
    ]
    result: dict = {"backbone": name, "limits": limits.to_dict(), "server": config.to_dict(), "value_budget": budget,
                    "random_projections_mb": info.num_layers * dim * info.num_tokens * info.hidden_size * 4 / 2**20,
                    "requests": {}}  # fmt: skip
    for case, path, bodies in cases:
        with Served(bank, backbone, args) as server, httpx.Client(base_url=server.url, headers=auth, timeout=3600) as http:
            assert http.post("/v1/score", json={"examples": one, "candidates": [{}]}).status_code == 200  # warmed up
            for body in bodies[:-1]:
                assert http.post(path, content=body).status_code < 300
            cost = peak_rise(server.process.pid, lambda: http.post(path, content=bodies[-1]))
        values = bodies[-1].count(b",") + bodies[-1].count(b"[") + bodies[-1].count(b"{") + 1
        result["requests"][case] = {**cost, "body_mb": len(bodies[-1]) / 2**20, "values": values}
        print(case, json.dumps({k: v for k, v in result["requests"][case].items() if k != "answer"}), flush=True)

    with Served(bank, backbone, args) as server, httpx.Client(base_url=server.url, headers=auth, timeout=3600) as http:
        # Health while the model is busy: one long request runs, the queue fills, more are turned away.
        examples = [example_to_dict(e) for e in train]
        candidates = [{"router": rng.uniform(-4, 4, info.num_modules).tolist()} for _ in range(limits.max_candidates)]

        def score(i: int) -> int:
            chosen = candidates if i == 0 else candidates[i % 8 : i % 8 + 1]
            payload = json.dumps({"examples": examples, "candidates": chosen}) + " " * i  # each its own job
            return http.post("/v1/score", content=payload).status_code

        with ThreadPoolExecutor(3 * config.max_queue) as pool:
            first = pool.submit(score, 0)
            time.sleep(0.5)
            others = [pool.submit(score, i) for i in range(1, 3 * config.max_queue)]
            time.sleep(0.5)
            health, info_latency = [], []
            while not first.done() and len(health) < 100:
                t = time.perf_counter()
                http.get("/v1/health")
                health.append(time.perf_counter() - t)
                t = time.perf_counter()
                http.get("/v1/info")
                info_latency.append(time.perf_counter() - t)
                time.sleep(0.05)
            statuses = [first.result()] + [f.result() for f in others]
        result["health_under_load"] = {
            "queued_or_refused": len(others), "statuses": {str(s): statuses.count(s) for s in sorted(set(statuses))},
            "samples": len(health), "health_p50_s": statistics.median(health), "health_max_s": max(health),
            "info_p50_s": statistics.median(info_latency), "info_max_s": max(info_latency),
        }  # fmt: skip
        print("health under load", json.dumps(result["health_under_load"]), flush=True)

        # A keyed request with three times more idle sockets open than the connection limit.
        idle = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(3 * config.max_connections)]
        time.sleep(0.2)
        started = time.perf_counter()
        response = http.post("/v1/score", json={"examples": one, "candidates": [{}]})
        result["idle_sockets"] = {"idle": len(idle), "status": response.status_code,
                                  "seconds": time.perf_counter() - started}  # fmt: skip
        for sock in idle:
            sock.close()
        print("idle sockets", json.dumps(result["idle_sockets"]), flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bank", help="the bank to serve (required, but for --robustness)")
    p.add_argument("--robustness", action="store_true", help="measure hostile and careless clients' cost instead")
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
    if args.robustness:
        previous = json.loads(args.out.read_text()) if args.out.exists() else {}
        measured = robustness(args, train)
        measured["command"] = "python benchmarks/serving.py " + " ".join(sys.argv[1:] if argv is None else argv)
        measured["machine"] = describe_machine()
        result = {**previous, "robustness": measured}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
        # The section replaces its previous version; the table above it stays as its own run wrote it.
        markdown = args.out.with_suffix(".md")
        above = markdown.read_text().split("\n" + ROBUSTNESS_HEADING)[0].rstrip("\n") if markdown.exists() else ""
        markdown.write_text(above + "\n" + "\n".join(robustness_markdown(measured)) + "\n")
        return result
    if not args.bank:
        p.error("--bank is required (but for --robustness)")
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
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result = {
        **({"robustness": previous["robustness"]} if "robustness" in previous else {}),
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
    lines = main_markdown(result) if "work" in result else []
    if "robustness" in result:
        lines += robustness_markdown(result["robustness"])
    path.write_text("\n".join(lines) + "\n")


def robustness_markdown(r: dict) -> list[str]:
    limits, server, load, idle = r["limits"], r["server"], r["health_under_load"], r["idle_sockets"]
    lines = [
        "",
        f"{ROBUSTNESS_HEADING} ({r['backbone']['name']}, {machine_text(r['machine'])})",
        "",
        f"Command: `{r['command']}`",
        "",
        f"Under `modprompt serve`'s default limits ({limits['max_candidates']} candidates, {limits['max_examples']} "
        f"examples and {limits['max_body_bytes'] / 2**20:g} MiB per request; at most {server['max_connections']} "
        f"connections and {server['max_queue']} model requests admitted at once). A legal request holds at most "
        f"{r['value_budget']:,} JSON values; a body holding more is refused before any value is made. Each request "
        "went to a fresh `modprompt serve` process of its own, warmed up by one small request; peak rise is how far "
        "that process's peak resident memory rose above its resident size when the request was sent, held after "
        "what it still held when the answer came. The first random-space population also makes the random "
        f"projections the server keeps ({r['random_projections_mb']:.0f} MB here, bounded by `--projection-mb`); "
        "the second one, sent after it to the same process, finds them made.",
        "",
        "| request | status | body MB | JSON values | peak rise MB | held after MB | s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, c in r["requests"].items():
        values = f"{c['values']:,}" if c.get("values") else ""
        lines.append(f"| {name} | {c['status']} | {c['body_mb']:.1f} | {values} | {c['peak_rise_mb']:.0f} | "
                     f"{c['held_mb']:.0f} | {c['seconds']:.2f} |")  # fmt: skip
    statuses = ", ".join(f"{n} × {s}" for s, n in load["statuses"].items())
    lines += [
        "",
        f"While one request of {limits['max_candidates']} candidates kept the model busy and "
        f"{load['queued_or_refused']} more arrived at once (answers: {statuses}; a 503 comes at once, with "
        f"Retry-After), `/v1/health` answered in {1000 * load['health_p50_s']:.1f} ms (median; at most "
        f"{1000 * load['health_max_s']:.1f} ms over {load['samples']} calls) and `/v1/info` in "
        f"{1000 * load['info_p50_s']:.1f} ms (at most {1000 * load['info_max_s']:.1f} ms).",
        "",
        f"With {idle['idle']} idle sockets open ({idle['idle'] // server['max_connections']}× the connection limit), "
        f"a keyed request was answered {idle['status']} in {idle['seconds']:.2f} s.",
    ]
    return lines


def main_markdown(result: dict) -> list[str]:
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
    return lines


if __name__ == "__main__":
    main()

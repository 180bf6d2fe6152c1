"""Cost of deep modular prompts against the bare backbone, and training throughput against the fp32 peak.

Forward and forward+backward are timed on the same token count, interleaved in one run (bare,
prompted, bare, ...) so machine noise hits both alike; the result is the ratio of the fastest repeats (noise only ever
adds time), with medians reported beside them. The bare
forward+backward sends gradients to the input embeddings, so its backward crosses every layer as the
prompts' does. FLOPs are counted by torch's FlopCounterMode on the real step, and divided by the time
to give the fraction of the machine's fp32 matmul peak (about 106 GFLOP/s on the 2-core CPUs here).

    python benchmarks/prompt_overhead.py --backbone gemma-3-270m --batch 8 --tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import describe_machine
from torch.utils.flop_counter import FlopCounterMode

from modprompt.backbone import load_backbone
from modprompt.head import span_loss
from modprompt.modular.config import ModularPromptConfig
from modprompt.modular.model import ModularPromptModel

RESULTS = Path(__file__).parent / "results"


def make_batch(vocab: int, batch: int, tokens: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(10, vocab, (batch, tokens), generator=g)
    candidates = torch.zeros(batch, tokens, dtype=torch.bool)
    candidates[:, tokens // 2 :] = True
    positions = torch.full((batch,), tokens - 2)
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        "start_candidates": candidates,
        "end_candidates": candidates,
        "start_positions": positions,
        "end_positions": positions,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=128, help="total tokens per example, prompt placeholders included")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--peak-gflops", type=float, default=106.0)
    parser.add_argument("--out", default=str(RESULTS / "prompt_overhead.json"))
    args = parser.parse_args()

    torch.manual_seed(0)
    backbone = load_backbone(args.backbone)
    config = ModularPromptConfig(backbone.num_layers, backbone.hidden_size)
    model = ModularPromptModel(backbone, config, ["task"])
    batch = make_batch(backbone.info.vocab_size, args.batch, args.tokens)
    task_ids = torch.zeros(args.batch, dtype=torch.long)
    embed = backbone.body.get_input_embeddings()

    def bare_forward():
        with torch.no_grad():
            backbone(batch["input_ids"], batch["attention_mask"])

    def prompted_forward():
        with torch.no_grad():
            model(batch, task_ids)

    def bare_train():
        inputs = embed(batch["input_ids"]).detach().requires_grad_(True)
        hidden = backbone.body(inputs_embeds=inputs, attention_mask=batch["attention_mask"]).last_hidden_state
        start, end = model.head(hidden)
        span_loss(start, end, batch).backward()

    def prompted_train():
        model.zero_grad(set_to_none=True)
        start, end = model(batch, task_ids, temperature=0.5, generator=torch.Generator().manual_seed(0))
        span_loss(start, end, batch).backward()

    cases = {"bare_forward": bare_forward, "prompted_forward": prompted_forward,
             "bare_train": bare_train, "prompted_train": prompted_train}
    flops = {}
    for name, fn in cases.items():
        fn()  # warm-up
        with FlopCounterMode(display=False) as counter:
            fn()
        flops[name] = counter.get_total_flops()
    times = {name: [] for name in cases}
    for _ in range(args.repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t) for name, t in times.items()}
    best = {name: min(t) for name, t in times.items()}
    tokens = args.batch * args.tokens
    result = {
        "command": f"python benchmarks/prompt_overhead.py --backbone {args.backbone} --batch {args.batch} "
        f"--tokens {args.tokens} --repeats {args.repeats}",
        "backbone": backbone.info.to_dict(),
        "prompt": config.to_dict(),
        "batch": args.batch,
        "tokens_per_example": args.tokens,
        "machine": describe_machine(),
        "seconds_best": best,
        "seconds_median": median,
        "seconds_all": times,
        "overhead_forward": best["prompted_forward"] / best["bare_forward"],
        "overhead_forward_backward": best["prompted_train"] / best["bare_train"],
        "overhead_forward_median": median["prompted_forward"] / median["bare_forward"],
        "overhead_forward_backward_median": median["prompted_train"] / median["bare_train"],
        "gflop": {k: v / 1e9 for k, v in flops.items()},
        "gflops_per_s": {k: flops[k] / 1e9 / best[k] for k in cases},
        "fraction_of_peak": {k: flops[k] / 1e9 / best[k] / args.peak_gflops for k in cases},
        "train_tokens_per_s": tokens / best["prompted_train"],
        "peak_gflops_assumed": args.peak_gflops,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    md = out.with_suffix(".md")
    md.write_text(
        f"# Deep modular prompt overhead ({backbone.info.name}, batch {args.batch} × {args.tokens} tokens, "
        f"{torch.get_num_threads()} threads)\n\n"
        f"Command: `{result['command']}`\n\n"
        "| case | best s | median s | GFLOP | GFLOP/s (best) | of fp32 peak |\n|---|---|---|---|---|---|\n"
        + "".join(
            f"| {k} | {best[k]:.3f} | {median[k]:.3f} | {flops[k] / 1e9:.1f} | {result['gflops_per_s'][k]:.1f} | "
            f"{result['fraction_of_peak'][k]:.0%} |\n"
            for k in cases
        )
        + f"\nOverhead (prompted / bare, same tokens, best of {args.repeats}): forward "
        f"**{result['overhead_forward']:.3f}×**, forward+backward **{result['overhead_forward_backward']:.3f}×** "
        f"(target ≤ 1.05×; medians {result['overhead_forward_median']:.3f}× and "
        f"{result['overhead_forward_backward_median']:.3f}×). "
        f"Training throughput {result['train_tokens_per_s']:.0f} tokens/s.\n"
    )
    print(json.dumps({k: result[k] for k in ("overhead_forward", "overhead_forward_backward", "train_tokens_per_s", "fraction_of_peak")}, indent=2))


if __name__ == "__main__":
    main()

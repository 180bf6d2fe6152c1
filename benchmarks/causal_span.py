"""Extractive QA on a causal backbone: what the linear span head's blind start costs, and what the bilinear
span head (:class:`modprompt.head.BilinearSpanHead`) or a passage given twice gets back.

A synthetic span task, made so that the start of the answer can be told only from tokens after it: a passage
of six words (two to four characters, separated by "，"), and the question "哪个词以X结尾？" (which word ends
with X?), X being the last character of exactly one word and appearing nowhere else. A decoder's state at the
answer's first character has not yet seen X; its state at the last character has seen the whole word. The
mirror task asks for the word that *starts* with X: a causal start sees X, but a causal end cannot see that
the next character is "，", so there it is the end that is blind.

Variants: the linear head (:class:`~modprompt.head.SpanHead`), the bilinear head, and the linear head on the
passage given twice (``passage + passage``, the answer's span in the second copy, whose tokens have all seen
the whole first copy: twice the passage tokens).

Each cell trains a tiny random backbone of ``tests/tiny.py``'s shape (2 layers, hidden 32) and a fresh head
from scratch, all weights, on a pool of generated training examples, and scores exact match on held-out ones
(:func:`modprompt.evaluate.evaluate`, the library's own decoding). Backbones: the tiny encoder (BERT,
bidirectional) and the tiny decoder (Gemma 3, causal), both on the char tokenizer so that only the attention
differs, and the tiny decoder on its own BPE tokenizer, as the test suite has it. One torch thread; one to
five minutes a cell on a busy 2-core CPU (about 1.5 hours for the 28 cells):

    python benchmarks/causal_span.py --steps 3000 --seeds 0 1
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from machine import describe_machine

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import tiny  # noqa: E402

from modprompt.backbone import load_backbone  # noqa: E402
from modprompt.data.encoding import EncodingConfig, MRCEncoder  # noqa: E402
from modprompt.data.mrc import MRCExample  # noqa: E402
from modprompt.evaluate import evaluate  # noqa: E402
from modprompt.head import make_span_head, span_loss  # noqa: E402

RESULTS = Path(__file__).parent / "results"
#: characters the passages are made of: one token each under the char tokenizer
CHARS = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面"
WORDS, SHORTEST, LONGEST = 6, 2, 4
TASKS = {"ends-with": "哪个词以{}结尾？", "starts-with": "哪个词以{}开头？"}
#: (name, tests/tiny.py kind, tokenizer)
BACKBONES = (
    ("encoder/char", "encoder", "char"),
    ("decoder/char", "decoder", "char"),
    ("decoder/bpe", "decoder", "bpe"),
)
#: variant -> (span head, passage given twice)
VARIANTS = {"linear": ("linear", False), "bilinear": ("bilinear", False), "linear, passage twice": ("linear", True)}
#: the variants run on each backbone: the passage twice only where the question is, on the causal char backbone
RUNS = {"encoder/char": ("linear", "bilinear"), "decoder/char": tuple(VARIANTS), "decoder/bpe": ("linear", "bilinear")}

logger = logging.getLogger("causal_span")


def make_example(task: str, rng: random.Random, index: int, twice: bool = False) -> MRCExample:
    """One question of ``task``: six words over CHARS, the answer's key character used nowhere else; ``twice``:
    the passage given twice, the answer in the second copy."""
    chars = list(CHARS)
    rng.shuffle(chars)
    key = chars.pop()
    words = [[chars.pop() for _ in range(rng.randint(SHORTEST, LONGEST))] for _ in range(WORDS)]
    answer = rng.randrange(WORDS)
    if task == "ends-with":
        words[answer][-1] = key
    else:
        words[answer][0] = key
    texts = ["".join(w) for w in words]
    passage = "，".join(texts) + "。"
    start = sum(len(t) + 1 for t in texts[:answer])
    if twice:
        start += len(passage)
        passage += passage
    span = (start, start + len(texts[answer]))
    return MRCExample(task, TASKS[task].format(key), passage, span=span, answers=(texts[answer],), source=f"{index}")


def run_cell(folder: Path, variant: str, task: str, seed: int, args: argparse.Namespace) -> dict:
    """Train backbone and head of one cell from scratch; exact match and F1 on the held-out examples."""
    head_kind, twice = VARIANTS[variant]
    torch.manual_seed(seed)
    backbone = load_backbone(folder, freeze=False)
    backbone.body.train(False)  # no dropout: the cells differ in attention and head only
    head = make_span_head(head_kind, backbone.hidden_size)
    rng = random.Random(seed)
    train = [make_example(task, rng, i, twice) for i in range(args.train)]
    held_out = random.Random(10_000 + seed)
    test = [make_example(task, held_out, i, twice) for i in range(args.test)]
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(max_length=128))
    encoded = encoder.encode_all(train)
    params = list(backbone.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    order = torch.Generator().manual_seed(seed)

    def forward(batch: dict, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return head(backbone(batch["input_ids"], batch["attention_mask"]))

    started = time.perf_counter()
    losses = []
    for step in range(args.steps):
        picks = torch.randint(len(encoded), (args.batch,), generator=order).tolist()
        batch = encoder.collate([encoded[i] for i in picks])
        loss = span_loss(*forward(batch, []), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(loss.item())
    seconds = time.perf_counter() - started
    backbone.body.eval()
    metrics = evaluate(forward, encoder, test, batch_size=64)
    return {
        "exact_match": metrics["exact_match"],
        "f1": metrics["f1"],
        "final_loss": statistics.fmean(losses[-50:]),
        "train_seconds": seconds,
    }


def table(cells: list[dict]) -> str:
    """Markdown: mean exact match (and each seed's) per task, backbone and variant."""
    lines = [
        "| task | backbone | variant | exact match (mean) | per seed | F1 (mean) |",
        "|---|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((c["task"], c["backbone"], c["variant"]) for c in cells)
    for task, backbone, variant in keys:
        group = [c for c in cells if (c["task"], c["backbone"], c["variant"]) == (task, backbone, variant)]
        ems = [c["exact_match"] for c in group]
        per_seed = ", ".join(f"{e:.3f}" for e in ems)
        f1 = statistics.fmean(c["f1"] for c in group)
        lines.append(f"| {task} | {backbone} | {variant} | {statistics.fmean(ems):.3f} | {per_seed} | {f1:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train", type=int, default=4000, help="generated training examples")
    parser.add_argument("--test", type=int, default=500, help="generated held-out examples")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--out", default=str(RESULTS / "causal-span"), help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("modprompt").setLevel(logging.ERROR)  # the tiny models' load messages
    torch.set_num_threads(1)
    cells = []
    with tempfile.TemporaryDirectory() as tmp:
        folders = {
            name: tiny.tiny_backbone(kind, Path(tmp) / name.replace("/", "-"), tokenizer)
            for name, kind, tokenizer in BACKBONES
        }
        for task in args.tasks:
            for name, folder in folders.items():
                for variant in RUNS[name]:
                    for seed in args.seeds:
                        cell = {"task": task, "backbone": name, "variant": variant, "seed": seed,
                                **run_cell(folder, variant, task, seed, args)}  # fmt: skip
                        logger.info("%s", cell)
                        cells.append(cell)
    command = "python benchmarks/causal_span.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "machine": describe_machine(),
        "cells": cells,
    }
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    text = [
        "# Extractive QA on a causal backbone: the linear head's blind start",
        "",
        f"Command: `{result['command']}`. Tiny random backbones of `tests/tiny.py`'s shape (2 layers, hidden 32),",
        f"backbone and head trained from scratch for {args.steps} steps of {args.batch} on {args.train} generated",
        f"questions, exact match on {args.test} held-out ones; seeds {args.seeds}. See the script's docstring for",
        "the tasks: in `ends-with` only tokens after the answer's start say where it is.",
        "",
        table(cells),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(text))
    print(table(cells))


if __name__ == "__main__":
    main()

"""Extractive QA on the real causal backbone: the linear span head against the bilinear one on frozen Gemma 3
270M states, CMRC 2018, from few-shot to a thousand training questions.

``causal_span.py`` measures the linear head's blind start on tiny backbones trained from scratch; this asks
the same of the real backbone's own last-layer states, with nothing but the head trained, so that the head's
formulation is the only difference and enough training questions can be given for it to show (a few-shot
adaptation run, ``cmrc_adapt.py``, trains 16 questions and one seed, where run-to-run noise hides a head's
effect). No prompt is used: the states are those of the bare backbone (not what an adaptation run's head
reads, whose prompts also move them), so the numbers rank the heads, not the library's methods.

The task is ``benchmarks/specs/cmrc2018-heldout.json`` (train: the official dev file; test: the official trial
file), read with windows as adaptation reads it (``max_length`` 256, stride 128). Train questions are the
first N of one draw of the largest size (so the sizes nest), dev 64 disjoint questions of the same file, test
200 questions of the trial file (``test_limit``'s fixed subset, the same as ``cmrc_adapt.py``'s). Each window's
states are computed once (12 minutes on the 2-core AVX2 CPU, cached under ``--work``); each cell then trains a
fresh head for ``--steps`` steps of 16 windows (AdamW), evaluates dev EM/F1 every 50 steps and scores test with
its dev-best head (ties to the later step), through :func:`modprompt.evaluate.predict` (the library's decoding,
best span over a question's windows):

    python benchmarks/span_probe.py --data ../shared/data/raw
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import describe_machine
from safetensors.torch import load_file, save_file

from modprompt.adapt.run import resolve_task
from modprompt.backbone import load_backbone
from modprompt.data.encoding import EncodedExample, EncodingConfig, MRCEncoder, training_windows
from modprompt.data.fewshot import fewshot_splits, subset
from modprompt.data.mrc import MRCExample
from modprompt.evaluate import predict, score
from modprompt.head import candidate_log_probs, make_span_head, span_log_probs, span_loss

RESULTS = Path(__file__).parent / "results"
SPEC = Path(__file__).parent / "specs" / "cmrc2018-heldout.json"
HEADS = ("linear", "bilinear")
BATCH, EVAL_EVERY, DEV_QUESTIONS = 16, 50, 64

logger = logging.getLogger("span_probe")


def window_key(ids: list[int]) -> str:
    """A window's cache key: its token ids (two windows with the same ids have the same states)."""
    return hashlib.sha1(torch.tensor(ids, dtype=torch.int32).numpy().tobytes()).hexdigest()


@torch.no_grad()
def compute_states(
    backbone, encoder: MRCEncoder, windows: list[EncodedExample], cache: Path
) -> dict[str, torch.Tensor]:
    """Last-layer states of every window, (tokens, hidden) each by :func:`window_key`; read from and added to
    the ``cache`` file."""
    states = load_file(cache) if cache.is_file() else {}
    todo = {window_key(w.input_ids): w for w in windows}
    todo = [w for key, w in todo.items() if key not in states]
    todo.sort(key=lambda w: len(w.input_ids))
    started = time.perf_counter()
    for i in range(0, len(todo), 8):
        items = todo[i : i + 8]
        batch = encoder.collate(items)
        hidden = backbone(batch["input_ids"], batch["attention_mask"])
        for row, w in enumerate(items):
            states[window_key(w.input_ids)] = hidden[row, : len(w.input_ids)].clone()
        if (i // 8) % 25 == 0:
            logger.info("states: %d of %d windows, %.0f s", i + len(items), len(todo), time.perf_counter() - started)
    if todo:
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(states, cache)
    return states


def padded_states(states: dict[str, torch.Tensor], batch: dict) -> torch.Tensor:
    """The cached states of a collated batch's rows, right-padded with zeros to its length."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = torch.zeros(*ids.shape, next(iter(states.values())).shape[-1])
    for row in range(ids.shape[0]):
        n = int(mask[row].sum())
        out[row, :n] = states[window_key(ids[row, :n].tolist())]
    return out


@torch.no_grad()
def boundary_accuracy(forward, encoder: MRCEncoder, windows: list[EncodedExample]) -> tuple[float, float]:
    """How often the most likely start, and apart the most likely end, is the gold one, over windows holding their
    answer: a start scored blind shows as a start accuracy below the end's. A pair head's start and end are
    its span probabilities' marginals."""
    hits = torch.zeros(2)
    for i in range(0, len(windows), 32):
        batch = encoder.collate(windows[i : i + 32])
        first, end = forward(batch, [])
        if first.dim() == 3:
            spans = span_log_probs(first, end, batch)
            start_lp, end_lp = spans.logsumexp(2), spans.logsumexp(1)
        else:
            start_lp = candidate_log_probs(first, batch["start_candidates"])
            end_lp = candidate_log_probs(end, batch["end_candidates"])
        hits[0] += (start_lp.argmax(-1) == batch["start_positions"]).sum()
        hits[1] += (end_lp.argmax(-1) == batch["end_positions"]).sum()
    return tuple((hits / len(windows)).tolist())


def run_cell(states, encoder, train: list[EncodedExample], dev: list[MRCExample], test: list[MRCExample],
             later: list[bool], answered: list[EncodedExample], head_kind: str, seed: int, steps: int,
             lr: float) -> dict:  # fmt: skip
    """Train one fresh head on ``train``'s windows; the dev-best head's test EM/F1, over all test questions and
    apart for those whose answer lies beyond the first window (``later``: the ones a cut passage loses), and its
    start and end accuracy over ``answered``, the test windows holding their answer."""
    torch.manual_seed(seed)
    head = make_span_head(head_kind, next(iter(states.values())).shape[-1])
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)

    def forward(batch: dict, tasks: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return head(padded_states(states, batch))

    def dev_f1() -> float:
        head.eval()
        metrics = score(predict(forward, encoder, dev, batch_size=32, progress=False))
        head.train()
        return metrics["f1"]

    best, best_step, best_state = dev_f1(), 0, copy.deepcopy(head.state_dict())
    curve = [(0, best)]
    for step in range(1, steps + 1):
        picks = torch.randint(len(train), (BATCH,), generator=order).tolist()
        batch = encoder.collate([train[i] for i in picks])
        loss = span_loss(*forward(batch, []), batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % EVAL_EVERY == 0:
            f1 = dev_f1()
            curve.append((step, f1))
            if f1 >= best:
                best, best_step, best_state = f1, step, copy.deepcopy(head.state_dict())
    head.load_state_dict(best_state)
    head.eval()
    predictions = predict(forward, encoder, test, batch_size=32, progress=False)
    metrics = score(predictions)
    first, beyond = (score([p for p, x in zip(predictions, later) if x == side]) for side in (False, True))
    start_accuracy, end_accuracy = boundary_accuracy(forward, encoder, answered)
    return {"exact_match": metrics["exact_match"], "f1": metrics["f1"], "f1_first_window": first.get("f1"),
            "f1_later_windows": beyond.get("f1"), "start_accuracy": start_accuracy, "end_accuracy": end_accuracy,
            "best_dev_f1": best, "chosen_step": best_step, "dev_curve": curve}  # fmt: skip


def mean_sd(values: list[float | None]) -> str:
    """The values' mean ± sample std ("–" when there are none)."""
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    return f"{statistics.fmean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0.0:.3f}"


def table(cells: list[dict]) -> list[str]:
    """Markdown rows: mean ± std over seeds of test EM and F1 per (train questions, head)."""
    lines = [
        "| train questions (windows) | head | EM | F1 | F1, answer in the first window | F1, answer later "
        + "| start accuracy | end accuracy | F1 per seed | chosen steps |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for size, windows in dict.fromkeys((c["train_questions"], c["train_windows"]) for c in cells):
        for head in HEADS:
            group = [c for c in cells if c["train_questions"] == size and c["head"] == head]
            if not group:
                continue
            f1s = [c["f1"] for c in group]
            means = " | ".join(mean_sd([c[k] for c in group]) for k in ("exact_match", "f1", "f1_first_window",
                                                                          "f1_later_windows", "start_accuracy",
                                                                          "end_accuracy"))  # fmt: skip
            lines.append(f"| {size} ({windows}) | {head} | {means} | {', '.join(f'{x:.3f}' for x in f1s)} | "
                         f"{', '.join(str(c['chosen_step']) for c in group)} |")  # fmt: skip
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="gemma-3-270m")
    parser.add_argument("--data", default="../shared/data/raw", help="the task data mirror (the spec names its files)")
    parser.add_argument("--spec", default=str(SPEC))
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 64, 256, 1024], help="train questions")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="head initialisation and order")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--test-limit", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--work", default="runs/span-probe", help="where the states cache is kept")
    parser.add_argument("--out", default=str(RESULTS / "span-probe"), help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    backbone = load_backbone(args.backbone)
    task = resolve_task(None, Path(args.spec).resolve())
    train_all, dev, test = fewshot_splits(task, 0, args.data, k_per_label=max(args.sizes))
    dev, test = dev[:DEV_QUESTIONS], subset(test, args.test_limit)
    encoder = MRCEncoder(backbone.tokenizer, EncodingConfig(max_length=256, windows=True))
    train_windows = {n: training_windows(encoder.encode_windows(train_all[:n])) for n in args.sizes}
    test_windows = [w for ws in encoder.encode_windows(test) for w in ws]
    every = train_windows[max(args.sizes)] + [w for ws in encoder.encode_windows(dev) for w in ws] + test_windows
    answered = [w for w in test_windows if w.answer_span is not None]
    # the test questions a passage cut at max_length loses (the windows' comparison across windows decides them)
    later = [e.answer_lost for e in MRCEncoder(backbone.tokenizer, EncodingConfig(max_length=256)).encode_all(
        test, report=False)]  # fmt: skip
    cache = Path(args.work) / f"{backbone.info.name}-{len(every)}.safetensors"
    states = compute_states(backbone, encoder, every, cache)
    cells = []
    for n in args.sizes:
        for head in HEADS:
            for seed in args.seeds:
                started = time.perf_counter()
                cell = run_cell(states, encoder, train_windows[n], dev, test, later, answered, head, seed,
                                args.steps, args.lr)  # fmt: skip
                cell = {"train_questions": n, "train_windows": len(train_windows[n]), "head": head, "seed": seed,
                        **cell, "seconds": time.perf_counter() - started}  # fmt: skip
                logger.info("%d questions, %s, seed %d: EM %.3f F1 %.3f (dev %.3f at step %d)", n, head, seed,
                            cell["exact_match"], cell["f1"], cell["best_dev_f1"], cell["chosen_step"])  # fmt: skip
                cells.append(cell)
    command = "python benchmarks/span_probe.py " + " ".join(sys.argv[1:])
    settings = {k: v for k, v in vars(args).items() if k not in ("out", "work", "threads")}
    settings |= {"batch": BATCH, "eval_every": EVAL_EVERY, "dev_questions": len(dev), "test_questions": len(test)}
    result = {"command": command.strip(), "settings": settings, "machine": describe_machine(), "cells": cells}
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    text = [
        f"# CMRC 2018 on frozen {backbone.info.name} states: linear against bilinear span head",
        "",
        f"Command: `{result['command']}`. Only a fresh span head is trained ({args.steps} steps of {BATCH} windows,",
        f"AdamW lr {args.lr}), on the bare backbone's last-layer states (no prompt); dev: {len(dev)} questions of the",
        f"official dev file, every {EVAL_EVERY} steps, the dev-best head scores the test set ({len(test)} questions",
        f"of the official trial file). Windows of 256 tokens, stride 128. Mean ± std over seeds {args.seeds}.",
        f"{sum(later)} of the {len(test)} test answers lie beyond the first window (a passage cut at 256 tokens",
        "loses them); their F1 is also shown apart. Start (end) accuracy: how often the head's most likely start",
        "(end) token is the gold one, over the test windows holding their answer.",
        "",
        *table(cells),
        "",
    ]
    out.with_suffix(".md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()

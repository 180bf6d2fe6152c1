"""CMRC 2018 answers that adaptation can reach: passages cut at ``max_length`` against passages in windows.

Tokenizer only (no model runs): each question of CMRC 2018's two files is encoded as ``modprompt adapt`` encodes
it for a bank method — the embedded Gemma 3 270M tokenizer, the bank's 16 prompt placeholders, the adapt
``max_length`` (256, raised only if a query needs more than ``min_passage_tokens`` of room, which none does) —
once with long passages cut at their end (``--long-passages cut``, how adaptation read them before windows)
and once in overlapping windows (the default now: ``EncodingConfig.windows``, ``doc_stride`` 128). An answer
is reachable when a kept passage token covers all of it.

The task's ``train`` split is CMRC 2018's official dev file (``cmrc2018_dev.json``, 3219 questions) and its
``dev`` split the official trial file (``cmrc2018_trial.json``); both are counted.

    python benchmarks/cmrc_windows.py --data ../shared/data/raw
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
from pathlib import Path

from transformers import AutoTokenizer

from modprompt.adapt.config import AdaptConfig
from modprompt.adapt.methods import DEFAULT_NUM_TOKENS
from modprompt.data.encoding import EncodingConfig, MRCEncoder
from modprompt.data.registry import load_examples
from modprompt.gemma import gemma_path

RESULTS = Path(__file__).parent / "results"
SPLITS = {"train": "cmrc2018_dev.json, official dev", "dev": "cmrc2018_trial.json, official trial"}


def count(encoder: MRCEncoder, examples: list) -> dict:
    """Reachable answers and windows of ``examples`` under ``encoder``."""
    windows = encoder.encode_windows(examples, report=False)
    first = [ws[0] for ws in windows]
    reachable = [any(w.answer_span is not None for w in ws) for ws in windows]
    exact = [any(w.answer_span is not None and w.answer_exact for w in ws) for ws in windows]
    sizes = [len(ws) for ws in windows]
    lost = [ex for ex, ok in zip(examples, reachable) if not ok]
    offsets = [encoder.tokenizer(ex.passage, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
               for ex in lost]  # fmt: skip
    lost_tokens = sorted(
        sum(1 for a, b in offs if a < b and a < ex.span[1] and b > ex.span[0]) for ex, offs in zip(lost, offsets)
    )
    return {
        "questions": len(examples),
        "passages_longer_than_a_window": sum(e.truncated for e in first),
        "answers_reachable": sum(reachable),
        "answers_unreachable": len(examples) - sum(reachable),
        "answers_reachable_exactly": sum(exact),
        "windows": sum(sizes),
        "windows_per_question_mean": statistics.fmean(sizes),
        "windows_per_question_max": max(sizes),
        "unreachable_answer_tokens": lost_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/raw", help="the task data mirror")
    parser.add_argument("--out", default=str(RESULTS / "cmrc-windows"), help="writes OUT.json and OUT.md")
    args = parser.parse_args()
    tokenizer = AutoTokenizer.from_pretrained(gemma_path(prepare=False))
    adapt = AdaptConfig(method="route-only")
    rows = {}
    for split, name in SPLITS.items():
        examples = load_examples("cmrc2018", split, args.data)
        base = EncodingConfig(adapt.max_length, DEFAULT_NUM_TOKENS, doc_stride=128)
        needed = MRCEncoder(tokenizer, base).fixed_length(examples) + adapt.min_passage_tokens
        base = dataclasses.replace(base, max_length=max(adapt.max_length, needed))
        rows[split] = {
            "file": name,
            "max_length": base.max_length,
            "cut": count(MRCEncoder(tokenizer, base), examples),
            "windows": count(MRCEncoder(tokenizer, dataclasses.replace(base, windows=True)), examples),
        }
    command = "python benchmarks/cmrc_windows.py " + " ".join(sys.argv[1:])
    result = {"command": command.strip(), "tokenizer": "gemma-3-270m", "prompt_tokens": DEFAULT_NUM_TOKENS,
              "doc_stride": 128, "splits": rows}  # fmt: skip
    out = Path(args.out)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    lines = [
        "# CMRC 2018: answers reachable with passages cut and in windows",
        "",
        f"Command: `{result['command']}`. Tokenizer only: the embedded Gemma 3 270M tokenizer, {DEFAULT_NUM_TOKENS}",
        "prompt placeholders (the released bank's), the adapt `max_length`; windows share `doc_stride` 128 tokens",
        "(at most half a window). An answer is reachable when kept passage tokens cover all of it.",
        "",
        "| split (file) | questions | max_length | passages longer than a window | unreachable, cut | "
        "unreachable, windows | reachable, cut | reachable, windows | windows (mean, max per question) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for split, row in rows.items():
        cut, win = row["cut"], row["windows"]
        n = cut["questions"]
        lines.append(
            f"| {split} ({row['file']}) | {n} | {row['max_length']} | {cut['passages_longer_than_a_window']} | "
            f"{cut['answers_unreachable']} | {win['answers_unreachable']} | "
            f"{cut['answers_reachable'] / n:.1%} | {win['answers_reachable'] / n:.1%} | "
            f"{win['windows']} ({win['windows_per_question_mean']:.2f}, {win['windows_per_question_max']}) |"
        )
    left = [t for row in rows.values() for t in row["windows"]["unreachable_answer_tokens"]]
    if left:
        lines += [
            "",
            f"The {len(left)} answers no window holds are {min(left)} to {max(left)} tokens long: longer than the",
            "overlap of neighbouring windows, so the stride can step over them (a span of more than 64 tokens is",
            "never predicted anyway: `modprompt.head.best_spans`' `max_answer_tokens`).",
        ]
    lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()

"""What the trainer's layouts and speed-ups buy on one multi-task training step.

With a pre-finetuning config (all of Gemma 3 270M's parameters train, MUPPET's mixed batches), a
step's examples are laid out three ways: one micro-batch (the first pre-finetune run), the config's
``grad_accum`` micro-batches as drawn, and the same regrouped by length (``group_by_length``); the
sampler draws the same examples for all three. With a pre-training config (frozen backbone, the
prompt bank trains) the layouts are MP2's one task per step in one micro-batch, the config's
``grad_accum`` tasks per step with one micro-batch each, and mixed tasks in one micro-batch or in
``grad_accum`` grouped by length; these draw different examples, so they are compared per real token.

* padding: over ``--padding-steps`` sampled steps, the padded and real tokens of each layout
  (exact counts; no model is run);
* forward+backward: the same ``--steps`` steps (after one untimed warm-up step), each timed once
  per layout, the layouts' order rotating from step to step so machine noise hits them alike. The
  optimiser does not step, so every layout sees the same weights. Steps differ in length, so
  layouts are compared by their total time over the same steps;
* the optimiser update: ``foreach`` and ``fused`` AdamW over the same parameters and gradients,
  interleaved, ``--repeats`` times each, compared by their fastest repeat (noise only ever adds time).

    python benchmarks/trainer_step.py --config modprompt/configs/prefinetune-gemma.json --threads 2
    python benchmarks/trainer_step.py --stage pretrain --config modprompt/configs/pretrain-gemma.json --threads 2 \
        --out benchmarks/results/pretrain_step.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from machine import describe_machine, machine_text

from modprompt.arguments import data_root_arg
from modprompt.baselines.prefinetune import PrefinetuneConfig, PrefinetuneObjective, build_objective
from modprompt.modular.pretrain import ModularPromptObjective, PretrainConfig, build_model
from modprompt.training.trainer import MultiTaskTrainer
from modprompt.training.upstream import upstream_data

RESULTS = Path(__file__).parent / "results"


def forward_backward(objective: PrefinetuneObjective | ModularPromptObjective, micro_batches: list) -> float:
    """Seconds to accumulate one step's gradients over its micro-batches."""
    for p in objective.model.parameters():
        p.grad = None
    started = time.perf_counter()
    for batch, tasks in micro_batches:  # a fixed generator: routing noise, where drawn, costs the same
        loss = objective.loss(batch, tasks, 0, torch.Generator().manual_seed(0))
        (loss / len(micro_batches)).backward()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="modprompt/configs/prefinetune-gemma.json")
    parser.add_argument("--stage", choices=["prefinetune", "pretrain"], default="prefinetune", help="the config's command")
    parser.add_argument("--data", help="data root (default: the shared mirror)")
    parser.add_argument("--padding-steps", type=int, default=100)
    parser.add_argument("--steps", type=int, default=6, help="steps timed for forward+backward")
    parser.add_argument("--repeats", type=int, default=5, help="optimiser updates timed per implementation")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", default=str(RESULTS / "trainer_step.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    pretraining = args.stage == "pretrain"
    config = (PretrainConfig if pretraining else PrefinetuneConfig).from_json(args.config)
    train, _ = upstream_data(config.run_tasks(), data_root_arg(args.data), config.held_out_per_task, config.train.seed)
    accum = config.train.grad_accum
    if pretraining:
        model, encoder = build_model(config, config.run_tasks(), config.train.seed)
        objective = ModularPromptObjective(model, encoder, config.lr_router, config.lr_prompt, config.train.steps)
        t = replace(config.train, group_by_length=False)
        layouts = {
            "1 task, 1 micro-batch (MP2)": replace(t, grad_accum=1, mixed_batches=False),
            f"{accum} tasks, 1 micro-batch each": replace(t, mixed_batches=False),
            "mixed tasks, 1 micro-batch": replace(t, grad_accum=1, mixed_batches=True),
            f"mixed tasks, {accum} micro-batches grouped by length": replace(t, mixed_batches=True, group_by_length=True),
        }
    else:
        objective = build_objective(config)
        layouts = {
            "1 micro-batch": replace(config.train, grad_accum=1, group_by_length=False),
            f"{accum} micro-batches as drawn": replace(config.train, group_by_length=False),
            f"{accum} micro-batches grouped by length": replace(config.train, group_by_length=True),
        }
    trainers = {name: MultiTaskTrainer(objective, train_config, train) for name, train_config in layouts.items()}

    padding = {name: {"padded": 0, "real": 0} for name in layouts}
    for _ in range(args.padding_steps):
        for name, trainer in trainers.items():
            for batch, _tasks in trainer.micro_batches():
                padding[name]["padded"] += batch["attention_mask"].numel()
                padding[name]["real"] += int(batch["attention_mask"].sum())
    if not pretraining and len({counts["real"] for counts in padding.values()}) != 1:
        raise RuntimeError(f"the layouts hold different examples: {padding}")
    for counts in padding.values():
        counts["padded_per_step"] = counts["padded"] / args.padding_steps
        counts["real_per_step"] = counts["real"] / args.padding_steps

    for trainer in trainers.values():  # the first pass allocates buffers and gradients; not timed
        forward_backward(objective, trainer.micro_batches())
    step_times: dict[str, list[float]] = {name: [] for name in layouts}
    timed_tokens = {name: 0 for name in layouts}
    names = list(layouts)
    for step in range(args.steps):
        step_batches = {name: trainers[name].micro_batches() for name in names}
        for name in names[step % len(names) :] + names[: step % len(names)]:
            step_times[name].append(forward_backward(objective, step_batches[name]))
            timed_tokens[name] += sum(int(batch["attention_mask"].sum()) for batch, _ in step_batches[name])

    # Only a full-model step has an optimiser update worth timing; a bank's is a few hundred thousand numbers.
    optimizers = {
        impl: torch.optim.AdamW(objective.param_groups(), weight_decay=0.0, **{impl: True})
        for impl in (() if pretraining else ("foreach", "fused"))
    }
    for optimizer in optimizers.values():
        optimizer.step()  # the first step allocates the moments; it is not timed
    update_times: dict[str, list[float]] = {impl: [] for impl in optimizers}
    for _ in range(args.repeats):
        for impl, optimizer in optimizers.items():
            started = time.perf_counter()
            optimizer.step()
            update_times[impl].append(time.perf_counter() - started)

    first = names[0]

    def seconds_per_token(name: str) -> float:
        return sum(step_times[name]) / timed_tokens[name]

    result = {
        "command": "python benchmarks/trainer_step.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "backbone": config.backbone,
        "stage": "pretrain" if pretraining else "prefinetune",
        "trainable_parameters": sum(p.numel() for p in trainers[first].params.values()),
        "batch_size": config.train.batch_size,
        "max_length": config.max_length,
        "machine": describe_machine(),
        "padding_steps": args.padding_steps,
        "layouts": {
            name: {
                **padding[name],
                "forward_backward_s": step_times[name],
                "forward_backward_total_s": sum(step_times[name]),
                "timed_real_tokens": timed_tokens[name],
                # per real token: layouts of a pre-training config draw different examples
                "speedup": seconds_per_token(first) / seconds_per_token(name),
            }
            for name in names
        },
        "optimizer_update": {
            impl: {"best_s": min(times), "median_s": statistics.median(times), "all_s": times}
            for impl, times in update_times.items()
        },
    }
    if optimizers:
        result["fused_speedup"] = min(update_times["foreach"]) / min(update_times["fused"])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    out.with_suffix(".md").write_text(table)
    print(table)
    return result


def markdown(r: dict) -> str:
    layouts, update = r["layouts"], r["optimizer_update"]
    steps = len(next(iter(layouts.values()))["forward_backward_s"])
    pretraining = r.get("stage") == "pretrain"
    if pretraining:
        title = f"# One pre-training step: {r['backbone']} frozen, {r['trainable_parameters'] / 1e3:.0f}k trainable numbers"
        intro = (f"Upstream batches of {r['batch_size']} examples (at most {r['max_length']} tokens each), laid out four "
                 f"ways, on {machine_text(r['machine'])}.")  # fmt: skip
        timed = (f"forward+backward timed on {steps} steps of each layout, interleaved; the layouts draw different "
                 "examples, so the speedup is per real token")  # fmt: skip
    else:
        real = next(iter(layouts.values()))["real_per_step"]
        title = f"# One full-model training step: {r['backbone']}, {r['trainable_parameters'] / 1e6:.0f}M trainable parameters"
        intro = (f"Mixed upstream batches of {r['batch_size']} examples ({real:.0f} real tokens per step on average, "
                 f"at most {r['max_length']} per example), on {machine_text(r['machine'])}.")  # fmt: skip
        timed = f"forward+backward timed on the same {steps} steps in every layout"
    lines = [
        title,
        "",
        intro,
        "",
        f"| a step's examples as | real tokens per step | padded tokens per step | real share | forward+backward, "
        f"s per step (mean of {steps}) | speedup |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, layout in layouts.items():
        lines.append(
            f"| {name} | {layout['real_per_step']:.0f} | {layout['padded_per_step']:.0f} "
            f"| {layout['real'] / layout['padded']:.0%} | {layout['forward_backward_total_s'] / steps:.2f} "
            f"| {layout['speedup']:.2f}× |"
        )
    lines += ["", f"Padding counted over {r['padding_steps']} sampled steps; {timed}.", ""]
    if update:
        lines += [
            "| AdamW update of every parameter | fastest of repeats, s | median, s |",
            "|---|---:|---:|",
            *(f"| {impl} | {u['best_s']:.2f} | {u['median_s']:.2f} |" for impl, u in update.items()),
            f"| speedup | {r['fused_speedup']:.2f}× | |",
            "",
        ]
    lines += [f"    {r['command']}", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()

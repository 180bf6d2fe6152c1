"""`modprompt prefinetune`: parse the arguments, run :func:`modprompt.baselines.prefinetune.prefinetune`, print JSON.

Kept apart from the training code so that building the ``modprompt`` parser imports no torch.
"""

from __future__ import annotations

from modprompt.arguments import add_run_arguments, data_root_arg, print_run_summary, progress_arg


def add_parser(sub) -> None:
    p = sub.add_parser("prefinetune", help="MUPPET-style multi-task full fine-tuning on the upstream tasks (resumable)")
    add_run_arguments(
        p,
        config_help="a config JSON (e.g. modprompt/configs/prefinetune-gemma.json)",
        run_dir_help="run folder: checkpoints, history, and the model in RUN_DIR/model",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from modprompt.baselines.prefinetune import PrefinetuneConfig, prefinetune

    config = PrefinetuneConfig.from_json(args.config)
    summary = prefinetune(config, args.run_dir, data_root_arg(args.data), until=args.until, device=args.device,
                          progress=progress_arg(args))
    print_run_summary(summary)
    return 0

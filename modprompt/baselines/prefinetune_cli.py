"""`modprompt prefinetune`: parse the arguments, run :func:`modprompt.baselines.prefinetune.prefinetune`, print JSON.

Kept apart from the training code so that building the ``modprompt`` parser imports no torch.
"""

from __future__ import annotations


def add_parser(sub) -> None:
    p = sub.add_parser("prefinetune", help="MUPPET-style multi-task full fine-tuning on the upstream tasks (resumable)")
    p.add_argument("--config", required=True, help="a config JSON (e.g. modprompt/configs/prefinetune-gemma.json)")
    p.add_argument("--run-dir", required=True, help="run folder: checkpoints, history, and the model in RUN_DIR/model")
    p.add_argument("--data", help="data folder (default: $MODPROMPT_DATA or the `modprompt data` cache)")
    p.add_argument("--until", type=int, help="stop at this step with a checkpoint; run again to continue")
    p.set_defaults(func=run)


def run(args) -> int:
    from modprompt.baselines.prefinetune import PrefinetuneConfig, prefinetune
    from modprompt.cli import data_root_arg, print_json

    config = PrefinetuneConfig.from_json(args.config)
    summary = prefinetune(config, args.run_dir, data_root_arg(args.data), until=args.until)
    print_json({k: v for k, v in summary.items() if k not in ("history", "evaluations")})
    return 0

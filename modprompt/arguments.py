"""What modprompt's subcommands share on the command line: common arguments, their resolution, JSON output.

Every subcommand module (``modprompt.cli`` for tasks, data, backbone and pretrain; ``adapt.cli``,
``blackbox.cli``, ``baselines.prefinetune_cli``) imports its helpers from here, so the entry point
(:mod:`modprompt.cli`) is imported by nothing but ``python -m modprompt`` and the ``modprompt`` script.
Nothing here imports torch: building the parser stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def print_json(obj: object) -> None:
    """``obj`` as indented JSON on stdout, non-ASCII text as it is: every command's result."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def add_data_argument(p: argparse.ArgumentParser) -> None:
    """``--data``, the data folder; :func:`data_root_arg` resolves it."""
    p.add_argument("--data", help="data folder (default: $MODPROMPT_DATA or the `modprompt data` cache)")


def add_device_argument(p: argparse.ArgumentParser, when: str = "") -> None:
    """``--device`` (``when`` starts its help, e.g. "with --bank: "); :func:`modprompt.device.resolve_device`
    resolves it."""
    p.add_argument(
        "--device",
        default="auto",
        help=when + "where the model runs: auto (default: a CUDA GPU if torch sees one, else the CPU), cpu, "
        "cuda, cuda:1",
    )


def add_quiet_argument(p: argparse.ArgumentParser) -> None:
    """``--quiet``: no progress bar (:mod:`modprompt.progress`; it is shown only on a terminal anyway)."""
    p.add_argument("--quiet", action="store_true", help="no progress bar (it is shown only on a terminal anyway)")


def progress_arg(args: argparse.Namespace) -> bool | None:
    """The ``progress`` of the library calls for ``--quiet``: off, else None (shown when stderr is a terminal)."""
    return False if args.quiet else None


def add_lenient_argument(p: argparse.ArgumentParser) -> None:
    """``--lenient``: skip malformed records of the task's files (counted, logged, and in the result)."""
    p.add_argument(
        "--lenient",
        action="store_true",
        help="skip malformed records instead of stopping at the first one; how many and why are logged and "
        "reported (a spec's \"lenient\": true does the same)",
    )


def data_root_arg(value: str | None) -> Path:
    from modprompt.data.download import default_data_root

    return Path(value) if value else default_data_root()


def add_run_arguments(p: argparse.ArgumentParser, config_help: str, run_dir_help: str) -> None:
    """The arguments of a resumable multi-task run on the upstream tasks (``pretrain``, ``prefinetune``)."""
    p.add_argument("--config", required=True, help=config_help)
    p.add_argument("--run-dir", required=True, help=run_dir_help)
    add_data_argument(p)
    p.add_argument("--until", type=int, help="stop at this step with a checkpoint; run again to continue")
    add_device_argument(p)
    add_quiet_argument(p)


def print_run_summary(summary: dict) -> None:
    """A multi-task run's summary without its per-step history and evaluations."""
    print_json({k: v for k, v in summary.items() if k not in ("history", "evaluations")})

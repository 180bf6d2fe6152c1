"""``modprompt serve`` and ``modprompt bbt``: serve a frozen model, and tune against it (or in-process).

    export MODPROMPT_API_KEY=$(python -c "import secrets; print(secrets.token_urlsafe(32))")
    modprompt serve --bank modprompt/banks/gemma-3-270m --port 8000                     # terminal 1
    modprompt bbt --server http://127.0.0.1:8000 --bank-copy modprompt/banks/gemma-3-270m --task eprstmt \
        --method mp2-bb --seed 0 --preset cpu                                           # terminal 2
    modprompt bbt --bank modprompt/banks/gemma-3-270m --task eprstmt --method bbtv2 --seed 0   # no server

Heavy imports (torch, fastapi, skopt) happen inside the run functions, so ``modprompt --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging

from modprompt.arguments import (
    add_data_argument,
    add_device_argument,
    add_lenient_argument,
    add_quiet_argument,
    progress_arg,
)
from modprompt.blackbox.config import METHODS, PRESETS, TuneConfig
from modprompt.blackbox.params import Limits
from modprompt.config_flags import add_dataclass_flags, dataclass_flag_values, flag_fields

logger = logging.getLogger(__name__)

#: TuneConfig fields that are not flags of their own: the method is asked for with its choices
_NOT_FLAGS = ("method",)
#: every other TuneConfig field is a flag of the same name (dashes for underscores), help from the field
_FLAGS = [f.name for f in flag_fields(TuneConfig, exclude=_NOT_FLAGS)]


def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a frozen backbone and prompt bank over HTTP for black-box tuning",
        description="API keys come from --api-key-file (one per line) or $MODPROMPT_API_KEY (comma-separated); "
        "clients send them as 'Authorization: Bearer KEY'.",
    )
    p.add_argument("--bank", required=True, help="the pre-trained bank folder")
    p.add_argument("--backbone", help="a local model folder or 'gemma-3-270m' (default: the bank's)")
    p.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1 (loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key-file", help="file with the accepted keys (default: $MODPROMPT_API_KEY)")
    p.add_argument("--max-length", type=int, default=256, help="tokens per example (only the passage is cut)")
    p.add_argument("--batch-size", type=int, default=16,
                   help="most examples per forward pass (an example set is cut into chunks by length)")
    p.add_argument("--cache-mb", type=int, default=512, help="layer-cache bound in MiB (0: no cache)")
    p.add_argument("--projection-mb", type=int, default=512, help="bound on kept random projections in MiB")
    p.add_argument("--bound", type=float, default=5.0, help="largest accepted |value| of a router logit or vector")
    add_dataclass_flags(p.add_argument_group("what one request may carry"), Limits)
    p.add_argument("--threads", type=int, help="torch CPU threads for the model (default: torch's choice)")
    add_device_argument(p)
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    from modprompt.blackbox.server import load_api_keys, serve

    _set_threads(args.threads)
    serve(
        args.bank,
        args.backbone,
        host=args.host,
        port=args.port,
        api_keys=load_api_keys(args.api_key_file),
        limits=limits_arg(args),
        max_length=args.max_length,
        batch_size=args.batch_size,
        bound=args.bound,
        cache_bytes=args.cache_mb * 2**20,
        projection_bytes=args.projection_mb * 2**20,
        device=args.device,
    )
    return 0


def limits_arg(args: argparse.Namespace) -> Limits:
    """The request limits that ``serve``'s flags give (one flag per :class:`Limits` field; the rest default)."""
    return Limits(**dataclass_flag_values(args, [f.name for f in flag_fields(Limits)]))


def add_bbt_parser(sub) -> None:
    p = sub.add_parser(
        "bbt",
        help="black-box tuning (mp2-bb, bbt, bbtv2) against a served model or in-process; prints a JSON result",
        description="Tunes on the task's k-shot train split, selects on its dev split, scores the test split. "
        "The state is saved after every generation: run the same command again to resume.",
    )
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--server", help="URL of `modprompt serve` (key: $MODPROMPT_API_KEY or --api-key-file)")
    where.add_argument("--bank", help="tune in-process on this bank instead of calling a server")
    p.add_argument("--backbone", help="with --bank: a local model folder or 'gemma-3-270m' (default: the bank's)")
    p.add_argument(
        "--bank-copy",
        help="with --server: a local copy of the served bank; only its prompt modules are read, to start mp2-bb's "
        "stage 2 at their routed mix as MP2's script does (checked against the server once)",
    )
    task = p.add_mutually_exclusive_group(required=True)
    task.add_argument("--task", help="a downstream task (`modprompt tasks --role downstream`)")
    task.add_argument("--task-spec", help="a user task spec JSON (see examples/own_task)")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument(
        "--preset",
        choices=["mp2", "cpu"],
        default="mp2",
        help="mp2: MP2's black-box script's settings; cpu: a 2-core-CPU budget (380 evaluations: 12%% of MP2's, "
        "4.5%% of BBT's and BBTv2's 8,000); flags override",
    )
    add_data_argument(p)
    add_lenient_argument(p)
    p.add_argument("--state", help="state file (default runs/blackbox/METHOD-TASK-seedS.state); resumed if present")
    p.add_argument("--out", help="also write the full result (with the tuned numbers and history) here")
    p.add_argument("--api-key-file", help="file whose first line is the key (default: $MODPROMPT_API_KEY)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for one answer")
    p.add_argument("--retries", type=int, default=5, help="retries of a failed call (5xx, connection)")
    p.add_argument("--max-length", type=int, default=256, help="with --bank: tokens per example")
    p.add_argument("--threads", type=int, help="with --bank: torch CPU threads (default: torch's choice)")
    add_quiet_argument(p)
    add_device_argument(p, "with --bank: ")
    cpu = {name: f"--preset cpu: {value}" for name, value in PRESETS["cpu"].items()}
    add_dataclass_flags(p.add_argument_group("settings (TuneConfig; the defaults are --preset mp2's)"), TuneConfig,
                        _FLAGS, field_notes=cpu)  # fmt: skip
    p.set_defaults(func=run_bbt)


def run_bbt(args: argparse.Namespace) -> int:
    from pathlib import Path

    from modprompt.arguments import data_root_arg, print_json
    from modprompt.blackbox.objective import InProcessObjective, RemoteObjective
    from modprompt.blackbox.tune import load_bank_modules, tune_task
    from modprompt.data.readers import collect_skips, skip_summary

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would bury the progress
    config = TuneConfig.preset(args.preset, args.method, **dataclass_flag_values(args, _FLAGS))
    if args.task_spec:
        from modprompt.data.spec import load_spec

        args.task = load_spec(args.task_spec, replace=True).name
    state = args.state or f"runs/blackbox/{args.method}-{args.task}-seed{config.seed}.state"
    if args.bank_copy and not args.server:
        raise SystemExit("--bank-copy goes with --server (in-process, --bank's own modules are used)")
    modules = load_bank_modules(args.bank_copy) if args.bank_copy else None
    if args.server:
        from modprompt.blackbox.client import Client

        client = Client(args.server, _client_key(args.api_key_file), timeout=args.timeout, retries=args.retries)
        objective = RemoteObjective(client)
    else:
        from modprompt.blackbox.scoring import Scorer

        _set_threads(args.threads)
        scorer = Scorer.from_bank(args.bank, args.backbone, args.device, max_length=args.max_length)
        objective = InProcessObjective(scorer)
    with collect_skips() as skipped:
        result = tune_task(objective, args.task, data_root_arg(args.data), config, state, modules, lenient=args.lenient,
                           progress=progress_arg(args))
    result["skipped"] = skip_summary(skipped)
    result["server"] = args.server or "in-process"
    if args.server:
        result["http"] = objective.client.stats.to_dict()
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    print_json({k: v for k, v in result.items() if k not in ("history", "parameters")})
    return 0


def _client_key(key_file: str | None) -> str | None:
    import os
    from pathlib import Path

    from modprompt.blackbox.client import API_KEY_ENV

    if key_file:
        lines = [line.strip() for line in Path(key_file).read_text().splitlines() if line.strip()]
        return lines[0] if lines else None
    key = os.environ.get(API_KEY_ENV, "").split(",")[0].strip()
    if not key:
        logger.warning("no API key ($%s or --api-key-file); the server will answer 401", API_KEY_ENV)
    return key or None


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)

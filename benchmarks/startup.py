"""Start-up time of the ``modprompt`` command: ``--help``, an ``adapt`` that fails on its bank, and ``tasks``.

A command that fails on its arguments should say so within about 2 seconds. Each command is timed by
``hyperfine`` (``apt-get install hyperfine``), a warm-up run then ``--runs`` runs, on the working tree and on
the tree of an earlier commit (``--before``, checked out into a temporary git worktree), both through this
environment's ``modprompt`` script with ``PYTHONPATH`` set to the tree, alternating tree by tree so that
the machine's load falls on both alike. Results: ``results/startup.{json,md}`` (the median and the range).

    python benchmarks/startup.py --before 5bbc3b8 --data ../shared/data/raw --runs 5
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from machine import describe_machine

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
#: name -> the arguments of ``modprompt`` it times
COMMANDS = {
    "help": ["--help"],
    "adapt, missing bank": ["adapt", "--bank", "nowhere", "--task", "eprstmt", "--method", "route-only"],
    "tasks": ["tasks", "--data", "{data}"],
}


def time_command(tree: Path, argv: list[str], runs: int) -> dict:
    """hyperfine's times (seconds) of ``modprompt ARGV`` with ``tree`` first on the path; failures are timed too."""
    command = shlex.join([str(Path(sys.executable).with_name("modprompt")), *argv])
    with tempfile.NamedTemporaryFile(suffix=".json") as export:
        subprocess.run(
            ["hyperfine", "--warmup", "1", "--runs", str(runs), "--ignore-failure", "--style", "none",
             "--export-json", export.name, command],
            check=True, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        result = json.loads(Path(export.name).read_text())["results"][0]
    return {"median_s": result["median"], "min_s": result["min"], "max_s": result["max"], "runs": len(result["times"]),
            "exit_codes": sorted(set(result["exit_codes"]))}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="the commit to compare with (e.g. the one before the change)")
    p.add_argument("--data", required=True, help="the data folder `modprompt tasks` reads")
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--name", default="startup")
    args = p.parse_args()
    if shutil.which("hyperfine") is None:
        raise SystemExit("needs hyperfine (apt-get install hyperfine)")
    before = Path(tempfile.mkdtemp()) / "before"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(before), args.before], check=True)
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            check=True).stdout.strip()  # fmt: skip
    data = str(Path(args.data).resolve())
    rows = []
    try:
        for name, argv in COMMANDS.items():
            argv = [a.format(data=data) for a in argv]
            row = {"command": name, "argv": ["modprompt", *argv]}
            row["before"] = time_command(before, argv, args.runs)
            row["after"] = time_command(REPO, argv, args.runs)
            rows.append(row)
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(before)], check=True)
    result = {"before": args.before, "after": f"{commit} and the working tree", "runs": args.runs,
              "command": "python benchmarks/startup.py " + shlex.join(sys.argv[1:]), "machine": describe_machine(),
              "load_average": os.getloadavg(), "results": rows}  # fmt: skip
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table(result))
    print(table(result))


def table(result: dict) -> str:
    """The Markdown table of a result: each command's median (and range) before and after."""
    lines = [
        "# Start-up of the modprompt command",
        "",
        f"Command: `{result['command']}`: hyperfine, 1 warm-up run and {result['runs']} timed runs per command "
        f"and tree; before: commit {result['before']}, after: {result['after']}. Machine: {result['machine']['cpu']}, "
        f"{result['machine']['cpus']} CPUs, load average {result['load_average'][0]:.1f} when it ended.",
        "",
        "| command | before: median (range) | after: median (range) | exit code |",
        "|---|---:|---:|---:|",
    ]
    for row in result["results"]:
        cells = [f"{row[k]['median_s']:.2f} s ({row[k]['min_s']:.2f}–{row[k]['max_s']:.2f})" for k in ("before", "after")]
        codes = ", ".join(map(str, row["after"]["exit_codes"]))
        lines.append(f"| `{shlex.join(row['argv'])}` | {cells[0]} | {cells[1]} | {codes} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()

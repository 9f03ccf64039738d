"""Start-up time of the meta commands, against the interpreter's own start and an ``import torch``
measured in the same run on the same machine.

    .venv/bin/python benchmarks/startup.py [--repeat 10]

Each command runs in a fresh process ``--repeat`` times (after one untimed warm-up run, so that
the page cache is warm for all of them); the table shows the median and the fastest run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table


def mer_command() -> list[str]:
    """The console script beside this interpreter (what a user runs), else ``python -m mercli``."""
    script = Path(sys.executable).with_name("mer")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mercli"]


def timed_runs(command: list[str], repeat: int, cwd: str) -> list[float]:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MER_")}
    durations = []
    for attempt in range(repeat + 1):
        start = time.perf_counter()
        subprocess.run(command, cwd=cwd, env=environment, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt:  # the first run only warms the cache
            durations.append(time.perf_counter() - start)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per command (default 10)")
    args = parser.parse_args()

    mer = mer_command()
    cases = [
        ("python -c pass", [sys.executable, "-c", "pass"], "reference: interpreter start"),
        ("python -c 'import torch'", [sys.executable, "-c", "import torch"], "reference: what mer avoids"),
        ("mer --help", [*mer, "--help"], ""),
        ("mer plugins", [*mer, "plugins"], ""),
        ("mer plugins --json", [*mer, "plugins", "--json"], ""),
    ]
    table = Table(title=f"Start-up time, {args.repeat} runs each (Python {sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    for column in ("command", "median (s)", "min (s)", "note"):
        table.add_column(column, justify="right" if "(s)" in column else "left")
    with tempfile.TemporaryDirectory() as empty:  # no mer.toml to find: the defaults
        for label, command, note in cases:
            durations = timed_runs(command, args.repeat, empty)
            table.add_row(label, f"{statistics.median(durations):.3f}", f"{min(durations):.3f}", note)
    Console().print(table)


if __name__ == "__main__":
    main()

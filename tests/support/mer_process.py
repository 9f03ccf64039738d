"""Run the ``mer`` command line in a child process, as a shell would: for tests of exit statuses,
of what goes to stdout and what to stderr, and of what a fresh interpreter imports."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def mer_environment(**changes: str | None) -> dict[str, str]:
    """This process's environment without any ``MER_*`` setting of the developer's shell, with a wide
    terminal (so that rich tables do not wrap), and with ``changes`` applied (``None`` removes)."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MER_")}
    environment["COLUMNS"] = "200"
    for key, value in changes.items():
        if value is None:
            environment.pop(key, None)
        else:
            environment[key] = value
    return environment


def with_site(site: Path, **changes: str | None) -> dict[str, str]:
    """:func:`mer_environment` with ``site`` (a folder of fake distributions) first on the path,
    ahead of the code under test when that comes from PYTHONPATH too (a worktree)."""
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    return mer_environment(PYTHONPATH=path, **changes)


def run_mer(*args: str, cwd: Path, env: dict[str, str] | None = None,
            python_options: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    """``python -m mercli ARGS`` with this interpreter, in ``cwd``."""
    return subprocess.run(
        [sys.executable, *python_options, "-m", "mercli", *args],
        cwd=cwd, env=env if env is not None else mer_environment(),
        capture_output=True, text=True, timeout=300,
    )


def one_error_line(result: subprocess.CompletedProcess[str]) -> str:
    """The single ``error: ...`` line a failed command must print, asserting there is no traceback."""
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def error_document(stdout: str, line: str, exit_code: int) -> dict:
    """The one JSON document that ``--json`` prints on stdout for an error: the same message as
    the stderr ``line`` and the exit status."""
    import json

    assert stdout.endswith("\n") and stdout.count("\n") == 1, stdout
    document = json.loads(stdout)
    assert document == {"error": line.removeprefix("error: "), "exit_code": exit_code}, document
    return document

"""SIGTERM stops a command as Ctrl-C does.

Batch schedulers (SLURM at a time limit, ``scancel``), ``timeout`` and ``kill`` send SIGTERM, whose
default action ends the process at once: worker processes were left running and the user got no
word. Forwarded to the Ctrl-C machinery (:mod:`mercli.workers`), it gets the same clean stop.
"""

from __future__ import annotations

import os
import signal

_terminated = False


def stop_on_sigterm_as_on_ctrl_c() -> None:
    """Make SIGTERM (``kill``, ``timeout``, a batch scheduler's time limit) stop the command the way
    Ctrl-C does, through whichever Ctrl-C handler is in place at that moment: workers are stopped,
    unfinished files removed, a clean-up under way is not cut short. :func:`terminated` tells the
    two apart for the exit status."""

    def handler(signum: int, frame: object) -> None:
        global _terminated
        _terminated = True
        os.kill(os.getpid(), signal.SIGINT)

    signal.signal(signal.SIGTERM, handler)


def terminated() -> bool:
    """Whether the interrupt being handled came from SIGTERM rather than Ctrl-C."""
    return _terminated

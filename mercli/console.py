"""Where output goes: human output (rich tables, progress) on stderr, JSON on stdout."""

from __future__ import annotations

import errno
import os
import sys
import threading
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Callable, Iterator, TextIO

from rich.console import Console
from rich.markup import escape
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, Task, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

from mercli.atomic import json_text
from mercli.errors import OutputError
from mercli.vocabulary import one_line


class HumanConsole(Console):
    """Rich's console on stderr, but a stream that fails is no crash. A reader that went away:
    rich's own answer points stdout (not this console's stream) at /dev/null and exits 1 from
    whichever thread wrote. A stream that cannot be written (``2>/dev/full``, a log on a full
    disk): rich raises, and the stage would lose work it had finished for want of a progress line."""

    def _check_buffer(self) -> None:
        """Rich's writing of what was printed; past a failed write, print nothing more (the stage
        goes on to its own exit status, which is all the user can still be told). Rich has no
        public hook for it; the stderr-on-a-full-disk tests fail if the method is renamed."""
        try:
            super()._check_buffer()
        except BrokenPipeError:
            raise
        except OSError:
            self.quiet = True
            del self._buffer[:]

    def on_broken_pipe(self) -> None:
        """Print nothing more; in the main thread, stop the command as for a closed stdout
        (:class:`mercli.cli.MerGroup`); in rich's refresh thread, just go quiet: the stage goes on
        and finishes its work, which the user can no longer watch."""
        self.quiet = True
        if threading.current_thread() is threading.main_thread():
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))


#: Everything meant for a person goes here, so that stdout stays machine-readable.
stderr = HumanConsole(stderr=True)

#: Whether progress bars and notes are shown: yes for the command, no inside a call of the Python API
#: (:mod:`mercli.api`) unless it asks for them, so that a notebook stays quiet.
_shown: ContextVar[bool] = ContextVar("mer_progress_shown", default=True)


@contextmanager
def progress_shown(shown: bool) -> Iterator[None]:
    """Show (or hide) the progress bars and notes of the stages run inside."""
    token = _shown.set(shown)
    try:
        yield
    finally:
        _shown.reset(token)


def showing() -> bool:
    """Whether a stage shows its progress now (decide in the calling thread: worker threads do not
    see the switch)."""
    return _shown.get()


def ignore(*_args: Any) -> None:
    """The progress callback of a stage that shows none."""


#: Whether the process started with file descriptor 1 closed (``mer ... >&-``); see
#: :func:`reserve_standard_streams`.
_started_without_stdout = False


def reserve_standard_streams() -> None:
    """Open /dev/null on those of file descriptors 0-2 the process started without (``mer ...
    2>&-``, a job whose scheduler closed them). Left closed, the next file mer opens takes the
    number: what a library writes to file descriptor 2 (MediaPipe's and TFLite's start-up lines)
    would land in a feature file, and the libraries that flush ``sys.stderr`` fail on every clip.
    A closed stdout is still reported when a JSON document is owed there (:func:`emit_json`)."""
    global _started_without_stdout
    for number, name in enumerate(("stdin", "stdout", "stderr")):
        try:
            os.fstat(number)
            continue
        except OSError:
            pass
        devnull = os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one, as the lower are open
        if devnull != number:
            os.dup2(devnull, number)
            os.close(devnull)
        os.set_inheritable(number, True)  # as a standard stream is: worker processes get it too
        setattr(sys, name, open(number, "r" if number == 0 else "w", encoding="utf-8", closefd=False))
        _started_without_stdout = _started_without_stdout or number == 1


def emit_json(document: Any) -> None:
    """Write one JSON document (one line) to stdout; a stdout that is closed or cannot be written
    is an :class:`OutputError`, after which nothing more goes there."""
    line = json_text(document) + "\n"
    if sys.stdout is None or _started_without_stdout:
        raise OutputError("standard output is closed: the JSON document cannot be written")
    try:
        sys.stdout.write(line)
        sys.stdout.flush()
    except BrokenPipeError:
        raise
    except OSError as problem:
        to_devnull(sys.stdout)  # else Python's flush at exit fails on the same text once more
        raise OutputError(f"standard output cannot be written: {problem.strerror or problem}") from problem


def print_nothing_more() -> None:
    """The reader of stdout or stderr has gone (``mer ... | head -1``): point both at /dev/null, so
    that nothing more is written, not even by Python's flush at exit (which would report the
    broken pipe once more, as "Exception ignored ..."). The recipe of Python's documentation
    (signal module, "Note on SIGPIPE")."""
    stderr.quiet = True
    to_devnull(sys.stdout, sys.stderr)


def to_devnull(*streams: TextIO | None) -> None:
    """Point the file descriptors of ``streams`` (those that exist) at /dev/null."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for stream in streams:
            if stream is not None:
                os.dup2(devnull, stream.fileno())
    finally:
        os.close(devnull)


def error(message: str) -> None:
    """Print ``error: MESSAGE`` as one line: messages quoted from elsewhere (a library's exception)
    may hold line breaks, which are folded into spaces."""
    stderr.print(f"[bold red]error:[/] {escape(one_line(message))}", highlight=False, soft_wrap=True)


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``3.2 clips/s``."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:.2f} {self.unit}/s" if speed else f"- {self.unit}/s")


@contextmanager
def progress(total: int, description: str, unit: str = "clips") -> Iterator[Callable[[], None]]:
    """A progress bar on stderr with rate and ETA; yields the function that advances it by one."""
    if not showing():
        yield ignore
        return
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), RateColumn(unit),
               TimeElapsedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=stderr) as bar:
        task = bar.add_task(description, total=total)
        yield lambda: bar.advance(task)


@contextmanager
def fold_progress() -> Iterator[Callable[[int, int, int, dict[str, Any]], None]]:
    """A rich progress bar on stderr, one line per fold, showing the loss and validation WAF."""
    if not showing():
        yield ignore
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr) as bar:
        tasks: dict[int, Any] = {}

        def update(fold: int, epoch: int, total: int, record: dict[str, Any]) -> None:
            if fold not in tasks:
                tasks[fold] = bar.add_task(f"fold {fold}", total=total)
            bar.update(tasks[fold], completed=epoch, description=(
                f"fold {fold}: loss {record['train_loss']:.3f}  val WAF {record['val_waf']:.3f}"))

        yield update

"""Exceptions with a one-line message for the user, and the exit status each one maps to."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for a command stopped by Ctrl-C
EXIT_TERMINATED = 143  # ... and for one stopped by SIGTERM (kill, timeout, a batch scheduler's time limit)
EXIT_READER_GONE = 141  # ... and for one whose output pipe was closed by its reader (SIGPIPE: `mer ... | head -1`)


class MerError(Exception):
    """An error the user can act on; its message is printed as one line, without a traceback."""

    exit_code = EXIT_USAGE


class ConfigError(MerError):
    """A configuration file, environment variable or option that cannot be used."""


class UsageError(MerError):
    """Options that do not go together, or one that needs another (the command prints its usage
    line too)."""


class PluginError(MerError):
    """A plug-in that failed to load or that clashes with another one."""


class DataError(MerError):
    """A labels file, clip folder or stored artefact that cannot be used as it is."""


class UnwritableError(MerError):
    """A file mer must write cannot be written (a read-only or full disk, a missing folder, no
    permission). It is the user's to fix, not one item's failure: the run stops at once. Raised
    before any item was processed: exit 2."""


class UnwritableMidway(UnwritableError):
    """The same, in the middle of a run: the items finished before are kept (every file is written
    atomically) and running the command again resumes: exit 1."""

    exit_code = EXIT_SOME_FAILED


class OutputError(MerError):
    """Standard output cannot take what the command prints there (closed, or on a full disk); the
    work the command did is kept, but its reader did not get the result. A reader that went away
    (a closed pipe) is not this error: that ends the command quietly, as SIGPIPE would."""


def unwritable_message(path: Path | str | None, error: OSError) -> str:
    """``<path>: <reason>``, the path being what mer was writing (``error.filename`` may be a
    temporary file beside it, or missing: a full disk is often reported without one)."""
    reason = error.strerror or str(error) or type(error).__name__
    where = path if path is not None else error.filename
    return f"{where}: {reason}" if where is not None else reason


@contextmanager
def writing(path: Path, midway: bool = False) -> Iterator[None]:
    """Turn an OSError raised while writing ``path`` into :class:`UnwritableError` (or, with
    ``midway``, :class:`UnwritableMidway`), which per-item error handling lets through."""
    try:
        yield
    except OSError as error:
        raise (UnwritableMidway if midway else UnwritableError)(unwritable_message(path, error)) from error

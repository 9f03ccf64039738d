"""Exceptions with a one-line message for the user, and the exit status each one maps to."""

from __future__ import annotations

EXIT_OK = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for a command stopped by Ctrl-C


class MerError(Exception):
    """An error the user can act on; its message is printed as one line, without a traceback."""

    exit_code = EXIT_USAGE


class ConfigError(MerError):
    """A configuration file, environment variable or option that cannot be used."""


class PluginError(MerError):
    """A plug-in that failed to load or that clashes with another one."""


class DataError(MerError):
    """A labels file, clip folder or stored artefact that cannot be used as it is."""

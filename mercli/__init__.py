"""mer: multimodal video emotion recognition with reasoning priors.

From Python, :mod:`mercli.api` has every stage as a function (``api.extract``, ``api.train``, ...)
and ``mercli.load_run(path)`` a trained run to predict with; they are imported on first use, so
that ``import mercli`` and ``mer --help`` stay light.
"""

from __future__ import annotations

from typing import Any

from mercli.version import __version__

__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from mercli.api import load_run

        return load_run
    raise AttributeError(f"module 'mercli' has no attribute {name!r}")

"""mer: multimodal video emotion recognition with reasoning priors.

``mercli.load_run(path)`` gives a trained run to predict with from Python (:mod:`mercli.api`); it
is imported on first use, so that ``import mercli`` and ``mer --help`` stay light.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["load_run"]


def __getattr__(name: str) -> Any:
    if name == "load_run":
        from mercli.api import load_run

        return load_run
    raise AttributeError(f"module 'mercli' has no attribute {name!r}")

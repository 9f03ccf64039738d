"""The workspace: the folder every stage reads from and writes to.

Layout: ``mer.toml`` (optional), ``features/`` (one folder per feature set), ``transcripts/``
(speech recognised by the extract stage), ``reasoning/`` (one folder per reasoner and model),
``runs/`` (one folder per training run), ``corrupted/`` (``mer eval --corrupt``: corrupted copies of
clips and their features, one folder per corruption and level).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mercli.config import CONFIG_NAME


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def locate(cls, explicit: Path | None = None, start: Path | None = None) -> "Workspace":
        """``explicit`` if given; else the nearest folder from ``start`` upwards holding a
        ``mer.toml``; else ``start`` (the current folder)."""
        if explicit is not None:
            return cls(explicit.resolve())
        start = (start or Path.cwd()).resolve()
        for folder in (start, *start.parents):
            if (folder / CONFIG_NAME).is_file():
                return cls(folder)
        return cls(start)

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def features(self) -> Path:
        return self.root / "features"

    @property
    def reasoning(self) -> Path:
        return self.root / "reasoning"

    @property
    def transcripts(self) -> Path:
        return self.root / "transcripts"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

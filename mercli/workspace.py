"""The workspace: the folder every stage reads from and writes to.

Layout: ``mer.toml`` (optional), ``features/`` (one folder per feature set), ``transcripts/``
(speech recognised by the extract stage), ``reasoning/`` (one folder per reasoner and model),
``runs/`` (one folder per training run), ``.scratch/`` (temporary work of running commands).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mercli.config import CONFIG_NAME
from mercli.errors import writing


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

    @property
    def scratch(self) -> Path:
        """Temporary folders of running commands, per machine (a workspace may be shared)."""
        return self.root / ".scratch" / socket.gethostname()

    def scratch_folder(self, purpose: str) -> Path:
        """A new folder ``<purpose>-<pid>-<random>`` for this process's temporary work, which it
        removes when done. Folders left by processes of this machine that no longer run (killed
        with ``kill -9``) are removed first; a running process's are never touched."""
        with writing(self.scratch):
            self.scratch.mkdir(parents=True, exist_ok=True)
        for folder in self.scratch.iterdir():
            owner = re.fullmatch(r"[a-z]+-(\d+)-.+", folder.name)
            if owner and not _running(int(owner[1])):
                shutil.rmtree(folder, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{purpose}-{os.getpid()}-", dir=self.scratch))


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        pass
    return True

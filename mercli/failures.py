"""Per-clip failure records: why a clip could not be processed, kept until it succeeds.

Failures are recorded, never stored as results, and one file per clip lets shards on several
machines record them without a shared file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mercli.atomic import write_json
from mercli.clips import validate_clip_id
from mercli.errors import DataError
from mercli.vocabulary import one_line

FAILURES_FOLDER = "_failures"


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Failure:
    """One clip that a stage could not process, and why (``details``: path, stage, encoder...)."""

    clip: str
    reason: str
    time: str
    details: dict[str, Any] = field(default_factory=dict)


class FailureLog:
    """Per-clip failure records of one stage, ``<root>/_failures/<clip>.json``, written atomically:
    one file per clip, so that shards on several machines record failures without a shared file.
    The traces store keeps its own the same way (:mod:`mercli.traces`)."""

    def __init__(self, root: Path) -> None:
        self.folder = root / FAILURES_FOLDER

    def _file(self, clip_id: str) -> Path:
        return self.folder / f"{validate_clip_id(clip_id, str(self.folder))}.json"

    def record(self, clip_id: str, reason: str, **details: Any) -> Failure:
        """Record (or replace) the failure of ``clip_id``; the reason is kept to one line."""
        failure = Failure(clip_id, one_line(reason), utc_now(), details)
        write_json(self._file(clip_id), {"clip": failure.clip, "reason": failure.reason,
                                         "time": failure.time, **details})
        return failure

    def clear(self, clip_id: str) -> None:
        self._file(clip_id).unlink(missing_ok=True)

    def get(self, clip_id: str) -> Failure | None:
        path = self._file(clip_id)
        return self._read(path) if path.exists() else None

    def all(self) -> list[Failure]:
        if not self.folder.is_dir():
            return []
        return [self._read(p) for p in sorted(self.folder.glob("*.json")) if not p.name.startswith(".")]

    @staticmethod
    def _read(path: Path) -> Failure:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            return Failure(record.pop("clip"), record.pop("reason"), record.pop("time"), record)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as problem:
            raise DataError(f"{path}: unreadable failure record ({problem!r})") from None

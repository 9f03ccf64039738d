"""Transcripts made by speech recognition, kept so that a re-run or a later stage does not
recognise the same clip twice. Transcripts from a labels file are never stored here: the labels
file stays their source."""

from __future__ import annotations

import json
from pathlib import Path

from mercli.atomic import write_json
from mercli.clips import validate_clip_id


class TranscriptStore:
    """One JSON file per clip under ``root``: ``{"text": ..., "source": "<recogniser>:<weights>"}``."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, clip_id: str) -> Path:
        validate_clip_id(clip_id, "transcript store")
        return self.root / f"{clip_id}.json"

    def read(self, clip_id: str, source: str) -> str | None:
        """The stored transcript if it was made by ``source``; ``None`` when absent, unreadable or
        made by another recogniser."""
        try:
            document = json.loads(self._path(clip_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(document, dict) or document.get("source") != source:
            return None
        text = document.get("text")
        return text if isinstance(text, str) else None

    def latest(self, clip_id: str) -> str | None:
        """The stored transcript whichever recogniser made it (reasoners take any), or ``None``."""
        try:
            document = json.loads(self._path(clip_id).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        text = document.get("text") if isinstance(document, dict) else None
        return text if isinstance(text, str) else None

    def write(self, clip_id: str, source: str, text: str) -> None:
        write_json(self._path(clip_id), {"text": text, "source": source})

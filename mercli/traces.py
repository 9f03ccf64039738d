"""The reasoning-trace store: one validated JSON per clip and source under ``<workspace>/reasoning/``.

A source is a reasoner, a model and a prompt version, and whether labels were shown to it; each
has its own folder ``reasoning/<reasoner>/<model>/<prompt_version>/`` (``<prompt_version>+labels``
for label-conditioned traces, so that they are never served from the cache of a clean run). Model
names become folder names with ``/`` written as ``--`` and any other character outside
``A-Z a-z 0-9 . _ -`` as ``_``; ``source.json`` in the folder keeps the exact names, and a second
source that maps to the same folder is refused. The folder holds ``<clip>.trace.json`` (a trace, see
:mod:`mercli.trace_model`) and ``_failures/<clip>.json`` (why a clip has no trace; never a trace); the
``.trace.json`` suffix keeps every clip id clear of ``source.json``.

A trace is reused only when its ``provenance.content_hash`` matches the sha256 of the clip file (and,
for reasoners that read extracted features, ``provenance.features`` names the same feature sets), so
a re-run costs nothing and a changed clip is asked again.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from mercli.atomic import write_json
from mercli.clips import validate_clip_id
from mercli.errors import DataError
from mercli.failures import Failure, FailureLog
from mercli.trace_model import trace_problems

SOURCE_NAME = "source.json"
TRACE_SUFFIX = ".trace.json"
LABELS_SUFFIX = "+labels"

def validate_trace(document: Any) -> list[str]:
    """Every problem of ``document`` as a trace (:mod:`mercli.trace_model`); empty when valid."""
    return trace_problems(document)


def content_hash(path: Path) -> str:
    """sha256 of a clip file, read in 1 MiB pieces so that long videos never sit in memory."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for piece in iter(lambda: handle.read(1 << 20), b""):
                digest.update(piece)
    except OSError as problem:
        raise DataError(f"{path}: cannot read the clip ({problem.strerror or problem})") from None
    return digest.hexdigest()


# --- sources and the store --------------------------------------------------------------------


def _folder_part(name: str, what: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"a trace source needs a non-empty {what}, got {name!r}")
    part = re.sub(r"[^A-Za-z0-9._-]", "_", name.strip().replace("/", "--"))
    if part.startswith("."):
        raise DataError(f"{what} {name!r} cannot start with '.'")
    return part


@dataclass(frozen=True)
class TraceSource:
    """Who wrote a trace: the reasoner plug-in, its model, the prompt version, and whether the
    clip's label was shown to it."""

    reasoner: str
    model: str
    prompt_version: str
    label_conditioned: bool = False

    @property
    def relative_path(self) -> Path:
        prompt = _folder_part(self.prompt_version, "prompt version") + (LABELS_SUFFIX if self.label_conditioned else "")
        return Path(_folder_part(self.reasoner, "reasoner"), _folder_part(self.model, "model"), prompt)

    @classmethod
    def from_json(cls, document: Any) -> "TraceSource":
        names = [f.name for f in fields(cls)]
        if not isinstance(document, dict) or sorted(document) != sorted(names):
            raise DataError(f"a trace source must be an object with exactly {', '.join(names)}")
        if not isinstance(document["label_conditioned"], bool):
            raise DataError("'label_conditioned' must be true or false")
        if not all(isinstance(document[name], str) for name in ("reasoner", "model", "prompt_version")):
            raise DataError("'reasoner', 'model' and 'prompt_version' must be strings")
        return cls(**document)

    def matches(self, provenance: dict[str, Any]) -> bool:
        return all(provenance[key] == value for key, value in asdict(self).items())


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise DataError(f"{path}: unreadable {what} ({problem})") from None


class TraceStore:
    """The traces of one source. Use :meth:`open`; the folder is created on first use."""

    def __init__(self, folder: Path, source: TraceSource) -> None:
        self.folder = folder
        self.source = source
        self._failures = FailureLog(folder)

    def __repr__(self) -> str:
        return f"TraceStore({self.folder})"

    @classmethod
    def open(cls, reasoning_root: Path, source: TraceSource) -> "TraceStore":
        folder = reasoning_root / source.relative_path
        marker = folder / SOURCE_NAME
        if marker.exists():
            stored = cls._read_source(marker)
            if stored != source:
                raise DataError(f"{marker}: this folder belongs to {stored}, not {source}")
        else:
            write_json(marker, asdict(source))
        return cls(folder, source)

    @staticmethod
    def _read_source(marker: Path) -> TraceSource:
        document = _read_json(marker, "trace source")
        try:
            return TraceSource.from_json(document)
        except DataError as problem:
            raise DataError(f"{marker}: {problem}") from None

    def _file(self, clip_id: str) -> Path:
        return self.folder / f"{validate_clip_id(clip_id, str(self.folder))}{TRACE_SUFFIX}"

    def clip_ids(self) -> list[str]:
        """Clips with a stored trace, sorted."""
        if not self.folder.is_dir():
            return []
        return sorted(p.name[: -len(TRACE_SUFFIX)] for p in self.folder.glob(f"*{TRACE_SUFFIX}")
                      if not p.name.startswith("."))

    def write(self, clip_id: str, trace: dict[str, Any]) -> None:
        """Store a valid trace of this source atomically and clear the clip's failure record; an
        invalid one raises DataError and is never stored."""
        path = self._file(clip_id)
        problems = validate_trace(trace)
        if not problems and trace["clip"] != clip_id:
            problems = [f"trace.clip: {trace['clip']!r} is not the clip {clip_id!r}"]
        if not problems and not self.source.matches(trace["provenance"]):
            problems = [f"trace.provenance: written by another source than {self.source}"]
        if problems:
            raise DataError(f"{path}: invalid trace, not stored: {summarise(problems)}")
        write_json(path, trace)
        self._failures.clear(clip_id)

    def read(self, clip_id: str) -> dict[str, Any]:
        path = self._file(clip_id)
        if not path.exists():
            raise DataError(f"{path}: no trace for clip {clip_id}")
        trace = _read_json(path, "trace")
        problems = validate_trace(trace)
        if problems:
            raise DataError(f"{path}: invalid trace: {summarise(problems)}")
        return trace

    def status(self, clip_id: str, content_hash: str, features: list[str] | None = None
               ) -> Literal["done", "failed"] | None:
        """"done" when a valid trace of this very clip content is stored, "failed" when the last
        attempt on it failed, None when it has to be asked (again). For a reasoner that reads the
        extracted features, ``features`` names the feature sets it would be given now: a trace or
        failure made from other ones (before ``mer extract`` ran, say) is asked again."""
        if self._file(clip_id).exists():
            try:
                provenance = self.read(clip_id)["provenance"]
                if provenance["content_hash"] == content_hash and provenance.get("features") == features:
                    return "done"
            except DataError:
                pass
        failure = self._failures.get(clip_id)
        if (failure is not None and failure.details.get("content_hash") == content_hash
                and failure.details.get("features") == features):
            return "failed"
        return None

    def record_failure(self, clip_id: str, reason: str, content_hash: str, **details: Any) -> Failure:
        """Record why ``clip_id`` has no trace (a safety block, an invalid answer); ``details`` may
        carry, say, the HTTP status or the number of attempts."""
        return self._failures.record(clip_id, reason, content_hash=content_hash, **details)

    def failure(self, clip_id: str) -> Failure | None:
        return self._failures.get(clip_id)

    def failures(self) -> list[Failure]:
        return self._failures.all()


def summarise(problems: list[str]) -> str:
    """The first three problems on one line, and how many more there are."""
    more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def list_trace_stores(reasoning_root: Path) -> list[TraceStore]:
    """Every source folder under ``reasoning_root``, sorted by path."""
    stores = []
    for marker in sorted(reasoning_root.glob(f"*/*/*/{SOURCE_NAME}")):
        source = TraceStore._read_source(marker)
        if marker.parent != reasoning_root / source.relative_path:
            raise DataError(f"{marker}: the folder should be {reasoning_root / source.relative_path} "
                            "for this source (was it moved?)")
        stores.append(TraceStore(marker.parent, source))
    return stores

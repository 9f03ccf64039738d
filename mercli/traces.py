"""The reasoning-trace store: one validated JSON per clip and source under ``<workspace>/reasoning/``.

A source is a reasoner, a model and a prompt version, and whether labels were shown to it; each
has its own folder ``reasoning/<reasoner>/<model>/<prompt_version>/`` (``<prompt_version>+labels``
for label-conditioned traces, so that they are never served from the cache of a clean run). Model
names become folder names with ``/`` written as ``--`` and any other character outside
``A-Z a-z 0-9 . _ -`` as ``_``; ``source.json`` in the folder keeps the exact names, and a second
source that maps to the same folder is refused. The folder holds ``<clip>.trace.json`` (a trace, see
:data:`TRACE_SCHEMA`) and ``_failures/<clip>.json`` (why a clip has no trace; never a trace); the
``.trace.json`` suffix keeps every clip id clear of ``source.json``.

A trace is reused only when its ``provenance.content_hash`` matches the sha256 of the clip file (and,
for reasoners that read extracted features, ``provenance.features`` names the same feature sets), so
a re-run costs nothing and a changed clip is asked again.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from mercli.atomic import write_json
from mercli.clips import validate_clip_id
from mercli.errors import DataError
from mercli.failures import Failure, FailureLog
from mercli.vocabulary import TRACE_MODALITIES

SOURCE_NAME = "source.json"
TRACE_SUFFIX = ".trace.json"
LABELS_SUFFIX = "+labels"

_TEXT = {"type": "string", "minLength": 1}
_CONFIDENCE = {"type": "number", "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}

#: What one modality shows. A modality missing from the clip (no face, no audio track, no words)
#: has ``absent`` set to the reason, ``emotion`` and ``confidence`` null and no cues.
MODALITY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["cues", "emotion", "confidence"],
    "additionalProperties": False,
    "properties": {
        "cues": {"type": "array", "items": _TEXT},
        "emotion": {**_TEXT, "type": ["string", "null"]},
        "confidence": {**_CONFIDENCE, "type": ["number", "null"]},
        "absent": {**_TEXT, "type": ["string", "null"]},
    },
}

#: The trace of one clip, as a JSON-Schema subset (type, required, additionalProperties: false,
#: properties, items, minimum, maximum, minLength, pattern, format: date-time) that
#: :func:`validate_trace` checks by hand; ``minLength`` counts non-blank characters.
TRACE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["clip", *TRACE_MODALITIES, "overall", "provenance"],
    "additionalProperties": False,
    "properties": {
        "clip": _TEXT,
        **{key: MODALITY_SCHEMA for key in TRACE_MODALITIES},
        "overall": {
            "type": "object",
            "required": ["emotion", "confidence", "summary"],
            "additionalProperties": False,
            "properties": {"emotion": _TEXT, "confidence": _CONFIDENCE, "summary": _TEXT},
        },
        "provenance": {
            "type": "object",
            "required": ["reasoner", "model", "prompt_version", "label_conditioned", "usage", "cost_usd",
                         "content_hash", "created"],
            "additionalProperties": False,
            "properties": {
                "reasoner": _TEXT,
                "model": _TEXT,
                "prompt_version": _TEXT,
                "label_conditioned": {"type": "boolean"},
                "usage": {
                    "type": "object",
                    "required": ["input_tokens", "output_tokens"],
                    "additionalProperties": False,
                    "properties": {"input_tokens": _COUNT, "output_tokens": _COUNT},
                },
                "cost_usd": {"type": "number", "minimum": 0},
                "content_hash": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                "created": {"type": "string", "format": "date-time"},
                "features": {"type": "array", "items": _TEXT},
            },
        },
    },
}

_JSON_TYPES = {
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "string": lambda v: isinstance(v, str),
    "boolean": lambda v: isinstance(v, bool),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v),
    "null": lambda v: v is None,
}


def _schema_problems(value: Any, schema: dict[str, Any], where: str) -> list[str]:
    kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if not any(_JSON_TYPES[kind](value) for kind in kinds):
        return [f"{where}: expected {' or '.join(kinds)}, got {json.dumps(value, default=repr)[:60]}"]
    problems: list[str] = []
    if isinstance(value, str):
        if len(value.strip()) < schema.get("minLength", 0):
            problems.append(f"{where}: must not be empty")
        if "pattern" in schema and not re.search(schema["pattern"], value):
            problems.append(f"{where}: {value[:60]!r} does not match {schema['pattern']}")
        if schema.get("format") == "date-time" and not _is_iso_time(value):
            problems.append(f"{where}: {value[:60]!r} is not an ISO 8601 date and time")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < schema.get("minimum", -math.inf) or value > schema.get("maximum", math.inf):
            low, high = schema.get("minimum", "-inf"), schema.get("maximum", "inf")
            problems.append(f"{where}: {value} is outside [{low}, {high}]")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            problems += _schema_problems(item, schema["items"], f"{where}[{index}]")
    elif isinstance(value, dict):
        properties = schema["properties"]
        problems += [f"{where}: missing '{key}'" for key in schema["required"] if key not in value]
        problems += [f"{where}: unknown key '{key}'" for key in value if key not in properties]
        for key, item in value.items():
            if key in properties:
                problems += _schema_problems(item, properties[key], f"{where}.{key}")
    return problems


def _is_iso_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def validate_trace(document: Any) -> list[str]:
    """Every problem of ``document`` against :data:`TRACE_SCHEMA` and the rule that a modality is
    either observed (an emotion and a confidence) or absent (a reason, nothing else); empty when valid."""
    problems = _schema_problems(document, TRACE_SCHEMA, "trace")
    if problems:
        return problems
    for key in TRACE_MODALITIES:
        modality = document[key]
        if modality.get("absent") is not None:
            if modality["emotion"] is not None or modality["confidence"] is not None or modality["cues"]:
                problems.append(f"trace.{key}: absent, so emotion and confidence must be null and cues empty")
        elif modality["emotion"] is None or modality["confidence"] is None:
            problems.append(f"trace.{key}: an observed modality needs an emotion and a confidence "
                            "(set 'absent' to the reason when the clip lacks it)")
    return problems


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

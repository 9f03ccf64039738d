"""Labels: which dataset reader reads a source, and how its spellings become class names.

A source is a labels file or a folder of clips. ``data.dataset`` names the reader (a dataset
plug-in); ``auto`` asks the installed readers, in registration order, whether they recognise the
source, leaving generic layouts (folder-per-label, which any folder of subfolders satisfies) for
last. A raw label goes through the reader's own ``label_map`` (``ANG`` -> ``anger``), then the
configuration's ``data.label_map`` (``anger`` -> ``angry``), both with case-insensitive keys, and
is finally spelt as the matching configured class when only its case differs.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Iterable, Mapping, Sequence

import mercli.plugins as plugins
from mercli.clips import discover, resolve_clip, validate_clip_id
from mercli.config import Config
from mercli.contracts import Dataset, LabelRecord
from mercli.errors import DataError
from mercli.vocabulary import split_named


@dataclass(frozen=True)
class LabelledClip:
    """One clip of a labels source, its label folded into a class name.

    ``label`` is ``None`` for an unlabelled clip (a test set); ``raw_label`` is the spelling in
    the source (a CSV cell, a file-name code); ``path`` is set by readers that find the clip
    files themselves (the folder layouts).
    """

    clip_id: str
    label: str | None = None
    raw_label: str | None = None
    speaker: str | None = None
    split: str | None = None
    transcript: str | None = None
    path: Path | None = None


class FileNameDataset(Dataset):
    """A layout whose labels are coded in the clip file names (CREMA-D, RAVDESS, EmoDB).

    Subclasses set ``pattern``, a regular expression with the named groups ``label`` (a key of
    ``label_map``) and ``speaker`` that must match a whole clip id, and ``example``, a file name
    shown when one does not match. Every clip under the folder must follow the convention.
    """

    pattern: ClassVar[re.Pattern[str]]
    example: ClassVar[str]

    def detect(self, source: Path) -> bool:
        if not source.is_dir():
            return False
        clips = discover(source)
        return bool(clips) and all(self.pattern.fullmatch(clip.clip_id) for clip in clips)

    def read(self, source: Path) -> list[LabelRecord]:
        records = []
        for clip in discover(source):
            match = self.pattern.fullmatch(clip.clip_id)
            if match is None:
                raise DataError(f"{clip.path}: does not follow the {self.name} naming convention (e.g. {self.example})")
            records.append(LabelRecord(clip.clip_id, match["label"], speaker=match["speaker"], path=clip.path))
        return records


def choose_reader(source: Path, config: Config) -> Dataset:
    """The reader named by ``data.dataset``, or the first that recognises ``source`` under ``auto``."""
    name = config.data.dataset
    if name != "auto":
        return plugins.build("datasets", name, config)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    candidates = sorted(plugins.registry("datasets").values(), key=lambda r: r.component.generic)
    for registered in candidates:
        reader = plugins.build("datasets", registered.name, config)
        if reader.detect(source):
            return reader
    names = ", ".join(r.name for r in candidates) or "none installed"
    raise DataError(f"{source}: no dataset reader recognises this layout; set data.dataset to one of: {names}")


def _folded(mapping: Mapping[str, str]) -> dict[str, str]:
    return {key.casefold(): value for key, value in mapping.items()}


def map_label(raw: str | None, maps: Iterable[Mapping[str, str]], classes: Sequence[str]) -> str | None:
    """``raw`` through each label map in turn (case-insensitive keys), spelt as the configured
    class it matches ignoring case; ``None`` (unlabelled) stays ``None``."""
    if raw is None:
        return None
    label = raw
    for mapping in maps:
        label = _folded(mapping).get(label.casefold(), label)
    return _folded({c: c for c in classes}).get(label.casefold(), label)


def read_labels(source: Path, config: Config) -> list[LabelledClip]:
    """The labelled clips of ``source`` (a labels file or a clips folder), labels mapped to
    class names. Clip ids are validated and must be unique; paths recorded by a folder reader
    must lie inside the folder."""
    reader = choose_reader(source, config)
    maps = (reader.label_map, config.data.label_map)
    classes = config.data.classes
    folder = source if source.is_dir() else source.parent
    seen: set[str] = set()
    labelled = []
    for record in reader.read(source):
        validate_clip_id(record.clip_id, str(source))
        try:
            split = split_named(record.split) if record.split else None
        except ValueError as problem:
            raise DataError(f"{source}: clip '{record.clip_id}': {problem}") from None
        if record.clip_id in seen:
            raise DataError(f"{source}: clip '{record.clip_id}' is listed more than once")
        seen.add(record.clip_id)
        path = None if record.path is None else resolve_clip(folder, _relative(record.path, folder), str(source))
        labelled.append(LabelledClip(
            clip_id=record.clip_id,
            label=map_label(record.label, maps, classes),
            raw_label=record.label,
            speaker=record.speaker,
            split=split,
            transcript=record.transcript,
            path=path,
        ))
    return labelled


def _relative(path: Path, folder: Path) -> Path:
    """``path`` relative to ``folder`` when it was given under it, so that it is checked as one
    relative path (an absolute path elsewhere stays absolute and is refused)."""
    try:
        return path.relative_to(folder)
    except ValueError:
        return path


def check_classes(clips: Sequence[LabelledClip], classes: Sequence[str], source: Path) -> None:
    """Refuse labels outside ``classes``, naming each unknown label with its number of rows, so
    that a missing label-map entry is caught before training rather than dropped in silence."""
    known = set(classes)
    unknown = Counter(c.label for c in clips if c.label is not None and c.label not in known)
    if unknown:
        listed = ", ".join(f"{label} ({count})" for label, count in sorted(unknown.items()))
        raise DataError(
            f"{source}: {sum(unknown.values())} rows have labels outside the classes "
            f"({', '.join(classes)}): {listed}; map them with data.label_map or add them to data.classes"
        )

"""Clips: finding them in a folder, naming them, and keeping every path inside that folder.

A clip's id is its file name without the extension. Ids become file names in the workspace (one
feature file per clip), and labels files name clips by id or by relative path, so both are checked
here, once: an id is a plain file name, and a path taken from a labels file must stay inside the
clips folder, symbolic links included. Nothing outside the clips folder is ever read through this
module. A folder entry that cannot be a clip is refused on its own (:func:`scan`), so one bad link
does not cost the folder's other clips.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path, PurePath, PureWindowsPath
from typing import Literal

from mercli.errors import DataError

VIDEO_EXTENSIONS = ("mp4", "avi", "flv", "mkv", "mov", "webm")
AUDIO_EXTENSIONS = ("wav", "mp3", "m4a")

#: Ids become file names with a suffix (``<id>.npy``) and a temporary twin during atomic writes
#: (``.<id>.npy.<random>.part``); 200 bytes keeps both under the usual 255-byte limit.
MAX_CLIP_ID_BYTES = 200
#: ``<clip>.mask.npy`` and ``<clip>.absent.json`` are a clip's companion files in a feature set: a
#: clip id ending in one of these would be mistaken for them, so the store refuses it.
RESERVED_SUFFIXES = (".mask", ".absent")

ClipKind = Literal["video", "audio"]


@dataclass(frozen=True)
class Clip:
    """One media file and the id every stage knows it by."""

    clip_id: str
    path: Path
    kind: ClipKind


def clip_kind(path: PurePath | str) -> ClipKind | None:
    """``video`` or ``audio`` by extension (case-insensitive), ``None`` for any other file."""
    extension = PurePath(path).suffix[1:].lower()
    if extension in VIDEO_EXTENSIONS:
        return "video"
    if extension in AUDIO_EXTENSIONS:
        return "audio"
    return None


def clip_id_of(name: str) -> str:
    """The clip id a file name stands for: the name without a media extension
    (``sample_01.mp4`` -> ``sample_01``); any other name is returned as it is (ids may hold dots)."""
    return name[: -len(PurePath(name).suffix)] if clip_kind(name) else name


def validate_clip_id(clip_id: str, where: str) -> str:
    """Return ``clip_id`` if it can name a clip and a file in the workspace, else raise a
    :class:`DataError` that starts with ``where`` (a labels file and line, a store).

    An id is one plain file name: not empty, no path separator, no control character, no bytes
    that did not decode as UTF-8, not hidden (``.``, ``..`` and ``.x`` are refused: discovery skips
    hidden files), at most ``MAX_CLIP_ID_BYTES`` bytes of UTF-8.
    """
    if not isinstance(clip_id, str) or not clip_id:
        raise DataError(f"{where}: empty clip id")
    if "/" in clip_id or "\\" in clip_id:
        as_path = PureWindowsPath(clip_id)  # reads both separators
        problem = ("is an absolute path" if as_path.anchor else
                   "climbs out of its folder with '..'" if ".." in as_path.parts else "holds a path separator")
        raise DataError(f"{where}: clip id {clip_id!r} {problem}; a clip id is a file name without extension")
    if clip_id.startswith("."):
        raise DataError(f"{where}: clip id {clip_id!r} starts with a dot")
    if any(ord(c) < 32 or ord(c) == 127 for c in clip_id):
        raise DataError(f"{where}: clip id {clip_id!r} holds a control character")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in clip_id):  # surrogates: bytes the file system name did not decode
        raise DataError(f"{where}: clip id {clip_id!r} is not UTF-8 (a file name from another encoding?), so no "
                        "labels file can name it; rename the file")
    if len(clip_id.encode("utf-8", "surrogateescape")) > MAX_CLIP_ID_BYTES:
        raise DataError(f"{where}: clip id {clip_id[:40]!r}... is longer than {MAX_CLIP_ID_BYTES} bytes")
    return clip_id


def storable_clip_id(clip_id: str, where: str) -> str:
    """``clip_id`` if a feature set can store it: a valid id (:func:`validate_clip_id`) that does
    not end in a suffix the store keeps for companion files; else a :class:`DataError`."""
    validate_clip_id(clip_id, where)
    if clip_id.endswith(RESERVED_SUFFIXES):
        raise DataError(f"{where}: clip id {clip_id!r} ends in {' or '.join(RESERVED_SUFFIXES)}, "
                        "which the feature store keeps for a clip's mask and absent record")
    return clip_id


def resolve_clip(folder: Path, reference: str | PurePath, where: str) -> Path:
    """The file that ``reference`` (a path relative to ``folder``, as a labels file gives it)
    names, with symbolic links resolved.

    Refused with a :class:`DataError` starting with ``where``: an absolute path, a ``..``
    component, and a path that ends up outside ``folder`` once links are followed. Whether the
    file exists is left to the caller.
    """
    text = str(reference)
    either_separator = PureWindowsPath(text)  # a labels file written on Windows uses backslashes
    if PurePath(text).is_absolute() or either_separator.anchor:
        raise DataError(f"{where}: {text!r} is an absolute path; give it relative to {folder}")
    if ".." in either_separator.parts:
        raise DataError(f"{where}: {text!r} climbs out of the clips folder with '..'")
    root = folder.resolve()
    try:
        target = (root / text).resolve()
    except RuntimeError:  # Python 3.11 raises on a loop of links; later versions leave it to stat
        raise DataError(f"{where}: {text!r} is a loop of symbolic links") from None
    if not target.is_relative_to(root):
        raise DataError(f"{where}: {text!r} leads outside the clips folder {folder} (to {target})")
    return target


def clip_from_file(path: Path) -> Clip:
    """The clip a single media file is (``mer predict video.mp4``)."""
    if not path.is_file():
        problem = ("a dangling link or a loop of symbolic links" if path.is_symlink()
                   else "not a file" if path.exists() else "no such file")
        raise DataError(f"{path}: {problem}")
    kind = clip_kind(path)
    if kind is None:
        known = ", ".join(VIDEO_EXTENSIONS + AUDIO_EXTENSIONS)
        raise DataError(f"{path}: not a clip (known extensions: {known})")
    return Clip(storable_clip_id(path.stem, str(path)), path, kind)


@dataclass(frozen=True)
class Refused:
    """A folder entry that looks like a clip but cannot be one; ``reason`` is one line naming it."""

    path: Path
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"clip": str(self.path), "reason": self.reason}


@dataclass(frozen=True)
class Discovery:
    """What :func:`scan` found: the clips, sorted by id, and the entries it refused."""

    clips: list[Clip]
    refused: list[Refused]


def discover(folder: Path) -> list[Clip]:
    """Every clip under ``folder``, for readers that must see all of it (a folder whose layout
    holds the labels): an entry :func:`scan` refuses is an error here."""
    found = scan(folder)
    if found.refused:
        more = f" (and {len(found.refused) - 1} more refused entries)" if len(found.refused) > 1 else ""
        raise DataError(found.refused[0].reason + more)
    return found.clips


def scan(folder: Path) -> Discovery:
    """Every clip under ``folder`` (recursively), sorted by id, and the entries refused.

    Hidden files and folders (a name starting with ``.``) and files of other types are skipped.
    A linked file or folder is followed only when it stays inside ``folder``. Refused, each on its
    own with a reason: a link leading outside, a loop of links, a dangling link, a name that
    cannot be a clip id or that a feature set could not store. Two clips with the same id are an
    error for the whole folder (both files are named), whatever their extensions or subfolders.
    """
    if not folder.exists():
        raise DataError(f"{folder}: no such folder")
    if not folder.is_dir():
        raise DataError(f"{folder}: not a folder")
    root = folder.resolve()
    found: dict[str, Clip] = {}
    refused: list[Refused] = []
    visited: set[Path] = set()

    def unreadable(problem: OSError) -> None:
        raise DataError(f"{problem.filename}: cannot read the folder: {problem.strerror}")

    for current, subfolders, files in os.walk(folder, onerror=unreadable, followlinks=True):
        here = Path(current)
        real = here.resolve()
        if real in visited:  # a link back to a folder already walked: its clips are counted once
            subfolders[:] = []
            continue
        visited.add(real)
        kept = []
        for name in sorted(name for name in subfolders if not name.startswith(".")):
            try:  # checked before os.walk follows a link into it
                _check_link(root, folder, here / name)
                kept.append(name)
            except DataError as problem:
                refused.append(Refused(here / name, str(problem)))
        subfolders[:] = kept
        for name in sorted(files):
            kind = clip_kind(name)
            if name.startswith(".") or kind is None:
                continue
            path = here / name
            try:
                _check_link(root, folder, path)
                clip = Clip(storable_clip_id(PurePath(name).stem, str(path)), path, kind)
            except DataError as problem:
                refused.append(Refused(path, str(problem)))
                continue
            if clip.clip_id in found:
                raise DataError(
                    f"two clips share the id '{clip.clip_id}': {found[clip.clip_id].path} and {path}"
                )
            found[clip.clip_id] = clip
    return Discovery([found[clip_id] for clip_id in sorted(found)], refused)


def _check_link(root: Path, folder: Path, path: Path) -> None:
    """Refuse ``path`` (a :class:`DataError` naming it) if it is a link that leads outside
    ``root``, loops, or leads nowhere. The folder holding it is inside already: only a link can
    leave."""
    if not path.is_symlink():
        return
    resolve_clip(root, path.relative_to(folder), str(path))
    try:
        path.stat()
    except OSError as error:
        problem = ("is a loop of symbolic links" if error.errno == errno.ELOOP else
                   f"is a link to {os.readlink(path)}, which does not exist" if error.errno == errno.ENOENT else
                   f"cannot be read: {error.strerror}")
        raise DataError(f"{path}: {problem}") from None

"""The feature store: one folder per feature set under ``<workspace>/features/``.

A set made by ``mer`` is ``<encoder>-<config_hash[:8]>/`` holding ``manifest.json`` and, per clip,
``<clip>.npy`` (float32 ``(dim,)`` utterance-level or ``(T, dim)`` frame-level), for frame-level
sets ``<clip>.mask.npy`` (bool ``(T,)``, True where the frame holds a real measurement; masked rows
are stored as zeros), or ``<clip>.absent.json`` (``{"reason": ...}``) when the clip lacks the
modality. The folder name carries the hash of everything that determines the output, so a changed
setting or model writes a new set instead of mixing two.

Folders written by MERTools are read as they are: ``<model>-UTT/<clip>.npy`` (utterance-level)
and ``<model>-FRA/<clip>.npy`` (frame-level, every frame real). They carry no manifest, so their
modality is ``unknown`` unless a one-word file ``modality.txt`` (``audio``, ``visual`` or
``text``) beside the ``.npy`` files says it.

Per-clip failures of the extract stage go to ``features/_failures/<clip>.json``, one file per clip,
so that shards on several machines never write the same file. Names in ``features/`` starting with
``_`` or ``.`` are the store's own (failure records, temporary files), never feature sets; clip ids
never start with ``.`` (:func:`mercli.clips.validate_clip_id`), so temporary files are never clips.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from pathlib import Path
from functools import lru_cache, partial
from typing import Any, BinaryIO, Callable, Literal

import numpy as np

from mercli.atomic import hidden_twin, replacing, write_json
from mercli.clips import storable_clip_id
from mercli.contracts import Features
from mercli.errors import DataError
from mercli.failures import utc_now
from mercli.vocabulary import MODALITIES, UNKNOWN_MODALITY, one_line

MANIFEST_NAME = "manifest.json"
MODALITY_HINT_NAME = "modality.txt"
LEVELS = ("utterance", "frame")
MERTOOLS_SUFFIXES = {"-UTT": "utterance", "-FRA": "frame"}


# --- manifests --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    """What produced a feature set. Everything but ``created`` and ``package_version`` is its
    identity (``config_hash``): ``encoder_version`` is what an encoder bumps when its output
    changes, so upgrading the package that ships an unchanged encoder does not re-extract.

    ``settings`` holds the encoder's options and the extraction settings that change its output
    (``fps``, ``sample_rate``); leave out model paths: ``weights`` (a file hash, a model id and
    revision) identifies the weights wherever they lie.
    """

    encoder: str
    encoder_version: str
    package: str
    package_version: str
    weights: str
    settings: dict[str, Any]
    modality: str
    dim: int
    level: str
    created: str = field(default_factory=utc_now, compare=False)

    def __post_init__(self) -> None:
        if not self.encoder or self.encoder.startswith((".", "_")) or any(c in self.encoder for c in "/\\\0"):
            raise DataError(f"invalid encoder name {self.encoder!r} for a feature-set folder")
        if self.modality not in (*MODALITIES, UNKNOWN_MODALITY):
            raise DataError(f"encoder {self.encoder}: modality {self.modality!r} is not one of {', '.join(MODALITIES)}")
        if self.level not in LEVELS:
            raise DataError(f"encoder {self.encoder}: level {self.level!r} is not one of {', '.join(LEVELS)}")
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise DataError(f"encoder {self.encoder}: dim must be a positive integer, got {self.dim!r}")

    @property
    def config_hash(self) -> str:
        identity = {k: v for k, v in asdict(self).items() if k not in ("created", "package_version")}
        canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=_path_as_text)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()

    @property
    def set_name(self) -> str:
        return f"{self.encoder}-{self.config_hash[:8]}"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, document: Any) -> "Manifest":
        """Raises DataError (without the file name: the caller adds it) on a missing, unknown or
        mistyped key."""
        if not isinstance(document, dict):
            raise DataError("a manifest must be a JSON object")
        names = {f.name for f in fields(cls)}
        missing = sorted(names - set(document))
        unknown = sorted(set(document) - names)
        if missing:
            raise DataError(f"missing key(s) {', '.join(missing)}")
        if unknown:
            raise DataError(f"unknown key(s) {', '.join(unknown)}")
        for name in names - {"settings", "dim"}:
            if not isinstance(document[name], str):
                raise DataError(f"'{name}' must be a string, got {document[name]!r}")
        if not isinstance(document["settings"], dict):
            raise DataError(f"'settings' must be an object, got {document['settings']!r}")
        return cls(**document)


def _path_as_text(value: Any) -> str:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"setting value {value!r} of type {type(value).__name__} cannot go into a manifest")


def _read_manifest(path: Path) -> Manifest:
    try:
        return Manifest.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
        raise DataError(f"{path}: unreadable manifest ({problem})") from None
    except DataError as problem:
        raise DataError(f"{path}: {problem}") from None


# --- .npy files -------------------------------------------------------------------------------

#: Per .npy format version: numpy's header reader, and the format of the header's length field.
_HEADER_FORMATS = {(1, 0): (np.lib.format.read_array_header_1_0, "<H"),
                   (2, 0): (np.lib.format.read_array_header_2_0, "<I")}


@lru_cache(maxsize=256)
def _parse_header(version: tuple[int, int], header: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """numpy's reading of one header (its length field and text): the files of a set share a few
    headers, and numpy parses each with ``ast.literal_eval``, a third of reading a small file."""
    return _HEADER_FORMATS[version][0](io.BytesIO(header))


def _read_header(handle: BinaryIO, path: Path) -> tuple[tuple[int, ...], np.dtype, bool]:
    """Shape, dtype and Fortran order of the ``.npy`` file open in ``handle``, from its header, after
    checking that the file holds exactly the bytes the header announces (a truncated write is
    caught without reading the values)."""
    try:
        version = np.lib.format.read_magic(handle)
        if version not in _HEADER_FORMATS:
            raise ValueError(f"unsupported .npy format version {version}")
        length_format = _HEADER_FORMATS[version][1]
        length_field = handle.read(struct.calcsize(length_format))
        header = length_field + handle.read(struct.unpack(length_format, length_field)[0])
        shape, fortran, dtype = _parse_header(version, header)
    except (OSError, ValueError, struct.error) as problem:
        raise DataError(f"{path}: not a readable .npy file ({problem})") from None
    if dtype.hasobject:
        raise DataError(f"{path}: holds Python objects, not numbers")
    expected = handle.tell() + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    size = os.fstat(handle.fileno()).st_size
    if size != expected:
        raise DataError(f"{path}: truncated or padded ({size} bytes, header announces {expected})")
    return shape, dtype, fortran


def _npy_header(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of an ``.npy`` file, from its header alone (see :func:`_read_header`)."""
    try:
        with path.open("rb") as handle:
            shape, dtype, _fortran = _read_header(handle, path)
    except OSError as problem:
        raise DataError(f"{path}: not a readable .npy file ({problem})") from None
    return shape, dtype


def _load_npy(path: Path, check: Callable[[tuple[int, ...], np.dtype], Any]) -> np.ndarray:
    """The array of an ``.npy`` file, whose header is read once and passed to ``check`` (which
    raises DataError) before any value is read: tens of thousands of small files are read per
    training, and parsing each header twice cost as much as reading the values."""
    try:
        with path.open("rb") as handle:
            shape, dtype, fortran = _read_header(handle, path)
            check(shape, dtype)
            values = np.fromfile(handle, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)))
    except (OSError, ValueError) as problem:
        raise DataError(f"{path}: not a readable .npy file ({problem})") from None
    return values.reshape(shape[::-1]).transpose() if fortran else values.reshape(shape)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with replacing(path, "wb") as handle:
        np.save(handle, array, allow_pickle=False)


def stored_form(features: Features, manifest: Manifest, where: str) -> Features:
    """An encoder's output as a feature set holds it (float32, masked frames zeroed), after checking
    it against ``manifest``; what the store would refuse raises :class:`DataError` naming ``where``.
    Prediction uses the same form in memory, so that it sees exactly what training read."""
    values = np.array(features.values, dtype=np.float32)
    dim = manifest.dim
    if manifest.level != "frame":
        if values.shape != (dim,):
            raise DataError(f"{where}: expected values of shape ({dim},), got {values.shape}")
        if features.mask is not None:
            raise DataError(f"{where}: a mask was given for an utterance-level set")
        if not np.isfinite(values).all():
            raise DataError(f"{where}: values hold NaN or infinity")
        return Features(values)
    if values.ndim != 2 or values.shape[1] != dim or values.shape[0] == 0:
        raise DataError(f"{where}: expected values of shape (T, {dim}) with T > 0, got {values.shape}")
    mask = np.ones(len(values), dtype=bool) if features.mask is None else np.asarray(features.mask, dtype=bool)
    if mask.shape != (len(values),):
        raise DataError(f"{where}: mask of shape {mask.shape} for {len(values)} frames")
    if not mask.any():
        raise DataError(f"{where}: no frame holds a measurement; report the modality as absent instead")
    if not np.isfinite(values[mask]).all():
        raise DataError(f"{where}: values hold NaN or infinity in unmasked frames")
    values[~mask] = 0.0
    return Features(values, mask)


# --- feature sets -----------------------------------------------------------------------------


class FeatureSet:
    """One feature set on disk. ``read_only`` sets (MERTools folders) can be read, not written."""

    def __init__(self, path: Path, manifest: Manifest, read_only: bool = False) -> None:
        self.path = path
        self.manifest = manifest
        self.read_only = read_only

    def __repr__(self) -> str:
        return f"FeatureSet({self.path})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def frame_level(self) -> bool:
        return self.manifest.level == "frame"

    @classmethod
    def open(cls, features_root: Path, manifest: Manifest) -> "FeatureSet":
        """The set ``manifest`` names, created if new. Creation builds the folder and its manifest
        under a temporary name and renames it into place, so a set never exists without its
        manifest, and two shards creating it at once both end up with the same one."""
        path = features_root / manifest.set_name
        if not path.exists():
            features_root.mkdir(parents=True, exist_ok=True)
            # os.mkdir, not mkdtemp: the set takes the umask's mode like every other file, not 0700
            staging = hidden_twin(path)
            staging.mkdir()
            try:
                write_json(staging / MANIFEST_NAME, manifest.to_json())
                os.rename(staging, path)
            except OSError:
                if not path.is_dir():
                    raise
            finally:
                if staging.exists():
                    (staging / MANIFEST_NAME).unlink(missing_ok=True)
                    staging.rmdir()
        stored = _read_manifest(path / MANIFEST_NAME)
        if stored.config_hash != manifest.config_hash:
            raise DataError(f"{path / MANIFEST_NAME}: manifest does not match the requested configuration "
                            f"(stored {stored.config_hash[:8]}, requested {manifest.config_hash[:8]})")
        return cls(path, stored)

    def _files(self, clip_id: str) -> tuple[Path, Path, Path]:
        """(values, mask, absent record) of one clip."""
        storable_clip_id(clip_id, str(self.path))
        return (self.path / f"{clip_id}.npy", self.path / f"{clip_id}.mask.npy",
                self.path / f"{clip_id}.absent.json")

    def clip_ids(self) -> list[str]:
        """Clips with a result (features or an absent record), sorted."""
        ids = set()
        for entry in self.path.iterdir():
            name = entry.name
            if name.startswith("."):
                continue
            if name.endswith(".absent.json"):
                ids.add(name[: -len(".absent.json")])
            elif name.endswith(".npy") and not name.endswith(".mask.npy"):
                ids.add(name[: -len(".npy")])
        return sorted(ids)

    def status(self, clip_id: str) -> Literal["done", "absent"] | None:
        """"done" or "absent" when a valid result is stored; None when nothing is, or when what is
        stored is invalid (truncated, wrong shape or dtype), so that a re-run redoes the clip."""
        values, _mask, absent = self._files(clip_id)
        try:
            if values.exists():
                self._check_values(clip_id)
                return "done"
            if absent.exists():
                self._absent_reason(absent)
                return "absent"
        except DataError:
            return None
        return None

    def read(self, clip_id: str) -> Features:
        values, mask, absent = self._files(clip_id)
        if values.exists():
            array = _load_npy(values, partial(self._check_shape, values)).astype(np.float32, copy=False)
            if not self.frame_level:
                return Features(array)
            if self.read_only:
                return Features(array, np.ones(len(array), dtype=bool))
            return Features(array, _load_npy(mask, partial(self._check_mask, mask, len(array))))
        if absent.exists():
            return Features(None, None, self._absent_reason(absent))
        raise DataError(f"{values}: no features stored for clip {clip_id} in {self.path}")

    def write(self, clip_id: str, features: Features) -> None:
        """Store one clip's result, each file atomically. The clip's previous result (of either
        kind) is removed first and the file that makes it "done" (the values, or the absent
        record) is written last, so an interruption at any point leaves the clip to be redone,
        never a new mask beside old values."""
        values_path, mask_path, absent_path = self._files(clip_id)
        if self.read_only:
            raise DataError(f"{self.path}: a MERTools feature set is read-only")
        reason = None if features.absent is None else one_line(features.absent)
        if (features.values is None) == (reason is None) or reason == "":
            raise DataError(f"{self.path}: clip {clip_id}: give either feature values or a non-empty absent reason")
        stored = None if reason is not None else stored_form(features, self.manifest, f"{self.path}: clip {clip_id}")
        for stale in (values_path, absent_path, mask_path):
            stale.unlink(missing_ok=True)
        if reason is not None:
            write_json(absent_path, {"reason": reason})
            return
        if stored.mask is not None:
            _save_npy(mask_path, stored.mask)
        _save_npy(values_path, stored.values)

    def _check_values(self, clip_id: str) -> int:
        """Validate the stored values (and mask) from their headers; returns the frame count."""
        values_path, mask_path, _absent = self._files(clip_id)
        frames = self._check_shape(values_path, *_npy_header(values_path))
        if self.frame_level and not self.read_only:
            self._check_mask(mask_path, frames, *_npy_header(mask_path))
        return frames

    def _check_shape(self, values_path: Path, shape: tuple[int, ...], dtype: np.dtype) -> int:
        """Refuse values of another kind or shape than the manifest's; returns the frame count."""
        dim = self.manifest.dim
        if dtype.kind != "f":
            raise DataError(f"{values_path}: holds {dtype}, not floating-point values")
        if not self.frame_level:
            if shape != (dim,):
                raise DataError(f"{values_path}: shape {shape}, expected ({dim},) for {self.name}")
            return 1
        if len(shape) != 2 or shape[1] != dim or shape[0] == 0:
            raise DataError(f"{values_path}: shape {shape}, expected (T, {dim}) for {self.name}")
        return shape[0]

    @staticmethod
    def _check_mask(mask_path: Path, frames: int, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if dtype != np.bool_ or shape != (frames,):
            raise DataError(f"{mask_path}: {dtype} mask of shape {shape}, expected bool ({frames},)")

    @staticmethod
    def _absent_reason(path: Path) -> str:
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as problem:
            raise DataError(f"{path}: unreadable absent record ({problem})") from None
        if not isinstance(record, dict) or not isinstance(record.get("reason"), str):
            raise DataError(f"{path}: an absent record must be {{\"reason\": \"...\"}}")
        return record["reason"]


def list_feature_sets(features_root: Path) -> list[FeatureSet]:
    """Every feature set under ``features_root``, sorted by name: ``mer`` sets and MERTools
    folders alike. A folder that is neither is an error, not a silent skip."""
    if not features_root.is_dir():
        return []
    sets = []
    for folder in sorted(p for p in features_root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))):
        if (folder / MANIFEST_NAME).exists():
            manifest = _read_manifest(folder / MANIFEST_NAME)
            if folder.name != manifest.set_name:
                raise DataError(f"{folder / MANIFEST_NAME}: the folder should be named {manifest.set_name} "
                                "for this manifest (was it renamed or edited?)")
            sets.append(FeatureSet(folder, manifest))
        elif folder.name.endswith(tuple(MERTOOLS_SUFFIXES)):
            mertools = _mertools_set(folder)
            if mertools is not None:
                sets.append(mertools)
        else:
            raise DataError(f"{folder}: not a feature set (no {MANIFEST_NAME}, and not a MERTools "
                            "<model>-UTT or <model>-FRA folder)")
    return sets


def _mertools_set(folder: Path) -> FeatureSet | None:
    """A MERTools folder as a read-only set, its dimension taken from its first file; None when
    it holds no clip yet."""
    level = MERTOOLS_SUFFIXES[folder.name[-4:]]
    first = min((p for p in folder.glob("*.npy") if not p.name.startswith(".")), default=None)
    if first is None:
        return None
    shape, _dtype = _npy_header(first)
    if len(shape) != (1 if level == "utterance" else 2):
        raise DataError(f"{first}: shape {shape} does not fit a MERTools {level}-level folder")
    hint = folder / MODALITY_HINT_NAME
    modality = hint.read_text(encoding="utf-8").strip() if hint.exists() else UNKNOWN_MODALITY
    try:
        manifest = Manifest(
            encoder=folder.name[:-4], encoder_version="", package="MERTools", package_version="",
            weights="", settings={}, modality=modality, dim=int(shape[-1]), level=level,
            created=datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(timespec="seconds"),
        )
    except DataError as problem:
        raise DataError(f"{hint if hint.exists() else folder}: {problem}") from None
    return FeatureSet(folder, manifest, read_only=True)


# --- per-clip failures ------------------------------------------------------------------------

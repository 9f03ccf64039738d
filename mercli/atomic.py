"""Atomic writes: a reader, or a run that was interrupted, never sees half a file."""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def hidden_twin(path: Path) -> Path:
    """A new hidden name beside ``path`` (``.<name>.<random>.part``) for a file or folder written
    before it takes ``path``'s place; no command reads such a name as a result."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.part")


@contextmanager
def replacing(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename,
    on any error (Ctrl-C included) it is removed and ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # The name is chosen before the file exists (mkstemp could be interrupted after creating it
    # but before returning its name), so whatever interrupts the write, the cleanup knows the file.
    temporary = hidden_twin(path)
    exclusive = mode.replace("w", "x")
    try:
        with open(temporary, exclusive, **({} if "b" in mode else {"encoding": "utf-8"})) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    with replacing(path) as handle:
        handle.write(text)


def write_bytes(path: Path, data: bytes) -> None:
    with replacing(path, "wb") as handle:
        handle.write(data)


def json_text(document: Any, indent: int | None = None) -> str:
    """``document`` as JSON that any UTF-8 stream can take: other characters as they are, but the
    undecodable bytes of a file name (Python's surrogate escapes) as ``\\u`` escapes, which a JSON
    reader turns back into the same name."""
    text = json.dumps(document, indent=indent, ensure_ascii=False, default=str)
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def write_json(path: Path, document: Any) -> None:
    write_text(path, json_text(document, indent=2) + "\n")


def read_json(path: Path, missing: str = "missing") -> Any:
    """The JSON document at ``path``; a file that is absent (``missing`` says what that means) or
    unreadable is a :class:`~mercli.errors.DataError` naming it."""
    from mercli.errors import DataError

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {missing}") from None
    except (OSError, UnicodeDecodeError, ValueError) as problem:
        raise DataError(f"{path}: unreadable ({problem})") from None

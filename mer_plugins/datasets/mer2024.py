"""The MER2024 labels CSV: a header row with ``name`` and ``discrete``, one clip per row.

Optional columns: ``speaker``, ``split`` and a transcript. The transcript of a row is taken from
``[dataset.mer2024] transcript_column`` when set, else from the first non-empty cell among the
columns ``transcript``, ``text``, ``english``, ``chinese``, ``subtitle`` (in that order, so that
the English transcript the MER2024 release ships beside the Chinese one feeds the English text
encoder). Header names are matched ignoring case and surrounding spaces; cells are stripped.
A row whose ``discrete`` cell is empty, or a file without that column, is unlabelled (a test
set). Blank lines are skipped. The file is UTF-8, with or without a byte-order mark.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

from mercli.plugin_api import DataError, Dataset, LabelRecord, Option, clip_id_of, hookimpl, validate_clip_id

TRANSCRIPT_COLUMNS = ("transcript", "text", "english", "chinese", "subtitle")


def read_text(path: Path) -> str:
    """The file's text, or a one-line error saying why it cannot be had."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: a folder, not a labels file") from None
    except OSError as error:
        raise DataError(f"{path}: cannot read: {error.strerror}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[error.start]:02x}); save the file as UTF-8"
        ) from None


def numbered_rows(source: Path) -> Iterator[tuple[int, list[str]]]:
    """The non-blank rows of a CSV file, cells stripped, each with the line it starts on (a
    quoted cell may span lines)."""
    rows = csv.reader(io.StringIO(read_text(source), newline=""), strict=True)
    start = 1
    try:
        for row in rows:
            if any(cell.strip() for cell in row):
                yield start, [cell.strip() for cell in row]
            start = rows.line_num + 1
    except csv.Error as error:
        raise DataError(f"{source}:{start}: not valid CSV: {error}") from None


class Mer2024Labels(Dataset):
    name = "mer2024"
    version = "1"
    description = "MER2024 labels CSV: name,discrete[,speaker,split,transcript]"
    options = (
        Option("transcript_column", str, None,
               "Column holding the transcript (default: first non-empty of " + ", ".join(TRANSCRIPT_COLUMNS) + ")."),
    )

    def detect(self, source: Path) -> bool:
        return source.is_file() and source.suffix.lower() == ".csv"

    def read(self, source: Path) -> list[LabelRecord]:
        rows = numbered_rows(source)
        first = next(rows, None)
        if first is None:
            raise DataError(f"{source}: empty; expected a header row such as name,discrete")
        line, header = first
        columns = self._columns(source, line, header)
        records = []
        for line, cells in rows:
            where = f"{source}:{line}"
            if len(cells) != len(header):
                raise DataError(f"{where}: {len(cells)} fields, the header has {len(header)}")
            records.append(self._record(cells, columns, where))
        return records

    def _columns(self, source: Path, line: int, header: list[str]) -> dict[str, int]:
        """Column positions by lower-cased name, checked for the columns this layout needs."""
        names = [cell.lower() for cell in header]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise DataError(f"{source}:{line}: column(s) {', '.join(duplicated)} appear more than once")
        if "name" not in names:
            raise DataError(f"{source}:{line}: no 'name' column (found: {', '.join(names)})")
        wanted = self.settings["transcript_column"]
        if wanted is not None and wanted.lower() not in names:
            raise DataError(f"{source}:{line}: no '{wanted}' column (set as dataset.mer2024.transcript_column)")
        return {n: i for i, n in enumerate(names)}

    def _record(self, cells: list[str], columns: dict[str, int], where: str) -> LabelRecord:
        def cell(column: str) -> str | None:
            return (cells[columns[column]] or None) if column in columns else None

        name = cell("name")
        if name is None:
            raise DataError(f"{where}: empty name")
        wanted = self.settings["transcript_column"]
        transcripts = (wanted.lower(),) if wanted is not None else TRANSCRIPT_COLUMNS
        return LabelRecord(
            clip_id=validate_clip_id(clip_id_of(name), where),
            label=cell("discrete"),
            speaker=cell("speaker"),
            split=cell("split"),
            transcript=next((text for text in map(cell, transcripts) if text), None),
        )


@hookimpl
def register_datasets(register):
    register(Mer2024Labels)

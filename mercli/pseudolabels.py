"""Pseudo-label files, and what a student run must check of them and of the teacher that wrote them.

A pseudo-label file is a labels file in the usual layout (``name,discrete``, read by ``mer train
--labels`` like any other) with three more columns: ``confidence`` (the teacher's calibrated
probability of the class, in [0, 1], times the agreement weight when one was applied), ``teacher``
(the run folder and its fold count, ``/ws/runs/teach (5 folds)``) and ``round`` (1 for a teacher
trained on labels alone, one more than its own pseudo-labels' round otherwise). mercli.teacher
writes them; ``mer train --pseudo-labels`` reads them here.

Honesty rules a student is held to: no clip is both labelled and pseudo-labelled; a teacher (or
any teacher before it, round after round) that trained on or selected with one of the student's
test clips is refused, since the test figure would no longer be a measurement; a teacher that
trained on the student's validation clips (every k-fold self-training does) is recorded, and
``mer eval`` says beside the validation figures that they are optimistic.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from mercli.atomic import read_json
from mercli.clips import validate_clip_id
from mercli.config import Config
from mercli.errors import DataError
from mercli.labels import map_label

COLUMNS = ("name", "discrete", "confidence", "teacher", "round")
_TEACHER = re.compile(r"^(?P<run>.+) \((?P<folds>\d+) folds?\)$")


@dataclass(frozen=True)
class Teacher:
    """The run whose fold ensemble wrote a pseudo-label file."""

    run: Path
    folds: int

    def cell(self) -> str:
        return f"{self.run} ({self.folds} fold{'s' if self.folds != 1 else ''})"

    @classmethod
    def parse(cls, cell: str, where: str) -> "Teacher":
        match = _TEACHER.fullmatch(cell)
        if match is None:
            raise DataError(f"{where}: teacher {cell!r} is not 'RUN FOLDER (K folds)'")
        return cls(Path(match["run"]), int(match["folds"]))

    def to_json(self) -> dict[str, Any]:
        return {"run": str(self.run), "folds": self.folds}


@dataclass(frozen=True)
class PseudoLabels:
    """The rows of a pseudo-label file, checked: one teacher and one round for the whole file."""

    path: Path
    clip_ids: list[str]
    labels: list[str]
    confidences: list[float]
    teacher: Teacher
    round: int
    sha256: str


def pseudo_labels_csv(rows: Iterable[tuple[str, str, float]], teacher: Teacher, round_: int) -> str:
    """The text of a pseudo-label file: ``(clip, class, confidence)`` rows with teacher and round."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows([clip, label, f"{confidence:.6f}", teacher.cell(), round_] for clip, label, confidence in rows)
    return buffer.getvalue()


def _text(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such pseudo-label file") from None
    except OSError as problem:
        raise DataError(f"{path}: cannot read ({problem.strerror or problem})") from None


def _confidence(cell: str, where: str) -> float:
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:  # NaN fails too
        raise DataError(f"{where}: confidence {cell!r} is not a number in [0, 1]")
    return value


def _round(cell: str, where: str) -> int:
    if not cell.isdigit() or int(cell) < 1:
        raise DataError(f"{where}: round {cell!r} is not a whole number from 1")
    return int(cell)


def read_pseudo_labels(path: Path, config: Config) -> PseudoLabels:
    """The rows of ``path``, every cell checked: a missing column, a class outside ``data.classes``
    (after the label map), a confidence outside [0, 1], a repeated clip, or two teachers or rounds
    in one file is a DataError naming the file and line."""
    data = _text(path)
    try:
        rows = list(csv.reader(io.StringIO(data.decode("utf-8-sig"), newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error) as problem:
        raise DataError(f"{path}: not a UTF-8 CSV pseudo-label file ({problem})") from None
    rows = [[cell.strip() for cell in row] for row in rows if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path}: empty; a pseudo-label file has the columns {', '.join(COLUMNS)}")
    header = [cell.lower() for cell in rows[0]]
    missing = [column for column in COLUMNS if column not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; a pseudo-label file has "
                        f"{', '.join(COLUMNS)} (written by `mer pseudolabel`)")
    if len(rows) < 2:
        raise DataError(f"{path}: no pseudo-labelled clips")
    at = {column: header.index(column) for column in COLUMNS}
    classes = list(config.data.classes)
    maps = [config.data.label_map]
    clip_ids, labels, confidences, teachers, rounds = [], [], [], set(), set()
    for number, row in enumerate(rows[1:], start=2):
        where = f"{path}:{number}"
        if len(row) < len(header):
            raise DataError(f"{where}: {len(row)} cells, the header has {len(header)}")
        clip_id = validate_clip_id(row[at["name"]], where)
        label = map_label(row[at["discrete"]], maps, classes)
        if label not in classes:
            raise DataError(f"{where}: class {row[at['discrete']]!r} is not one of {', '.join(classes)}")
        if clip_id in clip_ids:
            raise DataError(f"{where}: clip {clip_id!r} is listed more than once")
        clip_ids.append(clip_id)
        labels.append(label)
        confidences.append(_confidence(row[at["confidence"]], where))
        teachers.add(Teacher.parse(row[at["teacher"]], where))
        rounds.add(_round(row[at["round"]], where))
    if len(teachers) > 1 or len(rounds) > 1:
        raise DataError(f"{path}: rows from {len(teachers)} teachers and {len(rounds)} rounds; one file holds the "
                        "pseudo-labels of one teacher and one round")
    return PseudoLabels(path, clip_ids, labels, confidences, teachers.pop(), rounds.pop(),
                        hashlib.sha256(data).hexdigest())


# --- what a run was trained on, round after round ---------------------------------------------


def run_clips(run: Path) -> set[str]:
    """Every clip ``run`` trained or selected on (its pseudo-labelled clips included)."""
    metrics = read_json(run / "metrics.json", f"missing, so the clips teacher {run} trained on cannot be checked")
    seen: set[str] = set()
    for fold in metrics.get("folds", []) if isinstance(metrics, dict) else []:
        if fold.get("train_clip_ids") is None:
            raise DataError(f"{run / 'metrics.json'}: fold {fold.get('fold')} does not record the clips it was "
                            "trained on (a run from an older mer); retrain the teacher")
        seen.update(fold["train_clip_ids"], fold.get("val_clips", []))
    return seen


def lineage_clips(run: Path) -> set[str]:
    """Every clip ``run`` or any teacher before it trained or selected on: what the pseudo-labels
    it writes may carry knowledge of."""
    seen: set[str] = set()
    visited: set[Path] = set()
    current: Path | None = run
    while current is not None and current.resolve() not in visited:
        visited.add(current.resolve())
        seen |= run_clips(current)
        current = _teacher_of(current)
    return seen


def _teacher_of(run: Path) -> Path | None:
    """The teacher of the pseudo-labels ``run`` trained on, if any."""
    document = read_json(run / "config.json", "missing, so the teacher cannot be checked")
    record = document.get("pseudo_labels") if isinstance(document, dict) else None
    try:
        return Path(record["teacher"]["run"]) if record else None
    except (KeyError, TypeError):
        raise DataError(f"{run / 'config.json'}: pseudo_labels does not name its teacher run") from None


def pseudo_round(run_config: dict[str, Any]) -> int:
    """The round of the pseudo-labels a run trained on (0: labels alone)."""
    return int((run_config.get("pseudo_labels") or {}).get("round", 0))


def pseudo_clip_ids(run_config: dict[str, Any]) -> set[str]:
    return set((run_config.get("pseudo_labels") or {}).get("clip_ids", []))


def refuse_labelled(pseudo: PseudoLabels, labelled: Sequence[str], labels_path: Path) -> None:
    """No clip is both labelled and pseudo-labelled."""
    both = sorted(set(pseudo.clip_ids) & set(labelled))
    if both:
        raise DataError(f"{pseudo.path}: {len(both)} of its clips are in the labels file {labels_path} "
                        f"(first: {', '.join(both[:5])}); a clip is either labelled or pseudo-labelled, not both")


def refuse_test_leaks(pseudo: PseudoLabels, test_clips: Sequence[str]) -> set[str]:
    """Refuse a teacher lineage that saw one of the student's test clips; returns what it saw."""
    seen = lineage_clips(pseudo.teacher.run)
    leaked = sorted(seen & set(test_clips))
    if leaked:
        raise DataError(f"{pseudo.path}: its teacher {pseudo.teacher.run} (or a teacher before it) trained or "
                        f"selected on {len(leaked)} of this run's test clips (first: {', '.join(leaked[:5])}); its "
                        "test figure would not be a measurement: use a teacher that never saw them")
    return seen


def provenance(pseudo: PseudoLabels, used: Sequence[str], weight: float, teacher_seen: set[str],
               validation: Sequence[str]) -> dict[str, Any]:
    """What config.json records of the pseudo-labels a run trained on."""
    seen_val = sorted(teacher_seen & set(validation))
    return {"path": str(pseudo.path.resolve()), "sha256": pseudo.sha256, "teacher": pseudo.teacher.to_json(),
            "round": pseudo.round, "weight": weight, "clips": len(used), "clip_ids": list(used),
            "without_features": len(pseudo.clip_ids) - len(used),
            "teacher_saw_validation": {"clips": len(seen_val), "of": len(set(validation))}}


def optimism_note(run: Path, run_config: dict[str, Any]) -> str | None:
    """Why a run's validation figures are optimistic, or ``None`` when they are not."""
    record = run_config.get("pseudo_labels") or {}
    saw = record.get("teacher_saw_validation", {})
    if not saw.get("clips"):
        return None
    return (f"{run.name}: validation figures are optimistic: its teacher {record['teacher']['run']} trained on "
            f"{saw['clips']} of its {saw['of']} validation clips; held-out test clips give the honest figure")

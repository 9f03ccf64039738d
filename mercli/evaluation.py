"""The eval stage: score a run's calibrated predictions with scikit-learn's metrics.

Two modes:

* without a labels file, every fold model re-predicts its own validation clips (from the labels
  file the run was trained on), so one fold and K folds are handled alike; the figures are given
  per fold, as mean ± std over the folds (and over the runs when several seeds are given), and
  pooled over all those out-of-fold predictions;
* with a labels file, every fold model of every run predicts the chosen clips (by default the
  ``test`` split) and the prediction is the mean of their calibrated probabilities (per run, then
  over runs). Clips a run was trained or selected on are refused: a figure measured on them says
  nothing about new clips; so are the clips the teachers of its pseudo-labels saw.

A run trained on pseudo-labels from a teacher that saw its validation clips has optimistic
validation figures: ``notes`` says so, and the tables show it beside them.

The clips are read through :func:`mercli.trainset.build_table`, the function train uses, so every
check train makes on its inputs applies here too, and priors from traces whose reasoner saw the
label are refused for every clip evaluated. The outputs go to ``RUN/eval/`` (or ``--out``):
``metrics.json``, ``predictions.csv`` and ``confusion.png``. Since the calibrated probabilities
alone cannot show what temperature scaling did, ``metrics.json`` also holds ``reliability``: the
reliability-diagram bins of the same predictions before (T = 1) and after calibration. With
``--corrupt`` (mercli.corruptions), the same clips are scored again with their table changed by each
corruption, and ``metrics.json`` holds the figures under ``robustness``.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from mercli.atomic import write_bytes, write_json, write_text
from mercli.calibration import ECE_BINS, calibrated, expected_calibration_error, reliability
from mercli.config import Config
from mercli.errors import DataError, UsageError
from mercli.labels import read_labels
from mercli.pseudolabels import lineage_clips, optimism_note
from mercli.plots import confusion_png
from mercli.runs import TrainedFold, TrainedRun, load_run, resolve_run
from mercli.train import predict_logits, scores
from mercli.trainset import TrainingTable, build_table, check_expected_inputs, refuse_label_leaks
from mercli.vocabulary import pick_device, split_named
from mercli.workspace import Workspace

#: The single-number figures, in the order tables show them.
SCALARS = ("waf", "accuracy", "macro_f1", "uar", "ece")


def metrics(y_true: Sequence[int], probabilities: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Every figure eval reports, from class indices and per-class probabilities.

    WAF, macro-F1 and accuracy are those train selects epochs with (:func:`mercli.train.scores`:
    scikit-learn's weighted and macro F1 over the classes that occur, and its accuracy); UAR is the
    recall averaged over the classes present in ``y_true`` (scikit-learn's balanced accuracy);
    per-class figures and the confusion matrix (rows: true class) cover every class. ECE comes from
    :func:`mercli.calibration.expected_calibration_error`, as scikit-learn has none.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support, recall_score

    y_true = np.asarray(y_true, dtype=np.int64)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predicted = probabilities.argmax(axis=1)
    every = list(range(len(classes)))
    main = scores(y_true, predicted)
    precision, recall, f1, support = precision_recall_fscore_support(y_true, predicted, labels=every, zero_division=0)
    return {
        "classes": list(classes),
        "waf": main["waf"],
        "accuracy": main["accuracy"],
        "macro_f1": main["macro_f1"],
        "uar": float(recall_score(y_true, predicted, labels=np.unique(y_true), average="macro", zero_division=0)),
        "ece": expected_calibration_error(y_true, probabilities),
        "per_class": {name: {"precision": float(precision[k]), "recall": float(recall[k]), "f1": float(f1[k]),
                             "support": int(support[k])} for k, name in enumerate(classes)},
        "confusion": confusion_matrix(y_true, predicted, labels=every).tolist(),
    }


@dataclass
class MemberPredictions:
    """One fold model's calibrated probabilities on the clips it was asked about, and the
    uncalibrated ones (T = 1) they came from."""

    run: Path
    fold: int
    temperature: float
    clip_ids: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    uncalibrated: np.ndarray


@dataclass
class Evaluation:
    """What was evaluated and the figures. ``clip_ids``/``labels``/``probabilities`` are the
    pooled out-of-fold predictions (validation mode; ``origins`` says which run and fold made each
    row) or the fold-averaged ones (labels mode); ``uncalibrated`` are the same predictions at
    T = 1; ``labels_file`` is the labels file of labels mode (validation mode: each run's own)."""

    mode: str
    source: str
    classes: list[str]
    runs: list[Path]
    members: list[MemberPredictions]
    clip_ids: list[str]
    labels: np.ndarray
    probabilities: np.ndarray
    uncalibrated: np.ndarray
    excluded: list[str]
    out: Path
    origins: list[tuple[str, int]] | None = None
    notes: list[str] = field(default_factory=list)
    labels_file: Path | None = None
    #: ``mer eval --corrupt``: the figures per corruption and level (mercli.corruptions)
    robustness: dict[str, Any] | None = None
    figures: dict[str, Any] = field(init=False)
    member_figures: list[dict[str, Any]] = field(init=False)

    def __post_init__(self) -> None:
        self.figures = metrics(self.labels, self.probabilities, self.classes)
        self.member_figures = [
            {"run": str(m.run), "fold": m.fold, "temperature": m.temperature, "clips": len(m.clip_ids),
             **{k: v for k, v in metrics(m.labels, m.probabilities, self.classes).items() if k != "classes"}}
            for m in self.members
        ]

    @functools.cached_property
    def predictions_file(self) -> bytes:
        """predictions.csv as it is written, made once: metrics.json names it by its SHA-256."""
        return predictions_csv(self).encode("utf-8")

    def reliability(self) -> dict[str, Any]:
        """The reliability-diagram bins (see :func:`mercli.calibration.reliability`) and the ECE
        of the predictions before and after temperature scaling."""
        return {"bins": ECE_BINS,
                "before": reliability(self.labels, self.uncalibrated),
                "after": reliability(self.labels, self.probabilities),
                "ece_before": expected_calibration_error(self.labels, self.uncalibrated),
                "ece_after": self.figures["ece"]}

    def spread(self) -> tuple[dict[str, float], dict[str, float | None]]:
        """Mean and sample standard deviation of each figure over the fold models (``None`` with
        one model: a spread needs two)."""
        columns = {k: [f[k] for f in self.member_figures] for k in SCALARS}
        mean = {k: float(np.mean(v)) for k, v in columns.items()}
        std = {k: (statistics.stdev(v) if len(v) > 1 else None) for k, v in columns.items()}
        return mean, std

    def to_json(self) -> dict[str, Any]:
        mean, std = self.spread()
        return {**self.figures, "mode": self.mode, "source": self.source, "runs": [str(r) for r in self.runs],
                "clips": len(self.clip_ids), "excluded": self.excluded, "folds": self.member_figures,
                "mean": mean, "std": std, "notes": self.notes, "reliability": self.reliability(), "out": str(self.out),
                "labels_file": None if self.labels_file is None else str(self.labels_file),
                **({} if self.robustness is None else {"robustness": self.robustness}),
                PREDICTIONS_DIGEST: predictions_digest(self.predictions_file)}


# --- which runs -------------------------------------------------------------------------------


def _compatible(runs: Sequence[TrainedRun]) -> None:
    """Several runs are aggregated as seeds of one set-up: same classes, same feature sets."""
    first = runs[0]
    for other in runs[1:]:
        if other.classes != first.classes or set(other.config["manifests"]) != set(first.config["manifests"]):
            raise DataError(f"{other.path}: its classes or feature sets differ from those of {first.path}; "
                            "evaluate them separately")


# --- the clips --------------------------------------------------------------------------------


def _with_classes(config: Config, run: TrainedRun) -> Config:
    """``config`` with the run's class list: the network outputs those, whatever mer.toml says now."""
    return config.with_overrides({"data.classes": run.classes}, str(run.path / "config.json"))


#: A change of the table the runs are scored on (mercli.corruptions: corrupted or dropped features).
TableChange = Callable[[TrainingTable], TrainingTable]


def _run_table(config: Config, workspace: Workspace, run: TrainedRun, labels: Path,
               change: TableChange | None = None) -> TrainingTable:
    """The clips of ``labels`` with the run's feature sets, through the table train builds."""
    table = build_table(_with_classes(config, run), workspace.features, labels, list(run.config["manifests"]))
    check_expected_inputs(table.sets, run.config["manifests"], str(run.path / "config.json"))
    return table if change is None else change(table)


def _predict(run: TrainedRun, fold: TrainedFold, table: TrainingTable, indices: Sequence[int],
             device_name: str) -> MemberPredictions:
    device = pick_device(device_name)
    logits = predict_logits(fold.model.to(device), table, indices, device).numpy()
    return MemberPredictions(run.path, fold.fold, fold.temperature, [table.clip_ids[i] for i in indices],
                             table.labels[np.asarray(indices, dtype=np.int64)], calibrated(logits, fold.temperature),
                             calibrated(logits))


def _validation_members(config: Config, workspace: Workspace, runs: Sequence[TrainedRun],
                        change: TableChange | None = None) -> list[MemberPredictions]:
    members, tables = [], {}
    for run in runs:
        labels = Path(str(run.config.get("labels", "")))
        if not labels.is_file():
            raise DataError(f"{run.path / 'config.json'}: the labels file the run was trained on ({labels}) is "
                            "missing; evaluate with --labels")
        if labels not in tables:
            tables[labels] = _run_table(config, workspace, run, labels, change)
        table = tables[labels]
        position = {clip: i for i, clip in enumerate(table.clip_ids)}
        for fold in run.folds:
            lost = [clip for clip in fold.val_clips if clip not in position]
            if lost:
                raise DataError(f"{labels}: {len(lost)} validation clips of fold {fold.fold} of {run.path} are no "
                                f"longer labelled there with features (first: {', '.join(lost[:5])})")
            indices = [position[c] for c in fold.val_clips]
            refuse_label_leaks(table, indices, "validation")
            members.append(_predict(run, fold, table, indices, config.train.device))
    return members


def _seen_clips(runs: Sequence[TrainedRun]) -> set[str]:
    """Every clip the runs, or the teachers of their pseudo-labels, were trained or selected on."""
    seen: set[str] = set()
    for run in runs:
        teacher = (run.config.get("pseudo_labels") or {}).get("teacher")
        if teacher:
            seen |= lineage_clips(Path(teacher["run"]))
        for fold in run.folds:
            if fold.train_clip_ids is None:
                raise DataError(f"{run.path / 'metrics.json'}: the run predates the record of its training clips, "
                                "so held-out clips cannot be told apart; retrain it or pass --allow-train-clips")
            seen.update(fold.train_clip_ids, fold.val_clips)
    return seen


def _labels_members(config: Config, workspace: Workspace, runs: Sequence[TrainedRun], labels: Path,
                    split: str | None, allow_train_clips: bool, change: TableChange | None = None
                    ) -> tuple[list[MemberPredictions], list[str], str]:
    """Every fold model's predictions on the chosen rows of ``labels``, the chosen rows without
    features, and the rows' description."""
    table = _run_table(config, workspace, runs[0], labels, change)
    if split is None:
        wanted = "test" if any(s is not None for s in table.splits) else None
    else:
        wanted = None if split == "all" else split
    chosen = [i for i, s in enumerate(table.splits) if wanted is None or s == wanted]
    rows = f"split {wanted}" if wanted else "all rows"
    if not chosen:
        raise DataError(f"{labels}: no labelled clips with features to evaluate ({rows})")
    if not allow_train_clips:
        seen = _seen_clips(runs)
        reused = [table.clip_ids[i] for i in chosen if table.clip_ids[i] in seen]
        if reused:
            raise DataError(f"{labels}: {len(reused)} of the {len(chosen)} clips to evaluate were used to train or "
                            f"select the run (first: {', '.join(reused[:5])}); evaluate held-out clips or pass "
                            "--allow-train-clips")
    refuse_label_leaks(table, chosen, "evaluated")
    lacking = set(table.excluded)
    excluded = [clip.clip_id for clip in read_labels(labels, _with_classes(config, runs[0]))
                if clip.clip_id in lacking and (wanted is None or clip.split == wanted)]
    members = [_predict(run, fold, table, chosen, config.train.device) for run in runs for fold in run.folds]
    return members, excluded, f"{labels} ({rows})"


def _run_mean(members: Sequence[MemberPredictions], runs: Sequence[Path], kind: str) -> np.ndarray:
    """The mean over runs of each run's mean over its fold models of ``kind`` (``probabilities``
    or ``uncalibrated``), so that a run of many folds weighs as much as a run of few."""
    return np.mean([np.mean([getattr(m, kind) for m in members if m.run == run], axis=0) for run in runs], axis=0)


# --- the run of the command -------------------------------------------------------------------


def output_folder(runs: Sequence[Path], out: Path | None) -> Path:
    if out is not None:
        return out
    if len(runs) > 1:
        raise DataError("several runs are evaluated together: name the folder for their figures with --out")
    return runs[0] / "eval"


#: ``mer eval --corrupt`` (mercli.corruptions.Robustness): given the clean evaluation and a function
#: that scores the same clips under a change of their table, the ``robustness`` section.
RobustnessCheck = Callable[["Evaluation", Callable[[TableChange], "Evaluation"]], dict[str, Any]]


def _split_option(spelling: str) -> str:
    """``--split``: a split as :func:`~mercli.vocabulary.split_named` reads it, or ``all``."""
    if spelling.strip().lower() == "all":
        return "all"
    try:
        return split_named(spelling)
    except ValueError as problem:
        raise UsageError(f"--split: {problem} or all") from None


def evaluate(config: Config, workspace: Workspace, checkpoints: Sequence[str] = (), *, labels: Path | None = None,
             split: str | None = None, allow_train_clips: bool = False, out: Path | None = None,
             robustness: RobustnessCheck | None = None) -> Evaluation:
    """Evaluate the runs named by ``checkpoints`` (default: the newest run) and write
    metrics.json, predictions.csv and confusion.png to ``out`` (default ``RUN/eval``); with
    ``robustness``, also how the figures fall under its corruptions. ``split`` (with ``labels``):
    a split in any spelling a labels file may use, or ``all``; default test where the labels give
    splits."""
    split = None if split is None else _split_option(split)
    named = [resolve_run(workspace, c) for c in checkpoints] or [resolve_run(workspace, None)]
    paths = list({path.resolve(): path for path in named}.values())  # a run named twice counts once
    folder = output_folder(paths, out)
    runs = [load_run(path) for path in paths]
    _compatible(runs)

    def score(change: TableChange | None = None) -> Evaluation:
        return _score(config, workspace, runs, paths, folder, labels, split, allow_train_clips, change)

    evaluation = score()
    if robustness is not None:
        evaluation.robustness = robustness(evaluation, score)
    write_outputs(evaluation)
    return evaluation


def _score(config: Config, workspace: Workspace, runs: Sequence[TrainedRun], paths: list[Path], folder: Path,
           labels: Path | None, split: str | None, allow_train_clips: bool, change: TableChange | None) -> Evaluation:
    """The runs' figures on their clips, the table of those clips changed by ``change``."""
    classes = runs[0].classes
    if labels is None:
        members = _validation_members(config, workspace, runs, change)
        return Evaluation(
            "validation", "each fold's validation clips", classes, paths, members,
            [c for m in members for c in m.clip_ids], np.concatenate([m.labels for m in members]),
            *(np.concatenate([getattr(m, kind) for m in members]) for kind in ("probabilities", "uncalibrated")),
            [], folder, origins=[(m.run.name, m.fold) for m in members for _ in m.clip_ids],
            notes=[note for run in runs if (note := optimism_note(run.path, run.config))])
    members, excluded, source = _labels_members(config, workspace, runs, labels, split, allow_train_clips, change)
    return Evaluation("labels", source, classes, paths, members, members[0].clip_ids, members[0].labels,
                      *(_run_mean(members, paths, kind) for kind in ("probabilities", "uncalibrated")),
                      excluded, folder, labels_file=labels.resolve())


# --- files ------------------------------------------------------------------------------------


def _csv(rows: Sequence[Sequence[Any]]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def predictions_csv(evaluation: Evaluation) -> str:
    """One row per prediction: clip, (run, fold,) true label, predicted class, one probability per class."""
    classes = evaluation.classes
    origin_columns = ["run", "fold"] if evaluation.origins else []
    rows: list[list[Any]] = [["clip", *origin_columns, "label", "predicted", *(f"p_{c}" for c in classes)]]
    for row, (clip, label, probabilities) in enumerate(zip(evaluation.clip_ids, evaluation.labels,
                                                           evaluation.probabilities)):
        origin = list(evaluation.origins[row]) if evaluation.origins else []
        rows.append([clip, *origin, classes[label], classes[int(probabilities.argmax())],
                     *(f"{p:.6f}" for p in probabilities)])
    return _csv(rows)


#: The key of metrics.json that names, by its SHA-256, the predictions.csv written with it.
PREDICTIONS_DIGEST = "predictions_sha256"


def predictions_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_outputs(evaluation: Evaluation) -> None:
    """metrics.json, predictions.csv and confusion.png; metrics.json last, naming the predictions
    it goes with, so that an evaluation stopped between two files (Ctrl-C, a full disk) is not
    read as one (``mer report`` checks)."""
    folder = evaluation.out
    write_bytes(folder / "predictions.csv", evaluation.predictions_file)
    title = f"WAF {evaluation.figures['waf']:.3f} ({len(evaluation.clip_ids)} predictions)"
    write_bytes(folder / "confusion.png", confusion_png(evaluation.figures["confusion"], evaluation.classes, title))
    write_json(folder / "metrics.json", evaluation.to_json())


def write_submission(path: Path, evaluation: Evaluation) -> None:
    """A MER2024 submission: ``name,discrete``, one row per evaluated clip with its predicted class."""
    if evaluation.mode != "labels":
        raise DataError(f"{path}: a submission needs the clips of a labels file (--labels)")
    predicted = evaluation.probabilities.argmax(axis=1)
    write_name_discrete(path, [(clip, evaluation.classes[int(k)]) for clip, k in zip(evaluation.clip_ids, predicted)])


def write_name_discrete(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """The MER2024 submission layout, ``name,discrete``, written atomically."""
    write_text(path, _csv([["name", "discrete"], *rows]))

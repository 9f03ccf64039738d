"""mer from Python, for notebooks and scripts: the stages as functions, and a trained run that
predicts with its models loaded once for as many calls as the notebook makes.

    from mercli import api as mer
    mer.extract("clips", labels="clips/labels.csv", encoders="egemaps", workspace="ws")
    mer.reason("clips", workspace="ws")
    mer.train("clips/labels.csv", folds=2, epochs=20, name="first", workspace="ws")
    print(mer.evaluate("first", workspace="ws").figures["waf"])
    run = mer.load_run("first", workspace="ws")
    for p in run.predict(["a.mp4", "b.wav"]):
        print(p.clip, p.label, p.probs, p.modalities)

Each stage function is the command of the same name (``evaluate`` is ``mer eval``): its arguments
and options are keywords of the same names (``--group-column`` is ``group_column``), and one left
at ``None`` takes the configuration's value, as an omitted option does. A value given is a
command-line setting, checked with the others when the configuration loads, so a wrong one raises
the :class:`~mercli.errors.ConfigError` whose line the command prints. Every function also takes
``workspace`` (default: found as ``mer`` finds it: ``MER_WORKSPACE``, else the nearest folder
holding ``mer.toml``, else the current one), ``config`` (a ``mer.toml`` path, ``-c``) and
``settings`` (``-s``: ``{"train.epochs": 5}``). It returns what the command prints with ``--json``
(``.to_json()`` gives that document) and raises :class:`~mercli.errors.MerError` where the command
prints an error and stops; items that fail on their own are listed in the result, as the command
lists them.
Nothing is written to stdout, and progress bars (stderr) show only with ``progress=True``.

The stage modules of the core bear the commands' names (``mercli.extract``, ``mercli.train``), so
the functions live here rather than on the package.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Iterator, Mapping, Sequence, Union

import mercli.config as configuration
from mercli.console import progress_shown
from mercli.errors import UsageError
from mercli.workspace import Workspace

if TYPE_CHECKING:  # the stages' modules load torch and friends: imported when a stage runs
    from mercli.batch_reason import BatchSummary
    from mercli.evaluation import Evaluation
    from mercli.extract import ExtractSummary
    from mercli.predict import Prediction, Predictor
    from mercli.reason import ReasonSummary
    from mercli.report_html import ReportResult
    from mercli.runs import TrainedRun
    from mercli.teacher import PseudoLabelSummary
    from mercli.train import RunResult

PathLike = Union[str, "os.PathLike[str]"]
Names = Union[str, Sequence[str]]

__all__ = ["Run", "evaluate", "extract", "load_run", "predict", "pseudolabel", "reason", "report", "train",
           "write_submission"]

WORKSPACE_VARIABLE = "MER_WORKSPACE"  # as `mer -w` reads it


# --- what every stage shares ------------------------------------------------------------------


def _path(value: PathLike | None) -> Path | None:
    return None if value is None else Path(value).expanduser()


def _names(value: Names | None) -> list[str]:
    """One name or several (a run, a corruption spec): the command's repeatable option."""
    if value is None:
        return []
    return [str(value)] if isinstance(value, (str, os.PathLike)) else [str(item) for item in value]


def _setting(dotted: str, value: Any) -> Any:
    """A keyword's value as its setting takes it: a list setting also takes comma-separated names,
    as its option does (``encoders="egemaps,whisper"``)."""
    declared = configuration.declaration(dotted)
    if declared is not None and declared.kind is list and not isinstance(value, list):
        return value.split(",") if isinstance(value, str) else list(value)
    return value


def _locate(workspace: PathLike | None) -> Workspace:
    """The workspace ``mer`` would use with ``-w workspace`` (or without it)."""
    return Workspace.locate(_path(workspace if workspace is not None else os.environ.get(WORKSPACE_VARIABLE) or None))


def _configured(located: Workspace, config: PathLike | None, settings: Mapping[str, Any] | None,
                options: Mapping[str, Any] | None = None) -> configuration.Config:
    """The configuration of ``located`` (or the file ``config``) with ``settings`` (``-s``) and then
    the keywords given (``options``, by setting; ``None``: not given) as command-line overrides,
    checked there."""
    given = {dotted: _setting(dotted, value) for dotted, value in (options or {}).items() if value is not None}
    path = _path(config)
    return configuration.load(path or located.config_path, overrides={**(settings or {}), **given},
                              required=path is not None)


def _open(workspace: PathLike | None, config: PathLike | None, settings: Mapping[str, Any] | None,
          options: Mapping[str, Any] | None = None) -> tuple[Workspace, configuration.Config]:
    """The workspace a stage works in, and its configuration."""
    located = _locate(workspace)
    return located, _configured(located, config, settings, options)


# --- the stages ------------------------------------------------------------------------------


def extract(clips_dir: PathLike, *, labels: PathLike | None = None, encoders: Names | None = None,
            fps: float | None = None, workers: int | None = None, batch_size: int | None = None,
            shard: str | None = None, workspace: PathLike | None = None, config: PathLike | None = None,
            settings: Mapping[str, Any] | None = None, progress: bool = False) -> ExtractSummary:
    """``mer extract``: the feature sets of every clip of ``clips_dir`` (resumable; ``shard="K/N"``
    does one shard). Clips that fail are listed in the summary's ``failed``."""
    from mercli.extract import Shard, extract_folder

    space, loaded = _open(workspace, config, settings, {"extract.encoders": encoders, "extract.fps": fps,
                                                        "extract.workers": workers, "extract.batch_size": batch_size})
    with progress_shown(progress):
        return extract_folder(loaded, space, Path(clips_dir), _path(labels), Shard.parse(shard) if shard else None)


def reason(clips_dir: PathLike, *, model: str | None = None, labels: PathLike | None = None,
           concurrency: int | None = None, rpm: float | None = None, max_cost: float | None = None,
           dry_run: bool = False, retry_failed: bool = False, label_conditioned: bool = False, no_embed: bool = False,
           batch: bool = False, wait: bool = False, workspace: PathLike | None = None, config: PathLike | None = None,
           settings: Mapping[str, Any] | None = None, progress: bool = False) -> ReasonSummary | BatchSummary:
    """``mer reason``: a reasoning trace per clip of ``clips_dir`` (``model="gemini:gemini-2.5-pro"``
    picks the reasoner and its model), then the prior feature sets unless ``no_embed``. Clips that
    fail, are skipped or were not reached (``stopped``: the budget, a refused key) are in the summary."""
    from mercli.batch_reason import reason_batch
    from mercli.reason import parse_model, reason_folder

    if wait and not batch:
        raise UsageError("--wait: only with --batch")
    if batch and rpm is not None:
        raise UsageError("--rpm: means nothing with --batch (the service paces batch jobs)")
    chosen: dict[str, Any] = {}
    if model:
        reasoner, name = parse_model(model)
        chosen = {"reason.reasoner": reasoner, f"reasoner.{reasoner}.model": name}
    space, loaded = _open(workspace, config, settings, {"reason.concurrency": concurrency,
                                                        "reason.requests_per_minute": rpm,
                                                        "reason.max_cost": max_cost, **chosen})
    asked = dict(labels=_path(labels), label_conditioned=label_conditioned, retry_failed=retry_failed,
                 dry_run=dry_run, embed=not no_embed)
    with progress_shown(progress):
        if batch:
            return reason_batch(loaded, space, Path(clips_dir), wait=wait, **asked)
        return reason_folder(loaded, space, Path(clips_dir), **asked)


def train(labels: PathLike, *, loss: str | None = None, features: Names | None = None, name: str | None = None,
          group_column: str | None = None, folds: int | None = None, epochs: int | None = None,
          batch_size: int | None = None, lr: float | None = None, weight_decay: float | None = None,
          seed: int | None = None, deterministic: bool | None = None, fold_workers: int | None = None,
          priors: bool | None = None, pseudo_labels: PathLike | None = None, pseudo_weight: float | None = None,
          workspace: PathLike | None = None, config: PathLike | None = None,
          settings: Mapping[str, Any] | None = None, progress: bool = False) -> RunResult:
    """``mer train``: train the fusion network on the clips of ``labels`` and write ``runs/NAME/``
    (``folds`` for k-fold cross-validation, ``group_column`` to hold out whole groups)."""
    from mercli.console import fold_progress
    from mercli.train import train as train_run

    space, loaded = _open(workspace, config, settings, {
        "train.loss": loss, "train.features": features, "train.epochs": epochs, "train.batch_size": batch_size,
        "train.lr": lr, "train.weight_decay": weight_decay, "train.seed": seed, "train.deterministic": deterministic,
        "train.fold_workers": fold_workers, "train.priors": priors, "pseudolabel.weight": pseudo_weight})
    with progress_shown(progress), fold_progress() as on_epoch:
        return train_run(loaded, space, Path(labels), name=name, group_column=group_column, folds=folds,
                         pseudo_labels=_path(pseudo_labels), on_epoch=on_epoch)


def evaluate(checkpoint: Names | None = None, *, labels: PathLike | None = None, split: str | None = None,
             allow_train_clips: bool = False, out: PathLike | None = None, submission: PathLike | None = None,
             corrupt: Names | None = None, workspace: PathLike | None = None, config: PathLike | None = None,
             settings: Mapping[str, Any] | None = None, progress: bool = False) -> Evaluation:
    """``mer eval``: score the run ``checkpoint`` (a name under ``runs/`` or a folder; several are
    aggregated as seeds; default the newest) on its folds' validation clips, or on ``labels``;
    writes metrics.json, predictions.csv and confusion.png to ``out`` (default ``RUN/eval``).
    ``corrupt`` specs (``"audio-noise:snr=20,10"``) also score corrupted copies; levels that fail
    are in ``robustness``."""
    from mercli.corruptions import Robustness, parse_specs
    from mercli.evaluation import evaluate as evaluate_runs, write_submission as write_evaluated

    if labels is None and (split or submission or allow_train_clips):
        raise UsageError("--split, --submission and --allow-train-clips need --labels")
    space, loaded = _open(workspace, config, settings)
    specs = _names(corrupt)
    robustness = Robustness(loaded, space, parse_specs(specs)) if specs else None
    with progress_shown(progress):
        evaluation = evaluate_runs(loaded, space, _names(checkpoint), labels=_path(labels), split=split,
                                   allow_train_clips=allow_train_clips, out=_path(out), robustness=robustness)
    if submission is not None:
        write_evaluated(Path(submission), evaluation)
    return evaluation


def pseudolabel(clips_dir: PathLike, *, checkpoint: PathLike | None = None, out: PathLike | None = None,
                agree_with: str | None = None, workspace: PathLike | None = None, config: PathLike | None = None,
                settings: Mapping[str, Any] | None = None) -> PseudoLabelSummary:
    """``mer pseudolabel``: label the clips of ``clips_dir`` with the run ``checkpoint`` (default the
    newest) and write the confident, class-balanced share kept to ``out``."""
    from mercli.teacher import pseudolabel as label_pool

    space, loaded = _open(workspace, config, settings, {"pseudolabel.agree_with": agree_with})
    return label_pool(loaded, space, Path(clips_dir), None if checkpoint is None else str(checkpoint), _path(out))


def report(runs: Names, *, out: PathLike | None = None, gallery: int | None = None,
           workspace: PathLike | None = None, config: PathLike | None = None,
           settings: Mapping[str, Any] | None = None) -> ReportResult:
    """``mer report``: one self-contained HTML page comparing ``runs`` (names under ``runs/`` or
    folders), written to ``out`` (default ``RUN/report.html``, or ``reports/A-vs-B.html``)."""
    from mercli.report_html import write_report

    space, loaded = _open(workspace, config, settings, {"report.gallery": gallery})
    return write_report(loaded, space, _names(runs), _path(out))


# --- prediction --------------------------------------------------------------------------------


class Run:
    """A trained run ready to predict. The encoders and the reasoner are built on the first call of
    :meth:`predict` and kept for the next ones."""

    def __init__(self, trained: TrainedRun, workspace: Workspace, config: configuration.Config) -> None:
        self.trained = trained
        self.workspace = workspace
        self.config = config
        self._predictor: Predictor | None = None

    @property
    def path(self) -> Path:
        return self.trained.path

    @property
    def classes(self) -> list[str]:
        return self.trained.classes

    def predict(self, paths: Iterable[PathLike] | PathLike) -> Iterator[Prediction]:
        """A prediction for every clip under ``paths`` (files, or folders searched for clips), in
        order, each as it is made; a clip that cannot be predicted has ``error`` set."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return self._predictor_once().predict_all([Path(path) for path in paths])

    def _predictor_once(self) -> Predictor:
        from mercli.predict import Predictor

        if self._predictor is None:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mercli.extract.extract_clips
            self._predictor = Predictor(self.config, self.workspace, self.trained)
        return self._predictor

    def __repr__(self) -> str:
        return f"<mercli.Run {self.path} ({len(self.trained.folds)} folds, classes {', '.join(self.classes)})>"


def load_run(run: PathLike | None = None, workspace: PathLike | None = None,
             settings: Mapping[str, Any] | None = None, *, config: PathLike | None = None) -> Run:
    """The run ``run`` (a folder, or a run name under the workspace's ``runs/``; default the newest,
    as ``mer predict`` without ``--checkpoint``), checked complete.

    ``workspace`` defaults to the one holding the run folder (``WORKSPACE/runs/NAME``), else the
    one ``mer`` would find; ``config`` and ``settings`` are read as ``-c`` and ``-s`` are.
    """
    from mercli.runs import load_run as load_trained_run, resolve_run

    folder = None if run is None else Path(run).expanduser()
    if workspace is None and folder is not None and folder.parent.name == "runs" and folder.is_dir():
        located = Workspace(folder.parent.parent.resolve())
    else:
        located = _locate(workspace)
    trained = load_trained_run(resolve_run(located, None if run is None else str(run)))
    return Run(trained, located, _configured(located, config, settings))


def predict(paths: Iterable[PathLike] | PathLike, *, checkpoint: PathLike | None = None,
            submission: PathLike | None = None, workspace: PathLike | None = None, config: PathLike | None = None,
            settings: Mapping[str, Any] | None = None) -> list[Prediction]:
    """``mer predict``: a prediction for every clip under ``paths`` from the run ``checkpoint``
    (default the newest); ``submission`` also writes them as a MER2024 submission CSV. To predict
    again with the same models loaded, keep a :func:`load_run` instead."""
    predictions = list(load_run(checkpoint, workspace, settings, config=config).predict(paths))
    if submission is not None:
        write_submission(submission, predictions)
    return predictions


def write_submission(path: PathLike, predictions: Iterable[Prediction]) -> None:
    """A MER2024 submission CSV (``name,discrete``) of the clips predicted (failed ones left out)."""
    from mercli.evaluation import write_name_discrete

    write_name_discrete(Path(path), [(Path(p.clip).stem, p.label) for p in predictions if not p.error])

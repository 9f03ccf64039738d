"""mer from Python, for notebooks and scripts: a trained run that predicts, with its models loaded
once for as many calls as the notebook makes.

    import mercli
    run = mercli.load_run("workspace/runs/bdcl")
    for p in run.predict(["a.mp4", "b.wav"]):
        print(p.clip, p.label, p.probs, p.modalities)

It is the same core that ``mer predict`` runs: the same checks of the run folder, the same encoders
rebuilt from the run's manifests, the same reasoner for its priors and the same calibrated average
of its folds. Errors are :class:`mercli.errors.MerError` with the one-line message the command
prints; a clip that cannot be predicted is a :class:`~mercli.predict.Prediction` with ``error`` set.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping

import mercli.config as configuration
from mercli.predict import Prediction, Predictor
from mercli.runs import TrainedRun, load_run as load_trained_run, resolve_run
from mercli.workspace import Workspace


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

    def predict(self, paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str]) -> Iterator[Prediction]:
        """A prediction for every clip under ``paths`` (files, or folders searched for clips), in order."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        return self._predictor_once().predict_all([Path(path) for path in paths])

    def _predictor_once(self) -> Predictor:
        if self._predictor is None:
            os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mercli.extract.extract_clips
            self._predictor = Predictor(self.config, self.workspace, self.trained)
        return self._predictor

    def __repr__(self) -> str:
        return f"<mercli.Run {self.path} ({len(self.trained.folds)} folds, classes {', '.join(self.classes)})>"


def load_run(run: str | os.PathLike[str], workspace: str | os.PathLike[str] | None = None,
             settings: Mapping[str, Any] | None = None) -> Run:
    """The run ``run`` (a folder, or a run name under the workspace's ``runs/``), checked complete.

    ``workspace`` defaults to the one holding the run folder (``WORKSPACE/runs/NAME``), else the
    one ``mer`` would find from the current folder; ``settings`` overrides settings as ``-s`` does
    (``{"reason.concurrency": 2}``). The workspace's ``mer.toml`` is read as the command reads it.
    """
    folder = Path(run).expanduser()
    if workspace is None and folder.parent.name == "runs" and folder.is_dir():
        located = Workspace(folder.parent.parent.resolve())
    else:
        located = Workspace.locate(Path(workspace) if workspace is not None else None)
    config = configuration.load(located.config_path, overrides=dict(settings or {}))
    return Run(load_trained_run(resolve_run(located, str(run))), located, config)

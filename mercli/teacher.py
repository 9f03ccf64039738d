"""The teacher side of self-training: ``mer pseudolabel`` labels a pool of unlabelled clips.

The run's fold ensemble (mercli.ensemble: the mean of the folds' calibrated probabilities, as
``mer predict`` gives them) predicts every clip of the folder that has features in the workspace's
feature sets the run was trained on; the clips the run was trained or selected on as labelled
clips are skipped (they have labels). Which predictions are kept is class-balanced, so that the
frequent classes do not drown the rare ones ([pseudolabel] in mer.toml):

* ``quota``: each class keeps at most ``fraction`` x pool x its share of the teacher's labelled
  clips, its most confident clips first (none below ``min_confidence``);
* ``threshold``: a clip is kept when its confidence reaches its predicted class's threshold
  (``thresholds``, else ``threshold``).

With ``agree_with`` (a reasoner, optionally ``:model``), a reasoner's traces judge too: under
``agreement = "require"`` only clips whose trace's overall emotion is the predicted class can be
kept; under ``"weight"`` the selection is unchanged and the confidence written for a clip without an
agreeing trace is multiplied by ``disagree_weight``. The file is written atomically in the layout
of mercli.pseudolabels.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from mercli.atomic import write_text
from mercli.clips import scan
from mercli.config import Config
from mercli.ensemble import ensemble_probabilities
from mercli.errors import ConfigError, DataError, writing
from mercli.labels import map_label, read_labels
from mercli.prompts import PROMPT_VERSIONS
from mercli.pseudolabels import Teacher, pseudo_clip_ids, pseudo_labels_csv, pseudo_round
from mercli.runs import TrainedRun, load_run, resolve_run
from mercli.settings import PseudolabelSettings
from mercli.traces import list_trace_stores
from mercli.trainset import TrainingTable, check_expected_inputs, choose_sets, clip_table, refuse_label_leaks
from mercli.vocabulary import pick_device
from mercli.workspace import Workspace


# --- selection --------------------------------------------------------------------------------


def class_thresholds(settings: PseudolabelSettings, classes: Sequence[str]) -> np.ndarray:
    """Each class's confidence threshold: ``thresholds[class]``, else ``threshold`` (each one's
    range is checked as the configuration loads; the class names here, against the run's)."""
    given = settings.thresholds
    unknown = sorted(set(given) - set(classes))
    if unknown:
        raise ConfigError(f"[pseudolabel] thresholds: no class named {', '.join(unknown)} "
                          f"(classes: {', '.join(classes)})")
    return np.array([float(given.get(name, settings.threshold)) for name in classes])


def select_by_threshold(predicted: np.ndarray, confidence: np.ndarray, eligible: np.ndarray,
                        thresholds: np.ndarray) -> np.ndarray:
    """Keep a clip whose confidence reaches its predicted class's threshold."""
    return eligible & (confidence >= thresholds[predicted])


def class_quotas(pool: int, prior: np.ndarray, fraction: float) -> np.ndarray:
    """How many clips each class may keep: ``fraction`` x ``pool`` spread by ``prior``, rounded."""
    return np.floor(fraction * pool * prior / prior.sum() + 0.5).astype(np.int64)


def select_by_quota(predicted: np.ndarray, confidence: np.ndarray, eligible: np.ndarray, quotas: np.ndarray,
                    min_confidence: float) -> np.ndarray:
    """Keep each class's most confident eligible clips, up to its quota, none below ``min_confidence``."""
    kept = np.zeros(len(predicted), dtype=bool)
    for k, quota in enumerate(quotas):
        members = np.flatnonzero(eligible & (predicted == k) & (confidence >= min_confidence))
        ranked = members[np.argsort(-confidence[members], kind="stable")]
        kept[ranked[:quota]] = True
    return kept


# --- agreement with a reasoner's traces ---------------------------------------------------------


def trace_emotions(config: Config, workspace: Workspace, spec: str, clip_ids: Sequence[str]) -> dict[str, str]:
    """The overall emotion (as a class name, through the label map) of every clip of ``clip_ids``
    that the reasoner ``spec`` (``reasoner[:model]``) has a trace of, from its newest prompt version
    where it was asked in several; label-conditioned traces are never used (their reasoner saw a
    label)."""
    reasoner, _, model = spec.partition(":")
    stores = [s for s in list_trace_stores(workspace.reasoning) if not s.source.label_conditioned
              and s.source.reasoner == reasoner and (not model or s.source.model == model)]
    if len({s.source.model for s in stores}) != 1:
        found = ", ".join(str(s.folder) for s in stores) or "none"
        raise DataError(f"[pseudolabel] agree_with {spec!r}: needs the traces of one model of that reasoner "
                        f"under {workspace.reasoning}, found {found}; name the model as reasoner:model")
    maps, classes = [config.data.label_map], config.data.classes
    traces: dict[str, dict[str, Any]] = {}
    for store in stores:
        for clip in set(store.clip_ids()).intersection(clip_ids):
            trace = store.read(clip)
            if clip not in traces or prompt_rank(trace) > prompt_rank(traces[clip]):
                traces[clip] = trace
    return {clip: map_label(trace["overall"]["emotion"], maps, classes) for clip, trace in traces.items()}


def prompt_rank(trace: Mapping[str, Any]) -> int:
    """How new the prompt a trace answered is (-1: not one of mer's own)."""
    version = trace["provenance"]["prompt_version"]
    return PROMPT_VERSIONS.index(version) if version in PROMPT_VERSIONS else -1


def agreement(predicted: Sequence[str], clip_ids: Sequence[str], emotions: Mapping[str, str]) -> np.ndarray:
    """Whether each clip's trace names its predicted class (no trace: no agreement)."""
    return np.array([emotions.get(clip) == label for clip, label in zip(clip_ids, predicted)], dtype=bool)


# --- the command ------------------------------------------------------------------------------


@dataclass
class PseudoLabelSummary:
    """What ``mer pseudolabel`` did, per class: clips predicted as it, kept and dropped."""

    out: Path
    teacher: Teacher
    round: int
    selection: PseudolabelSettings
    classes: list[str]
    predicted: list[int]
    kept: list[int]
    teacher_clips: int = 0
    without_features: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        per_class = {c: {"predicted": p, "kept": k, "dropped": p - k}
                     for c, p, k in zip(self.classes, self.predicted, self.kept)}
        return {"out": str(self.out), "teacher": self.teacher.to_json(), "round": self.round,
                "selection": self.selection.to_json(), "pool": sum(self.predicted), "kept": sum(self.kept),
                "dropped": sum(self.predicted) - sum(self.kept), "classes": per_class,
                "teacher_clips_skipped": self.teacher_clips, "without_features": self.without_features,
                "refused": self.refused}


def labelled_clips(run: TrainedRun) -> set[str]:
    """The clips ``run`` trained or selected on as labelled clips (its pseudo-labelled ones aside)."""
    seen = {clip for fold in run.folds for clip in [*(fold.train_clip_ids or []), *fold.val_clips]}
    return seen - pseudo_clip_ids(run.config)


def labelled_prior(config: Config, run: TrainedRun) -> np.ndarray:
    """Each class's share of the labelled clips the teacher learnt from (its labels file)."""
    labels = Path(str(run.config.get("labels", "")))
    if not labels.is_file():
        raise DataError(f"{run.path / 'config.json'}: the labels file the run was trained on ({labels}) is missing; "
                        "the quota selection needs its class prior (or use selection = \"threshold\")")
    used = labelled_clips(run)
    counts = Counter(c.label for c in read_labels(labels, config) if c.clip_id in used)
    prior = np.array([counts.get(name, 0) for name in run.classes], dtype=np.float64)
    if not prior.sum():
        raise DataError(f"{labels}: none of the clips the run was trained on is labelled there any more")
    return prior


def _keep(config: Config, run: TrainedRun, predicted: np.ndarray, confidence: np.ndarray,
          eligible: np.ndarray) -> np.ndarray:
    settings = config.pseudolabel
    if settings.selection == "threshold":
        return select_by_threshold(predicted, confidence, eligible, class_thresholds(settings, run.classes))
    quotas = class_quotas(len(predicted), labelled_prior(config, run), settings.fraction)
    return select_by_quota(predicted, confidence, eligible, quotas, settings.min_confidence)


def default_out(workspace: Workspace, run: Path, round_: int) -> Path:
    return workspace.root / "pseudolabels" / f"{run.name}-round{round_}.csv"


def pool_table(workspace: Workspace, run: TrainedRun, clips: Sequence[str]) -> TrainingTable:
    """The clips of ``clips`` with features in the sets ``run`` was trained on, checked as train checks them."""
    sets = choose_sets(workspace.features, list(run.config["manifests"]))
    check_expected_inputs(sets, run.config["manifests"], str(run.path / "config.json"))
    table = clip_table(run.classes, sets, clips)
    refuse_label_leaks(table, range(len(table.clip_ids)), "pseudo-labelled")
    return table


def agreement_factors(config: Config, workspace: Workspace, table: TrainingTable, names: Sequence[str]
                      ) -> tuple[np.ndarray, np.ndarray]:
    """Which clips may be kept (all, unless agreement is required) and the factor on each clip's
    confidence (1, or ``disagree_weight`` under agreement by weight), from ``agree_with``'s traces."""
    settings = config.pseudolabel
    everyone = np.ones(len(names), dtype=bool)
    if not settings.agree_with:
        return everyone, np.ones(len(names))
    agrees = agreement(names, table.clip_ids, trace_emotions(config, workspace, settings.agree_with, table.clip_ids))
    if settings.agreement == "require":
        return agrees, np.ones(len(names))
    return everyone, np.where(agrees, 1.0, settings.disagree_weight)


def pseudolabel(config: Config, workspace: Workspace, clips_dir: Path, checkpoint: str | None,
                out: Path | None = None) -> PseudoLabelSummary:
    """Label the clips of ``clips_dir`` with the run ``checkpoint`` and write the ones kept."""
    run = load_run(resolve_run(workspace, checkpoint))
    config = config.with_overrides({"data.classes": run.classes}, str(run.path / "config.json"))
    settings = config.pseudolabel
    if settings.selection == "threshold":
        class_thresholds(settings, run.classes)  # a bad setting stops before any work
    found = scan(clips_dir)
    own = labelled_clips(run)
    pool = [c.clip_id for c in found.clips if c.clip_id not in own]
    table = pool_table(workspace, run, pool)
    if not table.clip_ids:
        raise DataError(f"{clips_dir}: none of its {len(pool)} clips outside the run's own has features in "
                        f"{', '.join(s.name for s in table.sets)}; run `mer extract` on it first")
    probabilities = ensemble_probabilities(run, table, range(len(table.clip_ids)), pick_device(config.train.device))
    predicted, confidence = probabilities.argmax(axis=1), probabilities.max(axis=1)
    names = [run.classes[k] for k in predicted]
    eligible, factors = agreement_factors(config, workspace, table, names)
    kept = _keep(config, run, predicted, confidence, eligible)
    teacher, round_ = Teacher(run.path.resolve(), len(run.folds)), pseudo_round(run.config) + 1
    target = out or default_out(workspace, run.path, round_)
    rows = [(table.clip_ids[i], names[i], float(confidence[i] * factors[i])) for i in np.flatnonzero(kept)]
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        write_text(target, pseudo_labels_csv(rows, teacher, round_))
    count = len(run.classes)
    return PseudoLabelSummary(target, teacher, round_, settings, run.classes,
                              np.bincount(predicted, minlength=count).tolist(),
                              np.bincount(predicted[kept], minlength=count).tolist(),
                              sum(c.clip_id in own for c in found.clips), table.excluded,
                              [entry.reason for entry in found.refused])

"""The predict stage: emotion probabilities for new clips from a trained run.

A run records the exact manifest of every feature set it was trained on. Prediction rebuilds
those encoders from the manifests (the same settings give the same set names, which is checked),
extracts one clip at a time into a scratch workspace with the models loaded once, asks the run's
reasoner for priors when the network uses them, and averages the folds' calibrated probabilities
(softmax of logits over each fold's temperature).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

import mercli.plugins as plugins
import mercli.prompts as prompts
from mercli.calibration import calibrated
from mercli.clips import Clip, clip_from_file, scan
from mercli.config import Config
from mercli.errors import DataError, MerError
from mercli.extract import ClipExtractor, prepare
from mercli.features import FeatureSet, Manifest
from mercli.model import InputSpec, ModelSettings, injected_priors
from mercli.priors import embed_traces, label_conditioned
from mercli.costs import Budget, price_for
from mercli.reason import ClipInputs, Pacing, ReasonRun
from mercli.traces import TraceSource, TraceStore
from mercli.runs import TrainedRun
from mercli.train import predict_logits
from mercli.trainset import TrainingTable, read_clip
from mercli.vocabulary import MODALITIES
from mercli.workspace import Workspace

CPU = "cpu"  # one clip at a time: a GPU would not pay for its start-up


@dataclass
class Prediction:
    """One clip's result, or why it has none (``error``)."""

    clip: str
    label: str | None = None
    probs: dict[str, float] = field(default_factory=dict)
    modalities: dict[str, bool] = field(default_factory=dict)
    seconds: float = 0.0
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        if self.error is not None:
            return {"clip": self.clip, "error": self.error}
        return {"clip": self.clip, "label": self.label, "probs": self.probs, "modalities": self.modalities,
                "seconds": round(self.seconds, 3)}


def clips_of(paths: Iterable[Path]) -> Iterator[Clip | Prediction]:
    """The clips named on the command line (files, or folders searched for clips); a path that
    is not a clip, or an entry of a folder that cannot be one, comes back as a failed
    :class:`Prediction`."""
    for path in paths:
        try:
            if path.is_dir():
                found = scan(path)
                yield from (Prediction(str(entry.path), error=entry.reason) for entry in found.refused)
                yield from found.clips
            else:
                yield clip_from_file(path)
        except MerError as problem:
            yield Prediction(str(path), error=str(problem))


def _encoder_overrides(manifest: Manifest, options: Iterable[str]) -> dict[str, Any]:
    return {f"encoder.{manifest.encoder}.{k}": v for k, v in manifest.settings.items() if k in options}


def _transcriber_overrides(identity: str) -> dict[str, Any]:
    """Settings that rebuild the recogniser a manifest names (``name:weights:{settings json}``)."""
    name, _, rest = identity.partition(":")
    settings = json.loads(rest[rest.index("{"):]) if "{" in rest else {}
    return {"extract.transcriber": name, **{f"transcriber.{name}.{k}": v for k, v in settings.items()}}


def extraction_overrides(manifests: Iterable[Manifest]) -> dict[str, Any]:
    """Configuration that makes ``mer extract`` write exactly these feature sets again."""
    overrides: dict[str, Any] = {"extract.encoders": [m.encoder for m in manifests]}
    for manifest in manifests:
        options = [o.name for o in plugins.get("encoders", manifest.encoder).component.options]
        overrides.update(_encoder_overrides(manifest, options))
        for key in ("fps", "sample_rate"):
            if key in manifest.settings:
                overrides[f"extract.{key}"] = manifest.settings[key]
        if "transcriber" in manifest.settings:
            overrides.update(_transcriber_overrides(manifest.settings["transcriber"]))
    return overrides


class Predictor:
    """A loaded run and everything needed to predict a clip with it, built once."""

    def __init__(self, config: Config, run: TrainedRun, scratch: Path) -> None:
        self.run = run
        self.scratch = Workspace(scratch)
        self.predicted = 0
        self.manifests = manifests = {name: Manifest.from_json(doc) for name, doc in run.config["manifests"].items()}
        inputs = [InputSpec(**spec) for spec in run.config["inputs"]]
        used_priors = {s.name for s in injected_priors(inputs, ModelSettings.from_table(run.config["train"]))}
        self.modality_sets = {s.name: s.modality for s in inputs if not s.prior}
        self.set_names = [s.name for s in inputs if not s.prior or s.name in used_priors]
        encoders = [manifests[name] for name in self.modality_sets]
        self.config = config.with_overrides(extraction_overrides(encoders))
        job = prepare(self.config, self.scratch.features, self.scratch.transcripts, {})
        _check_reproduced({m.set_name for m in job.manifests.values()}, set(self.modality_sets), run.path)
        self.extractor = ClipExtractor(job)
        # Label-conditioned priors cannot be made for a new clip (it has no label): they stay absent.
        self.remade_priors = {name for name in used_priors if not label_conditioned(manifests[name])}
        self.reasoning = self._prior_source([manifests[name] for name in self.remade_priors])

    def _prior_source(self, prior_manifests: list[Manifest]) -> ReasonRun | None:
        """The reasoner that made the run's priors, rebuilt; ``None`` when there are none to make."""
        sources = {json.dumps(m.settings["source"], sort_keys=True) for m in prior_manifests}
        if not sources:
            return None
        if len(sources) > 1:
            raise DataError(f"{self.run.path}: priors from several reasoners; predict can rebuild one")
        source = TraceSource.from_json(json.loads(sources.pop()))
        text_encoder = prior_manifests[0].settings["text_encoder"]
        options = [o.name for o in plugins.get("encoders", text_encoder).component.options]
        overrides = {"reason.embed_with": text_encoder, f"reasoner.{source.reasoner}.model": source.model,
                     **{f"encoder.{text_encoder}.{k}": v for k, v in prior_manifests[0].settings["text_encoder_settings"].items()
                        if k in options}}
        self.config = self.config.with_overrides(overrides)
        reasoner = plugins.build("reasoners", source.reasoner, self.config)
        if reasoner.trace_version(prompts.PROMPT_VERSION) != source.prompt_version:
            raise DataError(f"{self.run.path}: its priors come from {source.reasoner} {source.prompt_version}; the "
                            f"installed one writes {reasoner.trace_version(prompts.PROMPT_VERSION)}")
        store = TraceStore.open(self.scratch.reasoning, source)
        return ReasonRun(reasoner, store, ClipInputs(self.scratch, {}), tuple(self.config.get("data", "classes")),
                         Pacing.from_config(self.config), price_for(reasoner, self.config.get("reason", "prices")),
                         Budget(None), label_conditioned=False)

    def _priors(self, clip: Clip) -> None:
        if self.reasoning is None:
            return
        self.reasoning.inputs = ClipInputs(self.scratch, {})  # sees the feature sets just written
        task = self.reasoning.task(clip)
        self.reasoning.ask(task)
        if self.reasoning.store.status(clip.clip_id, task.content_hash, task.features) == "done":
            sets = embed_traces(self.config, self.scratch.features, self.reasoning.store, refresh=[clip.clip_id])
            _check_reproduced({s.name for s in sets}, self.remade_priors, self.run.path)

    def predict_all(self, paths: Iterable[Path]) -> Iterator[Prediction]:
        """A prediction (or the reason there is none) for every clip under ``paths``, in order."""
        for item in clips_of(paths):
            if isinstance(item, Prediction):
                yield item
                continue
            self.predicted += 1  # each clip gets its own scratch id, even when two share a name
            yield self.predict(replace(item, clip_id=f"{self.predicted:06d}-{item.clip_id}"), str(item.path))

    def predict(self, clip: Clip, shown_as: str) -> Prediction:
        started = time.perf_counter()
        outcome = self.extractor(clip)
        self._priors(clip)
        table = self._table(clip.clip_id)
        present = {m: any(table.values[name][0] is not None for name, mod in self.modality_sets.items() if mod == m)
                   for m in MODALITIES}
        if not any(present.values()):
            reason = "; ".join(outcome.failures) or f"{clip.path}: no modality could be measured"
            return Prediction(shown_as, error=reason)
        probabilities = np.mean([calibrated(predict_logits(fold.model, table, [0], CPU, 1).numpy(), fold.temperature)
                                 for fold in self.run.folds], axis=0)[0]
        classes = self.run.classes
        return Prediction(shown_as, classes[int(probabilities.argmax())],
                          {c: round(float(p), 6) for c, p in zip(classes, probabilities)}, present,
                          time.perf_counter() - started)

    def _table(self, clip_id: str) -> TrainingTable:
        """A one-clip table over the run's sets; a set the clip has nothing in is absent."""
        sets, values, masks = [], {}, {}
        for name in self.set_names:
            feature_set = FeatureSet(self.scratch.features / name, self.manifests[name])
            stored = feature_set.path.is_dir() and feature_set.status(clip_id) is not None
            clip_values, clip_mask = read_clip(feature_set, clip_id) if stored else (None, None)
            sets.append(feature_set)
            values[name], masks[name] = [clip_values], [clip_mask]
        return TrainingTable(self.run.classes, [clip_id], np.zeros(1, dtype=np.int64), [None], [None], sets, values,
                             masks, [])


def _check_reproduced(made: set[str], wanted: set[str], run: Path) -> None:
    if wanted - made:
        raise DataError(f"{run}: the installed encoders do not reproduce feature set(s) "
                        f"{', '.join(sorted(wanted - made))} the run was trained on (another encoder version or "
                        "setting?)")


def predict_paths(config: Config, workspace: Workspace, run: TrainedRun, paths: Iterable[Path]) -> Iterator[Prediction]:
    """Predictions for every clip under ``paths``, one at a time, models loaded once; the clips'
    features go to a scratch folder of ``workspace``, removed at the end."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mercli.extract.extract_clips
    scratch = workspace.scratch_folder("predict")
    try:
        yield from Predictor(config, run, scratch).predict_all(paths)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

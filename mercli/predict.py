"""The predict stage: emotion probabilities for new clips from a trained run.

A run records the exact manifest of every feature set it was trained on. Prediction rebuilds
those encoders from the manifests (the same settings give the same set names, which is checked)
and runs each clip through them in memory (:mod:`mercli.chain`), with the models loaded once;
when the network uses priors it asks the run's reasoner (its traces kept in the workspace's trace
store, so a clip is asked about once) with the prompt version the run's traces answered, and makes
the trace's priors in memory (embedded text and class scores, by the same functions as
``mer reason``); it then averages the folds'
calibrated probabilities (softmax of logits over each fold's temperature). Nothing but traces is
written.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator

import mercli.plugins as plugins
import mercli.prompts as prompts
from mercli.chain import ClipEncoder, EncodedClip, as_stored, clip_failure
from mercli.clips import Clip, clip_from_file, scan
from mercli.config import Config
from mercli.contracts import DecodedClip, Features
from mercli.costs import Budget, price_for
from mercli.ensemble import ensemble_probabilities
from mercli.errors import DataError, MerError, writing
from mercli.extract import build_encoders
from mercli.features import Manifest
from mercli.model import InputSpec, injected_priors
from mercli.priors import (embed_trace, embedder, is_scores_prior, label_conditioned, prior_manifests, score_manifests,
                           trace_scores)
from mercli.reason import ClipTask, HeldInputs, Pacing, ReasonRun
from mercli.runs import TrainedRun
from mercli.settings import TrainSettings
from mercli.traces import TraceSource, TraceStore, content_hash
from mercli.trainset import one_clip_table
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
    """A loaded run and everything needed to predict a clip with it, built once: the run's
    encoders, its reasoner and trace embedder when the network uses priors, and its folds."""

    def __init__(self, config: Config, workspace: Workspace, run: TrainedRun) -> None:
        self.run = run
        manifests = {name: Manifest.from_json(doc) for name, doc in run.config["manifests"].items()}
        inputs = [InputSpec(**spec) for spec in run.config["inputs"]]
        used_priors = {s.name for s in injected_priors(inputs, TrainSettings.from_record(run.config["train"]))}
        self.manifests = {s.name: manifests[s.name] for s in inputs if not s.prior or s.name in used_priors}
        modality_sets = [s.name for s in inputs if not s.prior]
        self.modalities = {name: manifests[name].modality for name in modality_sets}
        self.config = config.with_overrides(extraction_overrides([manifests[name] for name in modality_sets]))
        self.encode = self._encoder(set(modality_sets))
        self.set_of = {name: manifest.set_name for name, manifest in self.encode.manifests.items()}
        # Label-conditioned priors cannot be made for a new clip (it has no label): they stay absent.
        remade = [manifests[name] for name in used_priors if not label_conditioned(manifests[name])]
        self.priors = TracePriors(self.config, workspace, remade, run.path) if remade else None

    def _encoder(self, wanted: set[str]) -> ClipEncoder:
        """The run's encoders, rebuilt from its manifests; they must give the very same sets."""
        setup = build_encoders(self.config)
        transcriber = setup.transcriber
        _check_reproduced({m.set_name for m in setup.manifests.values()}, wanted, self.run.path)

        def transcript(clip: DecodedClip) -> str | None:
            return None if transcriber is None or "audio" in clip.absent else transcriber.transcribe(clip)

        return ClipEncoder(setup.encoders, setup.manifests, self.config.extract, transcript,
                           transcriber and transcriber.name)

    def predict_all(self, paths: Iterable[Path]) -> Iterator[Prediction]:
        """A prediction (or the reason there is none) for every clip under ``paths``, in order."""
        for item in clips_of(paths):
            yield item if isinstance(item, Prediction) else self.predict(item)

    def predict(self, clip: Clip) -> Prediction:
        started = time.perf_counter()
        try:
            encoded = self.encode(clip)
        except Exception as error:  # one clip that cannot be decoded costs only its own prediction
            return Prediction(str(clip.path), error=clip_failure(error))
        features = {self.set_of[name]: value for name, value in encoded.features.items()}
        present = {m: any(f.values is not None for name, f in features.items() if self.modalities[name] == m)
                   for m in MODALITIES}
        if not any(present.values()):
            reason = "; ".join(f"{who}: {why}" for who, why in encoded.failures.items())
            return Prediction(str(clip.path), error=reason or f"{clip.path}: no modality could be measured")
        if self.priors is not None:
            features.update(self.priors(clip, encoded, self.set_of))
        table = one_clip_table(self.run.classes, clip.clip_id, self.manifests, features)
        probabilities = ensemble_probabilities(self.run, table, [0], CPU)[0]
        classes = self.run.classes
        return Prediction(str(clip.path), classes[int(probabilities.argmax())],
                          {c: round(float(p), 6) for c, p in zip(classes, probabilities)}, present,
                          time.perf_counter() - started)


class TracePriors:
    """Priors for new clips: a trace from the run's reasoner, kept in the workspace's trace store
    (asked once per clip content), embedded in memory by the run's text encoder and read as class
    scores, for the prior sets the run uses."""

    def __init__(self, config: Config, workspace: Workspace, manifests: list[Manifest], run: Path) -> None:
        sources = {json.dumps(m.settings["source"], sort_keys=True) for m in manifests}
        if len(sources) > 1:
            raise DataError(f"{run}: priors from several reasoners; predict can rebuild one")
        source = TraceSource.from_json(json.loads(sources.pop()))
        embedded = [m for m in manifests if not is_scores_prior(m)]
        numeric = [m for m in manifests if is_scores_prior(m)]
        config = config.with_overrides({f"reasoner.{source.reasoner}.model": source.model,
                                        **(_embedder_overrides(embedded[0]) if embedded else {})})
        reasoner = plugins.build("reasoners", source.reasoner, config)
        version = prompts.answered_version(reasoner, source.prompt_version)
        if version is None:
            raise DataError(f"{run}: its priors come from {source.reasoner} {source.prompt_version}; the installed "
                            f"one writes {', '.join(reasoner.trace_version(v) for v in prompts.PROMPT_VERSIONS)}")
        with writing(workspace.reasoning):
            self.store = TraceStore.open(workspace.reasoning, source)
        self.classes = tuple(numeric[0].settings["classes"] if numeric else config.data.classes)
        self.embedder = embedder(config) if embedded else None
        made = {("scores", part): m for part, m in score_manifests(source, self.classes).items()}
        if self.embedder is not None:
            made.update({("text", part): m for part, m in prior_manifests(self.store, self.embedder).items()})
        wanted = {m.set_name for m in manifests}
        self.manifests = {key: m for key, m in made.items() if m.set_name in wanted}
        _check_reproduced({m.set_name for m in self.manifests.values()}, wanted, run)
        self.held = HeldInputs()
        self.reasoning = ReasonRun(reasoner, self.store, self.held, self.classes, Pacing.from_config(config),
                                   price_for(reasoner, config.reason.prices), Budget(None),
                                   label_conditioned=False, prompt_version=version)

    def __call__(self, clip: Clip, encoded: EncodedClip, set_of: dict[str, str]) -> dict[str, Features]:
        """The clip's prior features by set name; none when no trace could be had (the network then
        treats its priors as absent, as for a clip that ``mer reason`` could not answer)."""
        task = self._task(clip, encoded, set_of)
        if self.store.status(task.clip.clip_id, task.content_hash, task.features) != "done":
            self.held.hold(task.clip.clip_id, encoded.transcript, encoded.features, list(task.features or ()))
            try:
                self.reasoning.ask(task)
            finally:
                self.held.release(task.clip.clip_id)
            if self.store.status(task.clip.clip_id, task.content_hash, task.features) != "done":
                return {}
        trace = self.store.read(task.clip.clip_id)
        made = {"scores": trace_scores(trace, self.classes)}
        if self.embedder is not None:
            made["text"] = embed_trace(self.embedder, trace, self.store.folder)
        return {m.set_name: as_stored(made[kind][part], m, f"clip {clip.clip_id}")
                for (kind, part), m in self.manifests.items()}

    def _task(self, clip: Clip, encoded: EncodedClip, set_of: dict[str, str]) -> ClipTask:
        """What to ask about the clip, under the id its trace is kept as: its own when ``mer reason``
        already answered for this very content, else one named by the content, so that a new file
        never replaces the trace of a workspace clip that shares its name."""
        digest = content_hash(clip.path)
        names = sorted(set_of[name] for name in encoded.features) if self.reasoning.reasoner.uses_features else None
        if self.store.status(clip.clip_id, digest, names) == "done":
            return ClipTask(clip, digest, names)
        return ClipTask(replace(clip, clip_id=f"content-{digest[:32]}"), digest, names)


def _embedder_overrides(manifest: Manifest) -> dict[str, Any]:
    """Settings that rebuild the text encoder an embedded prior set's manifest names."""
    text_encoder = manifest.settings["text_encoder"]
    options = [o.name for o in plugins.get("encoders", text_encoder).component.options]
    return {"reason.embed_with": text_encoder,
            **{f"encoder.{text_encoder}.{k}": v for k, v in manifest.settings["text_encoder_settings"].items()
               if k in options}}


def _check_reproduced(made: set[str], wanted: set[str], run: Path) -> None:
    if wanted - made:
        raise DataError(f"{run}: the installed encoders do not reproduce feature set(s) "
                        f"{', '.join(sorted(wanted - made))} the run was trained on (another encoder version or "
                        "setting?)")


def predict_paths(config: Config, workspace: Workspace, run: TrainedRun, paths: Iterable[Path]) -> Iterator[Prediction]:
    """Predictions for every clip under ``paths``, one at a time, models loaded once."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # see mercli.extract.extract_clips
    yield from Predictor(config, workspace, run).predict_all(paths)

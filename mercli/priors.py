"""Reasoning traces as features: each part of a trace, embedded by a text encoder, becomes a
``prior-*`` feature set that ``mer train`` injects into the matching modality stream.

A trace gives four sets: ``prior-visual`` (modality visual), ``prior-acoustic`` (audio),
``prior-textual`` (text) and ``prior-overall`` (no one modality: the network offers it to every
stream). A modality the trace marks absent is stored absent with the trace's reason, never as an
embedding of "nothing". The manifest names the trace source (reasoner, model, prompt version,
whether labels were shown) and the text encoder, so priors of two sources never share a set, and
label-conditioned priors can be refused wherever a label must not leak (validation, test).

Traces that carry class scores (prompt version 2 on) also give four small numeric sets,
``prior-scores-<part>`` (same modalities): per clip the part's score of every configured class, in
the order of ``[data] classes``, then its confidence (``dim`` = classes + 1, utterance level); an
absent modality is absent with the trace's reason. Their manifest names the trace source and the
classes, so sets of two sources or two class lists never share a folder. A source whose traces have
no scores (prompt version 1) gets no numeric sets at all: every clip would be absent, an input the
network could never see; a single trace without scores among scored ones is absent with the reason
:data:`NO_SCORES`. ``mer train --features`` picks text priors, numeric priors or both by set name.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

import mercli.plugins as plugins
from mercli.config import Config
from mercli.contracts import DecodedClip, Encoder, Features
from mercli.errors import ConfigError
from mercli.features import FeatureSet, Manifest
from mercli.trace_model import has_scores
from mercli.traces import TraceSource, TraceStore
from mercli.vocabulary import TRACE_PARTS, prior_set_encoder, scores_prior_encoder

PRIORS_VERSION = "1"
#: Bump when the numbers a numeric prior set holds change.
SCORES_VERSION = "1"
NO_SCORES = "trace has no class scores (prompt version 1)"


def prior_text(part: str, section: dict[str, Any]) -> str | None:
    """What the text encoder reads for one part of a trace; ``None`` when the modality is absent."""
    if part == "overall":
        return f"overall: {section['emotion']} (confidence {section['confidence']:.2f}). {section['summary']}"
    if section.get("absent") is not None:
        return None
    cues = "; ".join(section["cues"]) or "no specific cues"
    return f"{part}: {section['emotion']} (confidence {section['confidence']:.2f}). Cues: {cues}"


def prior_manifests(store: TraceStore, encoder: Encoder) -> dict[str, Manifest]:
    """The manifest of each prior set of ``store``'s source embedded by ``encoder``."""
    provenance = plugins.get("encoders", encoder.name).provenance
    settings = {"source": asdict(store.source), "text_encoder": encoder.name,
                "text_encoder_settings": dict(encoder.settings)}
    return {part: Manifest(encoder=prior_set_encoder(part), encoder_version=PRIORS_VERSION, package=provenance.package,
                           package_version=provenance.package_version, weights=encoder.weights_identity(),
                           settings=settings, modality=modality, dim=encoder.dim, level="utterance")
            for part, modality in TRACE_PARTS.items()}


def score_manifests(source: TraceSource, classes: Sequence[str]) -> dict[str, Manifest]:
    """The manifest of each numeric prior set of ``source``'s traces over ``classes``."""
    settings = {"source": asdict(source), "classes": list(classes),
                "values": "the score of each class in this order, then the confidence"}
    return {part: Manifest(encoder=scores_prior_encoder(part), encoder_version=SCORES_VERSION, package="mer",
                           package_version=plugins.own_version(), weights="none", settings=settings, modality=modality,
                           dim=len(classes) + 1, level="utterance")
            for part, modality in TRACE_PARTS.items()}


def is_scores_prior(manifest: Manifest) -> bool:
    """True for a numeric prior set (class scores and confidence), False for an embedded one."""
    return manifest.encoder in {scores_prior_encoder(part) for part in TRACE_PARTS}


def trace_scores(trace: Mapping[str, Any], classes: Sequence[str]) -> dict[str, Features]:
    """Each part of one trace as numeric prior features, by trace part: its class scores in the
    order of ``classes`` then its confidence, or why there are none (the modality's absence)."""
    return {part: _part_scores(trace[part], classes) for part in TRACE_PARTS}


def _part_scores(section: Mapping[str, Any], classes: Sequence[str]) -> Features:
    if section.get("absent") is not None:
        return Features(values=None, absent=section["absent"])
    scores = section.get("scores")
    if scores is None:
        return Features(values=None, absent=NO_SCORES)
    if sorted(scores) != sorted(classes):
        return Features(values=None, absent=f"trace scores the classes {', '.join(scores)}, "
                                            f"not {', '.join(classes)}")
    return Features(values=np.array([scores[name] for name in classes] + [section["confidence"]], dtype=np.float32))


def label_conditioned(manifest: Manifest) -> bool:
    """True for prior sets made from traces whose reasoner saw the clip's label."""
    source = manifest.settings.get("source")
    return isinstance(source, dict) and source.get("label_conditioned") is True


def embedder(config: Config) -> Encoder:
    """The text encoder ``[reason] embed_with`` names, built."""
    encoder: Encoder = plugins.build("encoders", config.reason.embed_with, config)
    if encoder.modality != "text":
        raise ConfigError(f"[reason] embed_with: '{encoder.name}' is a {encoder.modality} encoder, not a text encoder")
    return encoder


def embed_trace(encoder: Encoder, trace: dict[str, Any], folder: Path) -> dict[str, Features]:
    """Each part of one trace as prior features, by trace part: its text embedded, or the
    modality's absence with the trace's reason (``folder`` is where the trace is kept)."""
    embedded = {}
    for part in TRACE_PARTS:
        text = prior_text(part, trace[part])
        embedded[part] = (Features(values=None, absent=trace[part]["absent"]) if text is None
                          else encoder.encode(DecodedClip(trace["clip"], folder, 0.0, transcript=text)))
    return embedded


Maker = Callable[[dict[str, Any]], dict[str, Features]]


def embed_traces(config: Config, features_root: Path, store: TraceStore, refresh: Iterable[str] = (),
                 advance: Callable[[], None] = lambda: None) -> list[FeatureSet]:
    """Make the priors of every trace of ``store`` that has none yet, and of those in ``refresh``
    (traces written by this run, which may replace older ones): the embedded sets, and the numeric
    sets when the source's traces carry scores; returns the prior sets."""
    encoder = embedder(config)
    classes = config.data.classes
    kinds: list[tuple[dict[str, FeatureSet], Maker]] = [
        (_opened(features_root, prior_manifests(store, encoder)), lambda t: embed_trace(encoder, t, store.folder))]
    clip_ids = store.clip_ids()
    if clip_ids and has_scores(store.read(clip_ids[0])):  # one source's traces all answer one prompt
        kinds.append((_opened(features_root, score_manifests(store.source, classes)),
                      lambda t: trace_scores(t, classes)))
    redo = set(refresh)
    for clip_id in clip_ids:
        trace = None
        for sets, make in kinds:
            if clip_id in redo or any(s.status(clip_id) is None for s in sets.values()):
                trace = trace or store.read(clip_id)
                for part, features in make(trace).items():
                    sets[part].write(clip_id, features)
        advance()
    return [s for sets, _ in kinds for s in sets.values()]


def _opened(features_root: Path, manifests: Mapping[str, Manifest]) -> dict[str, FeatureSet]:
    return {part: FeatureSet.open(features_root, manifest) for part, manifest in manifests.items()}

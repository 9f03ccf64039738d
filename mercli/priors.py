"""Reasoning traces as features: each part of a trace, embedded by a text encoder, becomes a
``prior-*`` feature set that ``mer train`` injects into the matching modality stream.

A trace gives four sets: ``prior-visual`` (modality visual), ``prior-acoustic`` (audio),
``prior-textual`` (text) and ``prior-overall`` (no one modality: the network offers it to every
stream). A modality the trace marks absent is stored absent with the trace's reason, never as an
embedding of "nothing". The manifest names the trace source (reasoner, model, prompt version,
whether labels were shown) and the text encoder, so priors of two sources never share a set, and
label-conditioned priors can be refused wherever a label must not leak (validation, test).
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterable

import mercli.plugins as plugins
from mercli.config import Config
from mercli.contracts import DecodedClip, Encoder, Features
from mercli.errors import ConfigError
from mercli.features import FeatureSet, Manifest
from mercli.traces import TraceStore
from mercli.vocabulary import TRACE_PARTS, prior_set_encoder

PRIORS_VERSION = "1"


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


def label_conditioned(manifest: Manifest) -> bool:
    """True for prior sets made from traces whose reasoner saw the clip's label."""
    source = manifest.settings.get("source")
    return isinstance(source, dict) and source.get("label_conditioned") is True


def embedder(config: Config) -> Encoder:
    """The text encoder ``[reason] embed_with`` names, built."""
    encoder: Encoder = plugins.build("encoders", config.get("reason", "embed_with"), config)
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


def embed_traces(config: Config, features_root: Path, store: TraceStore, refresh: Iterable[str] = (),
                 advance: Callable[[], None] = lambda: None) -> list[FeatureSet]:
    """Embed every trace of ``store`` that has no prior yet, and those in ``refresh`` (traces
    written by this run, which may replace older ones); returns the prior sets."""
    encoder = embedder(config)
    sets = {part: FeatureSet.open(features_root, manifest) for part, manifest in prior_manifests(store, encoder).items()}
    redo = set(refresh)
    for clip_id in store.clip_ids():
        if clip_id in redo or any(s.status(clip_id) is None for s in sets.values()):
            for part, features in embed_trace(encoder, store.read(clip_id), store.folder).items():
                sets[part].write(clip_id, features)
        advance()
    return list(sets.values())

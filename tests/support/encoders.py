"""Small test encoders shared by test files."""

from __future__ import annotations

import os
import signal
import time

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


class SwallowsCtrlC(Encoder):
    """Like a library whose native code turns an interrupt into an ordinary error."""

    name = "test-swallow"
    modality = "audio"
    level = "utterance"
    dim = 1

    def encode(self, clip: DecodedClip) -> Features:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        except KeyboardInterrupt:
            raise RuntimeError("interrupted in native code") from None
        return Features(np.zeros(1, dtype=np.float32))

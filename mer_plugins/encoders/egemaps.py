"""eGeMAPSv02 functionals: the 88 acoustic features of the Geneva minimalistic parameter set
(pitch, loudness, jitter, shimmer, formants, spectral balance, their statistics over the clip),
computed by openSMILE on the 16 kHz mono track. openSMILE's licence allows research use only."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from mercli.plugin_api import Check, DecodedClip, Encoder, Features, hookimpl
from mer_plugins.encoders.audio_input import absent_audio_reason, clip_audio

if TYPE_CHECKING:
    import opensmile

FEATURE_SET = "eGeMAPSv02"


class EgemapsEncoder(Encoder):
    name = "egemaps"
    version = "1"
    description = "eGeMAPSv02 functionals through openSMILE (88 acoustic features per clip)."
    modality = "audio"
    level = "utterance"
    dim = 88

    @functools.cached_property
    def smile(self) -> "opensmile.Smile":
        import opensmile

        return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, FEATURE_SET),
                               feature_level=opensmile.FeatureLevel.Functionals)

    def weights_identity(self) -> str:
        from importlib.metadata import version  # not ``import opensmile``: a third of a second of start-up

        return f"opensmile-{version('opensmile')}:{FEATURE_SET}"

    def checks(self) -> list[Check]:
        try:
            width = len(self.smile.feature_names)
        except Exception as error:  # a broken openSMILE install is what doctor is for
            return [Check("opensmile", False, f"cannot set up openSMILE: {type(error).__name__}: {error}")]
        return [Check("opensmile", width == self.dim, f"{self.weights_identity()}, {width} features")]

    def encode(self, clip: DecodedClip) -> Features:
        audio = clip_audio(clip, self.name)
        if audio is None:
            return Features(values=None, absent=absent_audio_reason(clip))
        table = self.smile.process_signal(audio, clip.sample_rate)
        return Features(values=table.to_numpy(dtype="float32").reshape(-1))


@hookimpl
def register_encoders(register) -> None:
    register(EgemapsEncoder)

"""A frame-level audio encoder: loudness and zero-crossing rate over short windows.

Two classic prosodic cues: loudness separates high-arousal emotions (anger, joy) from low-arousal
ones (sadness), and the zero-crossing rate follows voicing and breathiness.
"""

from __future__ import annotations

from mercli.plugin_api import POSITIVE, DecodedClip, Encoder, Features, Option

#: Floor under the RMS before taking the logarithm, so that digital silence gives -100 dB, not -inf.
SILENCE_RMS = 1e-5


class EnergyContour(Encoder):
    name = "energy-contour"
    version = "1"
    description = "Loudness (RMS in dB) and zero-crossing rate of the audio, frame by frame."
    modality = "audio"
    level = "frame"
    dim = 2
    options = (
        # A range is checked when the configuration loads, before any clip is touched.
        Option("frame_ms", float, 25.0, "Analysis window length in milliseconds.", POSITIVE),
        Option("hop_ms", float, 10.0, "Step between windows in milliseconds.", POSITIVE),
    )

    def encode(self, clip: DecodedClip) -> Features:
        import numpy as np  # here, not at the top: listing plug-ins must not pay for it

        if clip.audio is None or clip.audio.size == 0:
            return Features(None, absent=clip.absent.get("audio", "no audio track"))
        window = max(2, round(clip.sample_rate * self.settings["frame_ms"] / 1000))
        hop = max(1, round(clip.sample_rate * self.settings["hop_ms"] / 1000))
        audio = np.asarray(clip.audio, dtype=np.float32)
        if audio.size < window:  # a clip shorter than one window still gets one (padded) frame
            audio = np.pad(audio, (0, window - audio.size))
        frames = np.lib.stride_tricks.sliding_window_view(audio, window)[::hop]
        rms = np.sqrt(np.mean(np.square(frames), axis=1))
        loudness = 20 * np.log10(np.maximum(rms, SILENCE_RMS))
        signs = np.signbit(frames)
        crossings = np.mean(signs[:, 1:] != signs[:, :-1], axis=1)
        values = np.stack([loudness, crossings], axis=1).astype(np.float32)
        return Features(values, mask=np.ones(len(values), dtype=bool))

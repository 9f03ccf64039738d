"""Small real media files for tests, written with PyAV."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np


def write_clip(path: Path, seconds: float = 1.0, video: bool = True, audio: bool = True, colour=(200, 30, 30)) -> Path:
    """A small real media file: a flat-colour video and/or a 440 Hz tone."""
    import av

    with av.open(str(path), "w") as container:
        vstream = astream = None
        if video:
            vstream = container.add_stream("mpeg4", rate=10)
            vstream.width, vstream.height, vstream.pix_fmt = 64, 48, "yuv420p"
        if audio:
            astream = container.add_stream("aac" if path.suffix != ".wav" else "pcm_s16le", rate=16000)
            astream.layout = "mono"
        if vstream is not None:
            image = np.zeros((48, 64, 3), dtype=np.uint8) + np.array(colour, dtype=np.uint8)
            for index in range(int(seconds * 10)):
                frame = av.VideoFrame.from_ndarray(image, format="rgb24")
                frame.pts = index
                container.mux(vstream.encode(frame))
            container.mux(vstream.encode())
        if astream is not None:
            t = np.arange(int(seconds * 16000)) / 16000
            tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for start in range(0, len(tone), 1024):
                chunk = tone[start:start + 1024][None, :]
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, start, Fraction(1, 16000)
                container.mux(astream.encode(frame))
            container.mux(astream.encode())
    return path


def loudness_frames(audio: np.ndarray, frame: int = 1600):
    """Frame-level features of test encoders: the RMS of each whole ``frame`` of samples, all real."""
    from mercli.contracts import Features

    frames = audio[: len(audio) // frame * frame].reshape(-1, frame)
    rms = np.sqrt((frames**2).mean(axis=1, keepdims=True)).astype(np.float32)
    return Features(rms, mask=np.ones(len(rms), dtype=bool))

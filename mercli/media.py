"""Decoding clips: sampled RGB frames and a mono audio track, in one pass with PyAV.

This is the only module that opens media files. Everything the encoders need from a clip comes
out of :func:`decode` in a single demuxing pass over the file: no seeking (seeks are slow and
imprecise on long-GOP codecs and break on streaming formats such as FLV), and no conversion work
for what is not used. Every frame must still be decoded (inter-coded frames depend on each other),
but only the sampled ones are scaled and converted to RGB, and a stream that was not asked for is
not decoded at all.

Rules that callers rely on (``mer extract`` reports them):

* **Sampling.** For ``fps`` f the targets are t = 0, 1/f, 2/f, ... up to the last frame, on the
  clip's timeline (seconds from the container's start). Each target takes the decoded frame whose
  presentation time is nearest, so variable-frame-rate video is sampled uniformly in time too. A
  source frame is used at most once (a target that would repeat it is skipped), so ``frame_times``
  holds the real, strictly increasing times of the frames returned; a clip with any frame yields at
  least one.
* **Size.** Frames are scaled down (never up), keeping the aspect ratio, so that the longer side is
  at most ``max_side`` pixels (default 1280). A 1080p RGB frame is 6 MB; a minute at 2 fps would be
  720 MB per clip per worker, and the face models work on far smaller inputs anyway. Rotation
  metadata (phone videos) is applied, so frames come out upright.
* **Audio.** The first audio track, resampled to mono float32 at ``sample_rate`` and kept on the
  clip's timeline: sample i is at i / sample_rate seconds, like ``frame_times`` (a track that starts
  late, or a gap left by lost packets, is filled with zeros). NaN or infinite samples (a float
  track written by faulty software; the resampler spreads each over a few neighbours) are set to 0
  and the clip flagged partial, saying how many, while at least ``MIN_FINITE_AUDIO`` of the track
  is finite; a track with less is not decodable (see the failure rules), never "silent".
* **Timestamps.** A frame without a usable timestamp (a raw stream such as H.264 in a file of its
  own, or a time base of zero) is placed at the stream's nominal rate after the previous frame, and
  the clip is flagged partial saying how many frames were placed so, since that timeline is a guess.
* **Missing modalities are results, not failures.** No video stream (an audio file, or a video
  container holding only sound; cover art does not count as video): ``frames`` is None and
  ``absent["visual"] = "audio-only file"``. No audio track: ``absent["audio"] = "no audio track"``.
  A track whose peak stays below ``SILENCE_DBFS`` (-60 dBFS, i.e. |x| < 0.001 at full scale 1.0;
  digital silence and codec noise sit near -90 dBFS, quiet speech peaks above -40 dBFS): the audio
  is kept and ``absent["audio"] = "silent audio track"``. Only requested modalities are reported.
* **Failures.** A file that cannot be opened or has nothing decodable (missing, a directory, zero
  bytes, not a media file, a corrupt or truncated header, unreadable, no audio or video stream, an
  audio layout that cannot be mixed down, audio mostly NaN or infinite) raises
  :class:`~mercli.errors.DataError` with one line: ``"<path>: cannot decode: <reason>"``, never
  FFmpeg's own multi-line output.
* **Partly decodable files.** A file cut short or damaged in the middle keeps what decoded if
  anything usable came out: at least one frame from a requested video stream or at least
  ``MIN_AUDIO_SECONDS`` of audio from a requested audio track. Packets that fail to decode are
  skipped; a read error ends the pass. Such a clip is flagged with a one-line reason in
  ``clip.partial`` and its ``duration`` is what actually decoded, not what the header
  claims. A clip counts as partial when packets failed, reading stopped on an error, or a decoded
  stream ends more than ``max(0.5 s, 10 %)`` before the duration its header declares (FLV and
  Matroska declare none per stream: there the container's duration is the yardstick, when every
  audio and video stream was decoded). A requested stream that yields nothing while another one
  does is recorded as absent (``"video stream could not be decoded"``), not as a failure.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import av
import numpy as np

from mercli.contracts import DecodedClip
from mercli.errors import DataError
from mercli.vocabulary import one_line

DEFAULT_MAX_SIDE = 1280
SILENCE_DBFS = -60.0
MIN_AUDIO_SECONDS = 0.1
#: Share of finite samples an audio track needs for its NaN or infinite ones to be repaired.
MIN_FINITE_AUDIO = 0.5
#: Key in ``DecodedClip.derived`` that holds the reason when only part of the file decoded.

_SHORTFALL_SECONDS = 0.5
_SHORTFALL_FRACTION = 0.1
_MAX_REASON_CHARS = 120
_AUDIO_GAP_SECONDS = 0.01


@dataclass(frozen=True)
class MediaInfo:
    """What a file's headers say, without decoding anything (cheap: for summaries and planning).

    ``duration`` is in seconds (0.0 when the container does not tell); ``fps`` is the video's
    average frame rate when known.
    """

    path: Path
    duration: float
    has_video: bool
    has_audio: bool
    width: int | None = None
    height: int | None = None
    fps: float | None = None
    sample_rate: int | None = None


def probe(path: Path) -> MediaInfo:
    """Read the headers of ``path``; raises :class:`DataError` when it cannot be opened as media."""
    path = Path(path)
    with _opened(path) as container:
        video = _video_stream(container)
        audio = container.streams.audio[0] if container.streams.audio else None
        rate = (video.average_rate or video.guessed_rate) if video is not None else None
        return MediaInfo(
            path=path,
            duration=_declared_duration(container),
            has_video=video is not None,
            has_audio=audio is not None,
            width=video.codec_context.width if video is not None else None,
            height=video.codec_context.height if video is not None else None,
            fps=float(rate) if rate else None,
            sample_rate=audio.codec_context.sample_rate if audio is not None else None,
        )


def decode(
    path: Path,
    clip_id: str,
    fps: float = 2.0,
    sample_rate: int = 16000,
    video: bool = True,
    audio: bool = True,
    max_side: int = DEFAULT_MAX_SIDE,
    max_seconds: float | None = None,
) -> DecodedClip:
    """Decode ``path`` into sampled frames and a mono audio track (see the module notes); a clip
    longer than ``max_seconds`` is refused, by its header or, where that says nothing or lies, as
    soon as the decoding passes the limit."""
    # An infinite fps gives the frame sampler a step of 0, and its loop would never end.
    if not (math.isfinite(fps) and fps > 0) or sample_rate <= 0 or max_side <= 0:
        raise ValueError(f"fps, sample_rate and max_side must be finite and positive, got {fps!r}, {sample_rate!r}, "
                         f"{max_side!r}")
    path = Path(path)
    with _opened(path) as container:
        video_stream = _video_stream(container)
        audio_stream = container.streams.audio[0] if container.streams.audio else None
        if video_stream is None and audio_stream is None:
            raise _cannot_decode(path, "no audio or video stream")
        if max_seconds is not None and (declared := _declared_duration(container)) > max_seconds:
            raise _too_long(path, max_seconds, declared)
        origin = (container.start_time or 0) / av.time_base
        sampler = _FrameSampler(video_stream, fps, origin, max_side) if video and video_stream else None
        collector = _AudioCollector(audio_stream, sample_rate, origin) if audio and audio_stream else None
        try:
            problems = _demux_and_decode(container, [c for c in (sampler, collector) if c is not None], max_seconds)
        except _PastLimit:
            raise _too_long(path, max_seconds) from None

        clip = DecodedClip(clip_id=clip_id, path=path, duration=_declared_duration(container),
                           sample_rate=sample_rate)
        decoded: list[tuple[av.stream.Stream, float]] = []  # (stream, seconds that came out of it)
        if video and video_stream is None:
            clip.absent["visual"] = "audio-only file"
        if sampler is not None:
            clip.frames, clip.frame_times = sampler.finish()
            if clip.frames is None:
                clip.absent["visual"] = "video stream could not be decoded"
            else:
                decoded.append((video_stream, sampler.end_time))
        if audio and audio_stream is None:
            clip.absent["audio"] = "no audio track"
        if collector is not None:
            samples = collector.finish()
            if samples.size < MIN_AUDIO_SECONDS * sample_rate:
                clip.absent["audio"] = collector.problem or "audio track could not be decoded"
            else:
                clip.audio = samples
                decoded.append((audio_stream, samples.size / sample_rate))
                if _peak_dbfs(samples) < SILENCE_DBFS:
                    clip.absent["audio"] = "silent audio track"
        if (sampler is not None or collector is not None) and not decoded:
            reason = (collector and collector.problem) or "no frame or audio sample could be decoded"
            raise _cannot_decode(path, reason)

        repairs = [c.repaired for c in (sampler, collector) if c is not None and c.repaired]
        partial = _partial_reasons(container, decoded, problems) + repairs
        if partial or not clip.duration:
            clip.duration = max((seconds for _, seconds in decoded), default=clip.duration)
        if partial:
            clip.partial = "partly decoded: " + "; ".join(partial)
        return clip


# --- opening and errors -----------------------------------------------------------------------


@contextmanager
def _opened(path: Path) -> Iterator["av.container.InputContainer"]:
    """Open ``path`` for reading, turning every way that can fail into a one-line DataError."""
    if not path.exists():
        raise _cannot_decode(path, "no such file")
    if path.is_dir():
        raise _cannot_decode(path, "is a directory")
    if not path.is_file():  # a pipe would block the decoder until a writer came; a device never ends
        raise _cannot_decode(path, "not a regular file (a pipe, socket or device)")
    if path.stat().st_size == 0:
        raise _cannot_decode(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise _cannot_decode(path, "permission denied")
    try:
        container = av.open(str(path), metadata_errors="replace")
    except av.error.InvalidDataError:
        raise _cannot_decode(path, "not a media file, or its header is corrupt or truncated") from None
    except (av.error.FFmpegError, OSError) as error:
        raise _cannot_decode(path, _short_reason(error)) from None
    try:
        yield container
    finally:
        container.close()


def _cannot_decode(path: Path, reason: str) -> DataError:
    return DataError(f"{path}: cannot decode: {reason}")


class _PastLimit(Exception):
    """The decoding passed the clip length it may hold in memory."""


def _too_long(path: Path, limit: float, seconds: float | None = None) -> DataError:
    length = f" ({seconds:.0f} s)" if seconds else ""
    return DataError(f"{path}: longer{length} than extract.max_seconds = {limit:g} s allows (its frames and samples "
                     "are held in memory); raise the setting, or set 0 for no limit")


def _short_reason(error: BaseException) -> str:
    """FFmpeg errors carry the file name, an errno and sometimes log lines: keep the gist."""
    text = getattr(error, "strerror", None) or str(error) or type(error).__name__
    line = one_line(text, _MAX_REASON_CHARS)
    return line[0].lower() + line[1:] if line else line


# --- streams ----------------------------------------------------------------------------------


def _video_stream(container: "av.container.InputContainer") -> "av.video.stream.VideoStream | None":
    """The first real video stream; an attached picture (album art in an mp3) is not video."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    return None


def _declared_duration(container: "av.container.InputContainer") -> float:
    if container.duration:
        return container.duration / av.time_base
    durations = [float(s.duration * s.time_base) for s in container.streams if s.duration and s.time_base]
    return max(durations, default=0.0)


def _demux_and_decode(container, consumers: list["_FrameSampler | _AudioCollector"],
                      limit: float | None = None) -> list[str]:
    """One pass over the packets of the streams the consumers read; returns what went wrong.

    A packet that fails to decode is skipped; a read error ends the pass (what came before it is
    kept). PyAV raises IndexError when a damaged FLV declares a new stream mid-file: that ends
    the pass too. A frame past ``limit`` seconds, by its timestamp (a gap is filled up to it) or
    by the timeline so far (frames without one), raises :class:`_PastLimit`.
    """
    if not consumers:
        return []
    by_index = {consumer.stream.index: consumer for consumer in consumers}
    failed = 0
    stopped = None
    packets = container.demux([consumer.stream for consumer in consumers])
    while True:
        try:
            packet = next(packets)
        except StopIteration:
            break
        except av.error.FFmpegError as error:
            stopped = f"reading stopped: {_short_reason(error)}"
            break
        except IndexError:
            stopped = "reading stopped: a stream appeared mid-file"
            break
        consumer = by_index[packet.stream.index]
        try:
            for frame in packet.decode():
                if limit is not None and max(consumer.seconds, (frame.time or 0.0) - consumer.origin) > limit:
                    raise _PastLimit
                consumer.add(frame)
        except av.error.FFmpegError:
            failed += 1
    return ([f"{failed} packet(s) failed to decode"] if failed else []) + ([stopped] if stopped else [])


def _partial_reasons(container, decoded: list[tuple["av.stream.Stream", float]], problems: list[str]) -> list[str]:
    """Why this decode looks incomplete: read problems, or streams that end well before the
    duration their header declares. A stream without a declared duration (FLV, Matroska) is only
    judged through the container's duration, and only when every audio and video stream was
    decoded (else a longer stream that was not asked for would look like a shortfall)."""
    reasons = [
        f"{stream.type} ends at {seconds:.2f} s of {declared:.2f} s"
        for stream, seconds in decoded
        if (declared := _stream_duration(stream)) and _falls_short(seconds, declared)
    ]
    every_stream = {s.index for s in container.streams if s.type in ("audio", "video")}
    whole = _declared_duration(container)
    longest = max((seconds for _, seconds in decoded), default=0.0)
    if not reasons and {s.index for s, _ in decoded} >= every_stream and _falls_short(longest, whole):
        reasons.append(f"decoded {longest:.2f} s of {whole:.2f} s")
    return reasons + problems


def _stream_duration(stream: "av.stream.Stream") -> float:
    return float(stream.duration * stream.time_base) if stream.duration and stream.time_base else 0.0


def _falls_short(decoded: float, declared: float) -> bool:
    return bool(declared) and declared - decoded > max(_SHORTFALL_SECONDS, _SHORTFALL_FRACTION * declared)


def _peak_dbfs(samples: np.ndarray) -> float:
    peak = float(np.max(np.abs(samples))) if samples.size else 0.0
    return 20.0 * np.log10(peak) if peak > 0 else -np.inf


# --- video ------------------------------------------------------------------------------------


class _FrameSampler:
    """Picks, from frames arriving in presentation order, the one nearest each target time.

    Only picked frames are scaled and converted to RGB; the others are dropped as decoded. The
    previous frame is held (a reference, not a copy) because it may be nearer the target than the
    frame that passed it.
    """

    def __init__(self, stream, fps: float, origin: float, max_side: int) -> None:
        self.stream = stream
        stream.thread_type = "AUTO"  # frame and slice threads: decoding is most of the cost
        self.step = 1.0 / fps
        self.origin = origin
        self.max_side = max_side
        rate = stream.average_rate or stream.guessed_rate
        self.frame_interval = 1.0 / float(rate) if rate else 0.04
        self.target_index = 0
        self.untimed = 0  # frames placed at the nominal rate for want of a usable timestamp
        self.previous: tuple[object, float] | None = None
        self.last_taken_time: float | None = None
        self.size: tuple[int, int] | None = None
        self.images: list[np.ndarray] = []
        self.times: list[float] = []
        self.end_time = 0.0

    def add(self, frame) -> None:
        time = self._time(frame)
        while self.target_index * self.step <= time:
            target = self.target_index * self.step
            # Nearest frame; on a tie the earlier one, which is the frame on screen at ``target``.
            if self.previous is not None and target - self.previous[1] <= time - target + 1e-9:
                self._take(*self.previous)
            else:
                self._take(frame, time)
            self.target_index += 1
        self.previous = (frame, time)
        length = float(frame.duration * frame.time_base) if frame.duration and frame.time_base else 0.0
        self.end_time = max(self.end_time, time + (length or self.frame_interval))

    @property
    def seconds(self) -> float:
        """How far along the clip's timeline the frames so far reach."""
        return self.end_time

    @property
    def repaired(self) -> str | None:
        """Why this stream's timeline is a guess, if it is."""
        if not self.untimed:
            return None
        return (f"{self.untimed} video frame(s) without a usable timestamp, placed at "
                f"{1 / self.frame_interval:g} fps")

    def finish(self) -> tuple[np.ndarray | None, np.ndarray | None]:
        self.previous = None
        if not self.images:
            return None, None
        frames = np.empty((len(self.images), *self.images[0].shape), dtype=self.images[0].dtype)
        for number, image in enumerate(self.images):
            frames[number] = image
            self.images[number] = None  # freed as it is copied: the peak holds the frames once, not twice
        self.images = []
        return frames, np.asarray(self.times, dtype=np.float64)

    def _time(self, frame) -> float:
        # A time base of zero (PyAV's ``time_base`` is then None) makes every time 0 or NaN.
        time = frame.time if frame.time_base is not None else None
        if time is not None and np.isfinite(time):
            return time - self.origin
        # No usable timestamp: assume the nominal rate after the last frame seen.
        self.untimed += 1
        return self.previous[1] + self.frame_interval if self.previous is not None else 0.0

    def _take(self, frame, time: float) -> None:
        if self.last_taken_time is not None and time <= self.last_taken_time:
            return
        if self.size is None:
            self.size = _fit(frame.width, frame.height, self.max_side)
        width, height = self.size
        image = frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BILINEAR")
        quarter_turns = round((frame.rotation or 0) / 90) % 4
        self.images.append(np.rot90(image, quarter_turns) if quarter_turns else image)
        self.times.append(time)
        self.last_taken_time = time


def _fit(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The size that fits ``max_side`` on the longer side, keeping the aspect ratio; never larger."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


# --- audio ------------------------------------------------------------------------------------


class _AudioCollector:
    """Resamples the audio track to mono float32 as it decodes, keeping it on the clip's timeline:
    a track that starts late, or a gap where packets were lost, is filled with zeros, so that
    sample i is at i / sample_rate seconds like ``frame_times``."""

    def __init__(self, stream, sample_rate: int, origin: float) -> None:
        self.stream = stream
        self.sample_rate = sample_rate
        self.origin = origin
        self.resampler: av.AudioResampler | None = None
        self.layout: tuple | None = None  # (sample format, channel layout, rate) the resampler expects
        self.chunks: list[np.ndarray] = []
        self.position = 0.0  # seconds of the timeline covered so far
        self.problem: str | None = None  # why the track cannot be used, if it cannot
        self.repaired: str | None = None  # what was mended in a track still used

    def add(self, frame) -> None:
        if frame.time is not None:
            gap = frame.time - self.origin - self.position
            if gap > _AUDIO_GAP_SECONDS:
                self.chunks.append(np.zeros(round(gap * self.sample_rate), dtype=np.float32))
                self.position += gap
        layout = (frame.format.name, frame.layout.name, frame.sample_rate)
        if layout != self.layout:
            # A resampler is bound to its first input; a damaged or spliced track can change
            # channels or rate midway, so start a new one.
            self._flush()
            self.resampler = av.AudioResampler(format="flt", layout="mono", rate=self.sample_rate)
            self.layout = layout
        try:
            self._keep(self.resampler.resample(frame))
        except av.error.FFmpegError:
            self.problem = f"cannot mix {frame.layout.name} down to mono"
            raise
        self.position += frame.samples / frame.sample_rate

    @property
    def seconds(self) -> float:
        """How far along the clip's timeline the samples so far reach."""
        return self.position

    def finish(self) -> np.ndarray:
        self._flush()
        return self._finite(np.concatenate(self.chunks) if self.chunks else np.zeros(0, dtype=np.float32))

    def _finite(self, samples: np.ndarray) -> np.ndarray:
        """``samples`` with NaN and infinite values set to 0 (``repaired`` says how many), or none
        at all (``problem`` says why) when fewer than ``MIN_FINITE_AUDIO`` of them are finite."""
        bad = int(np.count_nonzero(~np.isfinite(samples)))
        if not bad:
            return samples
        share = f"{bad} of {samples.size} audio samples are NaN or infinite"
        if samples.size - bad < MIN_FINITE_AUDIO * samples.size:
            self.problem = share
            return np.zeros(0, dtype=np.float32)
        self.repaired = share + " (set to 0)"
        return np.where(np.isfinite(samples), samples, np.float32(0))

    def _flush(self) -> None:
        if self.resampler is None:
            return
        # A resampler that rejected its input (a damaged frame claiming 48 channels, say) fails
        # here too; those packets were counted as failed already and it holds nothing else.
        try:
            self._keep(self.resampler.resample(None))
        except av.error.FFmpegError:
            pass

    def _keep(self, frames: list) -> None:
        self.chunks.extend(resampled.to_ndarray().reshape(-1) for resampled in frames)

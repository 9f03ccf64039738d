"""mercli.media: decoding real clips of every shipped kind, synthetic edge cases written with PyAV
in tmp_path (no media file is committed), and every kind of bad input."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from mercli import media
from mercli.clips import clip_kind
from mercli.errors import DataError
from mercli.media import SILENCE_DBFS, decode, probe
from support.media import write_clip

FPS = 2.0
RATE = 16000
MEAD_ABSENT_AUDIO = {
    "contempt": "no audio track",
    "fear": "no audio track",
    "happy": "no audio track",
    "disgusted": "silent audio track",
    "sad": "silent audio track",
    "surprised": "silent audio track",
}
FFMPEG = shutil.which("ffmpeg")


# --- synthetic media --------------------------------------------------------------------------


def solid(rgb: tuple[int, int, int], width: int = 64, height: int = 48) -> np.ndarray:
    image = np.zeros((height, width, 3), np.uint8)
    image[...] = rgb
    return image


def tone(seconds: float, sample_rate: int, amplitude: float = 0.3) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * 440 * np.arange(round(seconds * sample_rate)) / sample_rate)


def write_media(path: Path, frames: list[np.ndarray] | None = None, times: list[float] | None = None,
                rate: int = 10, video_codec: str = "libx264", audio: np.ndarray | None = None,
                sample_rate: int = RATE, audio_codec: str = "aac", audio_start: float = 0.0) -> Path:
    """Encode RGB ``frames`` (at ``rate``, or at explicit ``times`` in seconds) and/or a mono track."""
    time_base = Fraction(1, 1000) if times is not None else Fraction(1, rate)
    with av.open(str(path), "w") as container:
        if frames is not None:
            video = container.add_stream(video_codec, rate=rate)
            video.height, video.width = frames[0].shape[:2]
            video.pix_fmt = "yuv420p"
            video.codec_context.time_base = time_base
        if audio is not None:
            sound = container.add_stream(audio_codec, rate=sample_rate)
            sound.layout = "mono"
        for index, image in enumerate(frames or []):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = round(times[index] * 1000) if times is not None else index
            frame.time_base = time_base
            container.mux(video.encode(frame))
        if frames is not None:
            container.mux(video.encode())
        if audio is not None:
            start = round(audio_start * sample_rate)
            for offset in range(0, len(audio), 1024):
                chunk = audio[None, offset:offset + 1024].astype(np.float32)
                frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = sample_rate, start + offset, Fraction(1, sample_rate)
                container.mux(sound.encode(frame))
            container.mux(sound.encode())
    return path


def assert_cannot_decode(path: Path, reason: str | None = None) -> None:
    with pytest.raises(DataError) as caught:
        decode(path, path.stem)
    message = str(caught.value)
    assert message.startswith(f"{path}: cannot decode: "), message
    assert "\n" not in message and len(message) < len(str(path)) + 150, message
    if reason is not None:
        assert reason in message


# --- real clips -------------------------------------------------------------------------------


def real_clips(shared_data: Path) -> list[Path]:
    clips = [p for folder in ("crema-d", "mead", "mer2023") for p in sorted((shared_data / folder).iterdir())
             if clip_kind(p)]
    return clips + sorted((shared_data / "emodb-dev" / "wav").glob("*.wav"))[:4]


@pytest.mark.slow
def test_every_real_clip_decodes_with_consistent_frames_and_audio(shared_data):
    clips = real_clips(shared_data)
    assert len(clips) == 12 + 7 + 8 + 4  # crema-d, mead, mer2023, emodb
    for path in clips:
        clip = decode(path, path.stem, fps=FPS, sample_rate=RATE)
        info = probe(path)
        assert clip.clip_id == path.stem and clip.path == path and clip.sample_rate == RATE
        partial = clip.partial is not None
        assert partial == (path.name == "sad.mp4"), (path, clip.derived)
        if not partial:
            assert clip.duration == pytest.approx(info.duration, abs=1e-6), path

        if info.has_video:
            frames, times = clip.frames, clip.frame_times
            assert frames.dtype == np.uint8 and frames.ndim == 4 and frames.shape[3] == 3, path
            assert frames.shape[1:3] == (info.height, info.width) or max(info.width, info.height) > 1280
            assert abs(len(frames) - clip.duration * FPS) <= 1 and len(frames) >= 1, (path, len(frames))
            assert times.dtype == np.float64 and times.shape == (len(frames),)
            assert times[0] < 0.05 and np.all(np.diff(times) > 0.5 - 2 / info.fps), (path, times)
            assert np.all(np.abs(times - np.arange(len(times)) / FPS) <= 1 / info.fps), (path, times)
            assert frames.std() > 5, f"{path}: frames look blank"
        else:
            assert clip.frames is None and clip.frame_times is None
            assert clip.absent["visual"] == "audio-only file"

        if info.has_audio:
            assert clip.audio.dtype == np.float32 and clip.audio.ndim == 1
            assert abs(len(clip.audio) / RATE - clip.duration) < 0.1, (path, len(clip.audio) / RATE, clip.duration)
        else:
            assert clip.audio is None and clip.absent["audio"] == "no audio track"
        if path.parent.name != "mead" or path.stem == "M030_sad_3_001":
            assert "audio" not in clip.absent, path  # real speech everywhere else
            assert 20 * np.log10(np.abs(clip.audio).max()) > -40, path


@pytest.mark.slow
def test_mead_crops_have_missing_or_silent_audio_and_the_1080p_clip_is_scaled(shared_data):
    for stem, reason in MEAD_ABSENT_AUDIO.items():
        clip = decode(shared_data / "mead" / f"{stem}.mp4", stem)
        assert clip.absent == {"audio": reason}, stem
        assert clip.frames.shape[1:] == (256, 256, 3)
        if reason == "silent audio track":
            assert clip.audio is not None and 20 * np.log10(np.abs(clip.audio).max() + 1e-12) < SILENCE_DBFS
    big = decode(shared_data / "mead" / "M030_sad_3_001.mp4", "M030_sad_3_001")
    assert big.frames.shape[1:] == (720, 1280, 3) and big.absent == {}
    small = decode(shared_data / "mead" / "M030_sad_3_001.mp4", "M030_sad_3_001", max_side=320, audio=False)
    assert small.frames.shape[1:] == (180, 320, 3) and small.audio is None


def test_the_truncated_mead_clip_is_partly_decoded(shared_data):
    # sad.mp4 really is cut short: its header declares 6.28 s, only 4.4 s of packets are present.
    clip = decode(shared_data / "mead" / "sad.mp4", "sad")
    assert clip.partial == "partly decoded: video ends at 4.44 s of 6.28 s; audio ends at 4.42 s of 6.28 s"
    assert clip.duration == pytest.approx(4.44, abs=0.01)
    assert len(clip.frames) == 9
    # Judged per stream, so a video-only decode notices too.
    picture = decode(shared_data / "mead" / "sad.mp4", "sad", audio=False)
    assert picture.partial == "partly decoded: video ends at 4.44 s of 6.28 s"


def test_probe_reads_headers(shared_data):
    info = probe(shared_data / "crema-d" / "1001_DFA_ANG_XX.flv")
    assert (info.has_video, info.has_audio, info.width, info.height, info.sample_rate) == (True, True, 480, 360, 44100)
    assert info.duration == pytest.approx(2.235) and info.fps == pytest.approx(29.97, abs=0.01)
    info = probe(shared_data / "crema-d" / "1002_DFA_ANG_XX.mp3")
    assert (info.has_video, info.has_audio, info.width, info.fps) == (False, True, None, None)
    assert not probe(shared_data / "mead" / "contempt.mp4").has_audio


def test_only_the_requested_streams_are_decoded(shared_data):
    path = shared_data / "mer2023" / "sample_00000167.mp4"
    sound = decode(path, "s", video=False)
    assert sound.frames is None and sound.frame_times is None and sound.absent == {}
    assert len(sound.audio) / RATE == pytest.approx(2.38, abs=0.05)
    picture = decode(path, "s", audio=False, fps=5)
    assert picture.audio is None and picture.absent == {} and len(picture.frames) == 12
    assert decode(shared_data / "crema-d" / "1002_DFA_ANG_XX.mp3", "a", video=False).absent == {}


# --- synthetic clips --------------------------------------------------------------------------


def test_frames_are_rgb_not_bgr(tmp_path):
    path = write_media(tmp_path / "red.mp4", [solid((255, 0, 0))] * 10 + [solid((0, 0, 255))] * 10)
    clip = decode(path, "red")
    red, blue = clip.frames[0].reshape(-1, 3).mean(0), clip.frames[-1].reshape(-1, 3).mean(0)
    assert red[0] > 240 and red[1] < 15 and red[2] < 15, red
    assert blue[2] > 240 and blue[0] < 15 and blue[1] < 15, blue


@pytest.mark.parametrize("name, video_codec, audio_codec, sample_rate", [
    ("clip.mkv", "libx264", "aac", 16000),
    ("clip.webm", "libvpx-vp9", "libopus", 48000),
    ("clip.avi", "mpeg4", "libmp3lame", 44100),
    ("clip.mov", "libx264", "aac", 44100),
    ("clip.flv", "flv", "libmp3lame", 22050),
])
def test_video_containers(tmp_path, name, video_codec, audio_codec, sample_rate):
    path = write_media(tmp_path / name, [solid((0, 200, 0))] * 20, video_codec=video_codec,
                       audio=tone(2.0, sample_rate), audio_codec=audio_codec, sample_rate=sample_rate)
    clip = decode(path, "clip", sample_rate=RATE)
    assert clip.absent == {} and clip.partial is None
    assert clip.frames.shape[1:] == (48, 64, 3) and len(clip.frames) in (4, 5)
    assert abs(len(clip.audio) - 2 * RATE) < 0.1 * RATE
    assert np.abs(clip.audio).max() == pytest.approx(0.3, abs=0.05)  # mono, level kept


@pytest.mark.parametrize("name, codec", [("a.wav", "pcm_s16le"), ("a.mp3", "libmp3lame"), ("a.m4a", "aac"),
                                         ("sound-only.mp4", "aac")])
def test_audio_only_files(tmp_path, name, codec):
    path = write_media(tmp_path / name, audio=tone(1.5, 44100), sample_rate=44100, audio_codec=codec)
    clip = decode(path, "a", sample_rate=8000)
    assert clip.frames is None and clip.absent == {"visual": "audio-only file"}
    assert clip.sample_rate == 8000 and abs(len(clip.audio) - 1.5 * 8000) < 0.1 * 8000


def test_video_without_audio_and_with_a_silent_track(tmp_path):
    frames = [solid((90, 90, 90))] * 10
    mute = decode(write_media(tmp_path / "mute.mkv", frames), "mute")
    assert mute.audio is None and mute.absent == {"audio": "no audio track"} and len(mute.frames) == 2
    silent = decode(write_media(tmp_path / "silent.mp4", frames, audio=np.zeros(RATE)), "silent")
    assert silent.absent == {"audio": "silent audio track"} and silent.audio is not None
    quiet = decode(write_media(tmp_path / "quiet.mp4", frames, audio=tone(1.0, RATE, amplitude=0.01)), "quiet")
    assert quiet.absent == {}  # -40 dBFS is quiet speech, not silence


def with_non_finite(samples: np.ndarray, share: float) -> np.ndarray:
    """``samples`` with the first ``share`` of them NaN, and one infinite sample among those."""
    spoilt = samples.astype(np.float32)
    count = round(share * len(spoilt))
    spoilt[:count] = np.nan
    spoilt[count // 2] = np.inf
    return spoilt


def test_a_float_wav_with_some_nan_samples_is_repaired_and_flagged_not_silent(tmp_path):
    path = write_media(tmp_path / "nan.wav", audio=with_non_finite(tone(2.0, RATE), 0.125), audio_codec="pcm_f32le")
    clip = decode(path, "nan")
    assert clip.absent == {"visual": "audio-only file"}  # not "silent audio track"
    assert np.isfinite(clip.audio).all() and len(clip.audio) == 2 * RATE
    assert not clip.audio[:RATE // 4].any() and np.abs(clip.audio[RATE // 4:]).max() == pytest.approx(0.3, abs=0.01)
    assert clip.partial == f"partly decoded: {RATE // 4} of {2 * RATE} audio samples are NaN or infinite (set to 0)"


def test_a_wav_of_nan_samples_cannot_be_decoded(tmp_path):
    for name, share in [("all.wav", 1.0), ("mostly.wav", 0.6)]:
        path = write_media(tmp_path / name, audio=with_non_finite(tone(1.0, RATE), share), audio_codec="pcm_f32le")
        assert_cannot_decode(path, f"{round(share * RATE)} of {RATE} audio samples are NaN or infinite")


def test_a_nan_audio_track_beside_video_is_absent_for_that_reason(tmp_path):
    frames = [solid((90, 90, 90))] * 10
    path = write_media(tmp_path / "nan.mkv", frames, audio=with_non_finite(tone(1.0, RATE), 1.0),
                       audio_codec="pcm_f32le")
    clip = decode(path, "nan")
    assert clip.absent == {"audio": f"{RATE} of {RATE} audio samples are NaN or infinite"}
    assert clip.audio is None and len(clip.frames) == 2


def test_a_raw_video_stream_without_timestamps_is_flagged(tmp_path):
    path = tmp_path / "raw.mp4"  # an H.264 elementary stream: the demuxer gives no frame a timestamp
    with av.open(str(path), "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for index in range(50):
            frame = av.VideoFrame.from_ndarray(solid((5 * index, 0, 0)), format="rgb24")
            frame.pts = index
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    clip = decode(path, "raw")
    assert clip.frame_times.tolist() == pytest.approx([0.0, 0.48, 1.0, 1.48])
    assert clip.partial == "partly decoded: 50 video frame(s) without a usable timestamp, placed at 25 fps"


def test_frames_with_a_time_base_of_zero_are_placed_at_the_nominal_rate(tmp_path):
    path = write_media(tmp_path / "ten.mp4", [solid((20 * i, 0, 0)) for i in range(10)], rate=10)
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        sampler = media._FrameSampler(stream, FPS, 0.0, media.DEFAULT_MAX_SIDE)
        for frame in container.decode(stream):
            frame.time_base = Fraction(0, 1)  # PyAV then says every frame is at 0 s
            sampler.add(frame)
        frames, times = sampler.finish()
    assert times.tolist() == pytest.approx([0.0, 0.5]) and frames[:, 0, 0, 0].tolist() == pytest.approx([0, 100], abs=4)
    assert sampler.repaired == "10 video frame(s) without a usable timestamp, placed at 10 fps"


def test_variable_frame_rate_is_sampled_by_timestamp(tmp_path):
    times = [0.0, 0.1, 0.15, 1.3, 1.35, 2.0, 2.05, 2.1]
    path = write_media(tmp_path / "vfr.mkv", [solid((10 * i, 0, 0)) for i in range(len(times))], times=times)
    clip = decode(path, "vfr")
    # targets 0, .5, 1, 1.5, 2: the nearest frame each, none used twice
    assert clip.frame_times.tolist() == pytest.approx([0.0, 0.15, 1.3, 1.35, 2.0])
    assert clip.frames[:, 0, 0, 0].tolist() == pytest.approx([0, 20, 30, 40, 50], abs=4)
    dense = decode(path, "vfr", fps=30)
    assert dense.frame_times.tolist() == pytest.approx(times)


def test_a_very_short_clip_gives_one_frame(tmp_path):
    clip = decode(write_media(tmp_path / "one.mp4", [solid((0, 0, 255))]), "one")
    assert clip.frames.shape == (1, 48, 64, 3) and clip.frame_times.tolist() == [0.0]


def test_late_audio_is_aligned_to_the_clip_timeline(tmp_path):
    path = write_media(tmp_path / "late.mkv", [solid((0, 0, 0))] * 20, audio=tone(1.5, RATE), audio_start=0.5)
    clip = decode(path, "late")
    onset = np.argmax(np.abs(clip.audio) > 0.05) / RATE
    assert onset == pytest.approx(0.5, abs=0.03)
    assert clip.partial is None


def test_frames_are_scaled_to_max_side_keeping_aspect(tmp_path):
    clip = decode(write_media(tmp_path / "wide.mp4", [solid((0, 255, 0), 320, 128)] * 4), "wide", max_side=100)
    assert clip.frames.shape[1:] == (40, 100, 3)
    assert decode(tmp_path / "wide.mp4", "wide", max_side=5000).frames.shape[1:] == (128, 320, 3)


@pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg binary is needed to tag a rotation")
def test_rotation_metadata_is_applied_like_ffmpeg_does(tmp_path):
    image = solid((0, 0, 0))
    image[:24, :32] = (255, 0, 0)
    plain = write_media(tmp_path / "plain.mp4", [image] * 4)
    rotated = tmp_path / "rotated.mp4"
    subprocess.run([FFMPEG, "-v", "error", "-i", plain, "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated],
                   check=True)
    reference = subprocess.run([FFMPEG, "-v", "error", "-i", rotated, "-frames:v", "1", "-f", "rawvideo",
                                "-pix_fmt", "rgb24", "-"], check=True, capture_output=True).stdout
    clip = decode(rotated, "rotated")
    assert clip.frames.shape[1:] == (64, 48, 3)
    assert np.abs(clip.frames[0].astype(int) - np.frombuffer(reference, np.uint8).reshape(64, 48, 3)).max() <= 2


@pytest.mark.skipif(FFMPEG is None, reason="the ffmpeg binary is needed to attach cover art")
def test_cover_art_is_not_video(tmp_path):
    sound = write_media(tmp_path / "plain.mp3", audio=tone(1.0, 44100), sample_rate=44100, audio_codec="libmp3lame")
    cover = tmp_path / "cover.png"
    subprocess.run([FFMPEG, "-v", "error", "-f", "lavfi", "-i", "color=c=green:s=64x48", "-frames:v", "1", cover],
                   check=True)
    tagged = tmp_path / "tagged.mp3"
    subprocess.run([FFMPEG, "-v", "error", "-i", sound, "-i", cover, "-map", "0", "-map", "1", "-c", "copy",
                    "-disposition:v", "attached_pic", tagged], check=True)
    assert len(av.open(str(tagged)).streams.video) == 1
    clip = decode(tagged, "tagged")
    assert clip.frames is None and clip.absent == {"visual": "audio-only file"}
    assert probe(tagged).has_video is False


# --- bad input --------------------------------------------------------------------------------


# Decodes 200 frames of 640x480 and prints how far the process's peak memory grew, in units of the
# frames returned. glibc starts from a fixed 128 KiB mmap threshold, so that every frame's memory goes
# back to the system when freed and the peak is what is held at once, not what the heap kept.
PEAK_OF_DECODING = """
import resource, sys
from pathlib import Path
import av, numpy as np
from mercli.media import decode
path = Path(sys.argv[1])
with av.open(str(path), "w") as container:
    stream = container.add_stream("mpeg4", rate=10)
    stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
    for index in range(200):
        image = np.full((480, 640, 3), index, dtype=np.uint8)
        container.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
    container.mux(stream.encode())
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
clip = decode(path, "peak", fps=10, audio=False)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024 / clip.frames.nbytes)
"""


@pytest.mark.skipif(sys.platform != "linux", reason="ru_maxrss in KiB and glibc's MALLOC_ variables are Linux's")
def test_decoding_holds_the_frames_once_at_its_peak(tmp_path):
    grown = subprocess.run([sys.executable, "-c", PEAK_OF_DECODING, str(tmp_path / "peak.mp4")], check=True,
                           capture_output=True, text=True, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"})
    assert float(grown.stdout) < 1.5, grown.stdout  # observed 1.05; 2.03 when the frames were stacked from a list


def test_a_clip_longer_than_the_limit_is_refused_by_its_header(tmp_path):
    path = write_clip(tmp_path / "long.mp4", seconds=3.0)
    with pytest.raises(DataError, match=r"long.mp4: longer \(3 s\) than extract.max_seconds = 1.5 s allows"):
        decode(path, "long", max_seconds=1.5)
    assert decode(path, "long", max_seconds=4.0).duration == pytest.approx(3.0, abs=0.1)


@pytest.mark.parametrize("video, audio", [(True, False), (False, True)])
def test_a_clip_whose_header_says_nothing_is_refused_once_decoding_passes_the_limit(tmp_path, monkeypatch, video,
                                                                                      audio):
    path = write_clip(tmp_path / "long.mp4", seconds=3.0)
    monkeypatch.setattr(media, "_declared_duration", lambda container: 0.0)  # a raw stream, or a header that lies
    with pytest.raises(DataError, match=r"long.mp4: longer than extract.max_seconds = 1.5 s allows"):
        decode(path, "long", video=video, audio=audio, max_seconds=1.5)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes are POSIX's")
def test_a_pipe_or_a_device_is_not_decoded(tmp_path):
    pipe = tmp_path / "pipe.mp4"
    os.mkfifo(pipe)
    assert_cannot_decode(pipe, "not a regular file")
    assert_cannot_decode(Path(os.devnull), "not a regular file")


def test_zero_bytes_text_and_truncated_header_cannot_be_decoded(tmp_path, shared_data):
    empty = tmp_path / "empty.mp4"
    empty.touch()
    assert_cannot_decode(empty, "empty file")
    text = tmp_path / "notes.mp4"
    text.write_text("these are not frames\n" * 50)
    assert_cannot_decode(text, "not a media file")
    header = tmp_path / "header.mp4"
    header.write_bytes((shared_data / "mer2023" / "sample_00000338.mp4").read_bytes()[:2000])
    assert_cannot_decode(header)


def test_missing_file_and_directory(tmp_path):
    assert_cannot_decode(tmp_path / "missing.mp4", "no such file")
    (tmp_path / "folder.mp4").mkdir()
    assert_cannot_decode(tmp_path / "folder.mp4", "is a directory")
    with pytest.raises(DataError, match="missing.flv: cannot decode: no such file"):
        probe(tmp_path / "missing.flv")


def test_unreadable_file(tmp_path, monkeypatch):
    path = write_media(tmp_path / "locked.mp4", [solid((1, 2, 3))])
    # Tests may run as root, whom file modes do not stop: make the open fail the way it would.
    monkeypatch.setattr(media.os, "access", lambda *_: False)
    assert_cannot_decode(path, "permission denied")
    monkeypatch.undo()

    def refuse(*_, **__):
        raise av.error.PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(media.av, "open", refuse)
    assert_cannot_decode(path, "permission denied")


def test_a_file_with_no_audio_or_video_stream(tmp_path):
    subtitles = tmp_path / "subtitles.mp4"
    subtitles.write_text("1\n00:00:00,000 --> 00:00:01,000\nhello\n\n2\n00:00:01,500 --> 00:00:02,000\nworld\n")
    assert_cannot_decode(subtitles, "no audio or video stream")


def test_truncated_in_the_middle(tmp_path, shared_data):
    # FLV streams packet by packet: the first half decodes and is returned, flagged as partial.
    flv = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    half = tmp_path / "half.flv"
    half.write_bytes(flv.read_bytes()[: flv.stat().st_size // 2])
    clip = decode(half, "half")
    assert clip.partial.startswith("partly decoded: decoded 1.0") and clip.absent == {}
    assert 0.5 < clip.duration < 1.6 and len(clip.frames) in (2, 3)
    assert abs(len(clip.audio) / RATE - clip.duration) < 0.1
    # An MP4 whose index (moov) sits at the end loses it when cut: nothing usable is left.
    mp4 = shared_data / "mer2023" / "sample_00000338.mp4"
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(mp4.read_bytes()[: mp4.stat().st_size // 2])
    assert_cannot_decode(cut, "header is corrupt or truncated")


def test_damaged_packets_are_skipped_and_audio_stays_aligned(tmp_path, shared_data):
    source = shared_data / "mer2023" / "sample_00000694.mp4"
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 30000] = bytes(30000)
    damaged = tmp_path / "damaged.mp4"
    damaged.write_bytes(bytes(data))
    clip, intact = decode(damaged, "damaged"), decode(source, "intact")
    assert "packet(s) failed to decode" in clip.partial
    assert len(clip.frames) == len(intact.frames)
    # lost audio packets leave zeros in their place, so what follows stays in sync
    assert len(clip.audio) == pytest.approx(len(intact.audio), abs=RATE * 0.01)
    tail = slice(-RATE, None)
    correlation = np.dot(clip.audio[tail], intact.audio[tail]) / np.dot(intact.audio[tail], intact.audio[tail])
    assert correlation > 0.9


def test_a_stream_appearing_mid_file_ends_the_pass_cleanly(tmp_path):
    """A damaged FLV can announce a new stream late; PyAV then fails with IndexError."""
    plain = write_media(tmp_path / "plain.flv", [solid((2 * i, 0, 0)) for i in range(120)], video_codec="flv")
    data = plain.read_bytes()
    position, late_tag = 13, None  # FLV header (9 bytes) and the first previous-tag-size (4)
    while position < len(data):
        size = int.from_bytes(data[position + 1:position + 4], "big")
        stamp = int.from_bytes(data[position + 4:position + 7], "big")
        if data[position] == 9 and stamp >= 9000:
            late_tag = position
            break
        position += 11 + size + 4
    payload = bytes([0x2E]) + bytes(100)  # an MP3 audio tag full of zeros
    tag = (bytes([8]) + len(payload).to_bytes(3, "big") + (9000).to_bytes(3, "big") + bytes(4) + payload
           + (11 + len(payload)).to_bytes(4, "big"))
    spliced = tmp_path / "spliced.flv"
    spliced.write_bytes(data[:late_tag] + tag + data[late_tag:])
    clip = decode(spliced, "spliced")
    assert "reading stopped: a stream appeared mid-file" in clip.partial
    assert len(clip.frames) >= 1 and clip.absent == {"audio": "no audio track"}


def test_a_track_that_changes_rate_midway(tmp_path):
    first = write_media(tmp_path / "first.mp3", audio=tone(1.0, 44100), sample_rate=44100, audio_codec="libmp3lame")
    second = write_media(tmp_path / "second.mp3", audio=tone(1.0, 22050), sample_rate=22050, audio_codec="libmp3lame")
    joined = tmp_path / "joined.mp3"
    joined.write_bytes(first.read_bytes() + second.read_bytes())
    clip = decode(joined, "joined")
    assert len(clip.audio) / RATE == pytest.approx(2.0, abs=0.2)
    assert np.abs(clip.audio[-RATE // 2:]).max() == pytest.approx(0.3, abs=0.05)  # the second part is there


def test_audio_that_cannot_be_mixed_down(tmp_path):
    path = tmp_path / "array.wav"
    with wave.open(str(path), "wb") as writer:  # 32 channels in no known order: swresample refuses
        writer.setnchannels(32)
        writer.setsampwidth(2)
        writer.setframerate(RATE)
        writer.writeframes(np.ones((RATE, 32), "<i2").tobytes())
    assert_cannot_decode(path, "cannot mix 32 channels down to mono")


def test_bad_arguments_are_rejected(shared_data):
    with pytest.raises(ValueError):
        decode(shared_data / "crema-d" / "1002_DFA_ANG_XX.mp3", "x", fps=0)

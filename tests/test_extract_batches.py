"""``mer extract`` in groups of ``extract.batch_size`` clips: each encoder's ``encode_batch`` takes a
group at once while the next group is decoded, and batching never changes what is stored, nor
which clip fails and why. Small encoders defined here that count their calls, on synthetic clips."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path
from typing import Sequence

import numpy as np
import pytest
from click.testing import CliRunner
from support.encoders import SwallowsCtrlC
from support.media import loudness_frames, write_clip
from support.mer_process import run_mer, with_site
from support.plugins import fake_distribution

from mercli import plugins
from mercli.cli import cli
from mercli.clips import discover
from mercli.config import load
from mercli.contracts import DecodedClip, Encoder, Features
from mercli.extract import extract_clips
from mercli.features import list_feature_sets
from mercli.hookspecs import hookimpl
from mercli.workspace import Workspace

av = pytest.importorskip("av")

#: Every call the encoders below receive, in order: (encoder, "encode" or "batch", clip ids).
CALLS: list[tuple[str, str, tuple[str, ...]]] = []


class Counting(Encoder):
    """Audio loudness per 0.1 s; a clip named "poison" makes the whole batch raise, and fails alone
    when it is encoded by itself."""

    name = "test-count-audio"
    version = "1"
    modality = "audio"
    level = "frame"
    dim = 1

    def encode(self, clip: DecodedClip) -> Features:
        CALLS.append((self.name, "encode", (clip.clip_id,)))
        return self.measure(clip)

    def encode_batch(self, clips: Sequence[DecodedClip]) -> list[Features]:
        CALLS.append((self.name, "batch", tuple(c.clip_id for c in clips)))
        if any("poison" in c.clip_id for c in clips):
            raise RuntimeError("the batch met a poisoned clip")
        return [self.measure(clip) for clip in clips]

    @staticmethod
    def measure(clip: DecodedClip) -> Features:
        if "poison" in clip.clip_id:
            raise RuntimeError("poisoned on purpose")
        return loudness_frames(clip.audio)


class CountingColour(Counting):
    """The clip's mean colour; every clip of a batch in one pass."""

    name = "test-count-colour"
    modality = "visual"
    level = "utterance"
    dim = 3

    @staticmethod
    def measure(clip: DecodedClip) -> Features:
        return Features(clip.frames.reshape(-1, 3).mean(axis=0).astype(np.float32))


class CountedSwallowsCtrlC(SwallowsCtrlC):
    name = "test-batch-swallow"

    def encode(self, clip: DecodedClip) -> Features:
        CALLS.append((self.name, "encode", (clip.clip_id,)))
        return super().encode(clip)


class BatchPlugin:
    @hookimpl
    def register_encoders(self, register):
        for encoder in (Counting, CountingColour, CountedSwallowsCtrlC):
            register(encoder)


ENCODERS = ["test-count-audio", "test-count-colour"]


@pytest.fixture
def counting(fresh_plugins):
    plugins.loaded().manager.register(BatchPlugin(), name="test-batches")
    CALLS.clear()
    yield CALLS


def clips_folder(folder: Path, names: dict[str, dict]) -> Path:
    folder.mkdir()
    for name, options in names.items():
        if options.get("broken"):
            (folder / name).write_bytes(b"not a video")
        else:
            write_clip(folder / name, **options)
    return folder


@pytest.fixture
def seven(tmp_path: Path) -> Path:
    """Seven clips, so that groups of three leave a group of one: two loud and one soft colour, a
    clip without audio, an audio-only file, and two of another colour and length."""
    return clips_folder(tmp_path / "clips", {
        "a.mp4": {}, "b.mp4": {"colour": (20, 40, 220)}, "c_mute.mp4": {"audio": False},
        "d_voice.wav": {"video": False}, "e.mp4": {"seconds": 1.5}, "f.mp4": {"colour": (10, 200, 10)},
        "g.mp4": {"seconds": 0.7},
    })


def extract(workspace: Path, folder: Path, batch_size: int, encoders=ENCODERS, observe=None, **settings):
    config = load(None, environ={}, overrides={"extract.encoders": encoders, "extract.batch_size": batch_size,
                                               **settings})
    return extract_clips(discover(folder), config, Workspace(workspace), {},
                         **({"observe": observe} if observe else {}))


def stored_files(workspace: Path) -> dict[str, bytes]:
    """Every file of every feature set, by path under ``features/`` (a manifest without the time
    its set was created)."""
    root = workspace / "features"
    return {str(p.relative_to(root)): without_time(p) for p in sorted(root.rglob("*"))
            if p.is_file() and "_failures" not in p.parts}


def without_time(path: Path) -> bytes:
    if path.name != "manifest.json":
        return path.read_bytes()
    manifest = json.loads(path.read_text())
    del manifest["created"]
    return json.dumps(manifest).encode()


def calls(name: str, kind: str) -> list[tuple[str, ...]]:
    return [ids for encoder, how, ids in CALLS if encoder == name and how == kind]


def test_groups_reach_encode_batch_and_one_clip_at_a_time_reaches_encode(counting, seven, tmp_path):
    extract(tmp_path / "one", seven, 1)
    assert calls("test-count-audio", "batch") == [] and calls("test-count-colour", "batch") == []
    assert len(calls("test-count-audio", "encode")) == 6, "every clip with audio, by itself"
    CALLS.clear()

    summary = extract(tmp_path / "three", seven, 3)
    assert summary.done == 7 and not summary.failed
    # groups (a b c_mute) (d_voice e f) (g): each encoder sees the clips of a group that have its modality
    assert calls("test-count-audio", "batch") == [("a", "b"), ("d_voice", "e", "f")]
    assert calls("test-count-audio", "encode") == [("g",)], "a group of one clip goes to encode"
    assert calls("test-count-colour", "batch") == [("a", "b", "c_mute"), ("e", "f")]
    assert calls("test-count-colour", "encode") == [("g",)]


def test_batches_store_the_very_same_files_as_one_clip_at_a_time(counting, seven, tmp_path):
    one = extract(tmp_path / "one", seven, 1)
    four = extract(tmp_path / "four", seven, 4)
    assert one.to_json() | {"feature_sets": None} == four.to_json() | {"feature_sets": None}
    first, second = stored_files(tmp_path / "one"), stored_files(tmp_path / "four")
    assert len(first) > 7 and first == second
    assert {s["name"] for s in one.feature_sets} == {s["name"] for s in four.feature_sets}


def test_a_clip_that_makes_the_batch_raise_fails_alone(counting, seven, tmp_path):
    (seven / "poison.mp4").write_bytes((seven / "a.mp4").read_bytes())
    one = extract(tmp_path / "one", seven, 1)
    CALLS.clear()
    summary = extract(tmp_path / "eight", seven, 8)

    assert summary.done == 7 and [f["clip"] for f in summary.failed] == ["poison"]
    assert summary.failed == one.failed == [
        {"clip": "poison", "reason": "encoder test-count-audio: RuntimeError: poisoned on purpose"}]
    audio_batch = ("a", "b", "d_voice", "e", "f", "g", "poison")
    assert calls("test-count-audio", "batch") == [audio_batch]
    assert calls("test-count-audio", "encode") == [(clip,) for clip in audio_batch], "then clip by clip"
    assert len(calls("test-count-colour", "batch")) == 1, "the other encoder's batch is untouched"
    failures = tmp_path / "eight" / "features" / "_failures"
    assert sorted(p.stem for p in failures.glob("*.json")) == ["poison"]
    assert json.loads((failures / "poison.json").read_text())["stage"] == "encode"
    assert stored_files(tmp_path / "one") == stored_files(tmp_path / "eight")


def test_a_clip_that_cannot_be_decoded_fails_alone_in_its_group(counting, tmp_path):
    folder = clips_folder(tmp_path / "clips", {"a.mp4": {}, "b_broken.mp4": {"broken": True}, "c.mp4": {}})
    summary = extract(tmp_path / "ws", folder, 3)

    assert summary.done == 2 and [f["clip"] for f in summary.failed] == ["b_broken"]
    assert "cannot decode" in summary.failed[0]["reason"] and "b_broken.mp4" in summary.failed[0]["reason"]
    assert calls("test-count-audio", "batch") == [("a", "c")]
    record = json.loads((tmp_path / "ws" / "features" / "_failures" / "b_broken.json").read_text())
    assert record["stage"] == "extract"


def test_absent_modalities_in_a_group_are_results_not_batch_members(counting, tmp_path):
    folder = clips_folder(tmp_path / "clips", {"a_mute.mp4": {"audio": False}, "b_voice.wav": {"video": False},
                                               "c.mp4": {}})
    summary = extract(tmp_path / "ws", folder, 3)

    assert summary.done == 3 and not summary.failed
    assert summary.absent == {"audio": {"no audio track": 1}, "visual": {"audio-only file": 1}}
    assert calls("test-count-audio", "batch") == [("b_voice", "c")] and not calls("test-count-audio", "encode")
    assert calls("test-count-colour", "batch") == [("a_mute", "c")] and not calls("test-count-colour", "encode")
    sets = {s.manifest.encoder: s for s in list_feature_sets(tmp_path / "ws" / "features")}
    assert sets["test-count-audio"].status("a_mute") == "absent"
    assert sets["test-count-colour"].status("b_voice") == "absent"


def test_an_interrupted_batched_run_resumes_where_it_stopped(counting, seven, tmp_path, monkeypatch):
    """Stopped while the next group is being decoded: the decoding thread is waited for."""
    import time

    import mercli.media as media

    seen: list[str] = []
    decode = media.decode

    def slow(path, clip_id, **options):
        if clip_id == "e":
            time.sleep(0.5)
        return decode(path, clip_id, **options)

    def interrupt(outcome):
        seen.append(outcome.clip_id)
        if len(seen) == 3:  # the first group is stored; the second is being decoded
            raise KeyboardInterrupt

    monkeypatch.setattr(media, "decode", slow)
    with pytest.raises(KeyboardInterrupt):
        try:
            extract(tmp_path / "ws", seven, 3, observe=interrupt)
        finally:  # while the interrupt is handled, as the CLI reports it
            assert not decoding_threads(), "the decoding thread outlived the run"
    monkeypatch.undo()
    assert not [p for p in (tmp_path / "ws").rglob("*") if p.name.endswith(".part")]
    CALLS.clear()

    summary = extract(tmp_path / "ws", seven, 3)
    assert summary.skipped == 3 and summary.done == 4
    assert calls("test-count-audio", "batch") == [("d_voice", "e", "f")]
    extract(tmp_path / "whole", seven, 3)
    assert stored_files(tmp_path / "ws") == stored_files(tmp_path / "whole")


def test_a_group_goes_only_to_the_encoders_that_lack_its_clips(counting, seven, tmp_path):
    extract(tmp_path / "ws", seven, 3, encoders=["test-count-colour"])
    CALLS.clear()
    summary = extract(tmp_path / "ws", seven, 3)

    assert summary.done == 7
    assert calls("test-count-colour", "batch") == calls("test-count-colour", "encode") == []
    assert calls("test-count-audio", "batch") == [("a", "b"), ("d_voice", "e", "f")]


def test_the_next_group_is_decoded_while_the_encoders_work_on_this_one(counting, seven, tmp_path, monkeypatch):
    """The first group's batch waits until the second group's first clip is being decoded: without
    a decoding thread that never happens."""
    import mercli.media as media

    decoding = threading.Event()
    decode = media.decode

    def noting(path, clip_id, **options):
        if clip_id == "d_voice":
            decoding.set()
        return decode(path, clip_id, **options)

    overlapped: list[bool] = []

    def waiting(self, clips):
        if clips[0].clip_id == "a":
            overlapped.append(decoding.wait(timeout=10))
        return [self.measure(clip) for clip in clips]

    monkeypatch.setattr(media, "decode", noting)
    monkeypatch.setattr(Counting, "encode_batch", waiting)
    summary = extract(tmp_path / "ws", seven, 3, encoders=["test-count-audio"])
    assert summary.done == 7 and not summary.failed
    assert overlapped == [True], "the next group was not decoded while the first was encoded"


def decoding_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mer-decode"]


def test_ctrl_c_that_a_library_turns_into_an_error_stops_a_batch_without_retrying_it(counting, seven, tmp_path):
    """The batch fails because of the interrupt: trying its clips one by one would cost a clip's
    work each before the run stops. The decoding thread, a group ahead, stops with the run."""
    with pytest.raises(KeyboardInterrupt):
        try:
            extract(tmp_path / "ws", seven, 3, encoders=["test-batch-swallow"])
        finally:
            assert not decoding_threads(), "the decoding thread outlived the run"
    assert calls("test-batch-swallow", "encode") == [("a",)]
    assert not (tmp_path / "ws" / "features" / "_failures").exists() or \
        not list((tmp_path / "ws" / "features" / "_failures").glob("*.json"))


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_batch_size_below_one_is_a_usage_error(tmp_path, value):
    folder = tmp_path / "clips"
    folder.mkdir()
    result = CliRunner().invoke(cli, ["-w", str(tmp_path / "ws"), "extract", str(folder), f"--batch-size={value}"])
    assert result.exit_code == 2
    assert result.output.strip().splitlines() == [
        f"error: command line (extract.batch_size): 'batch_size' must be an integer >= 1, got {value}"]
    assert not (tmp_path / "ws" / "features").exists()


LOGGING_ENCODER = '''
import json
import os

import numpy as np

from mercli.plugin_api import Encoder, Features, hookimpl


class Logged(Encoder):
    """Mean colour; each call noted, with the worker process that made it, in $BATCH_LOG."""

    name = "test-logged"
    modality = "visual"
    level = "utterance"
    dim = 3

    def encode(self, clip):
        return self.encode_batch([clip])[0]

    def encode_batch(self, clips):
        with open(os.environ["BATCH_LOG"], "a") as log:
            log.write(json.dumps([os.getpid(), [c.clip_id for c in clips]]) + "\\n")
        return [Features(c.frames.reshape(-1, 3).mean(axis=0).astype(np.float32)) for c in clips]


@hookimpl
def register_encoders(register):
    register(Logged)
'''


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are tested on Linux")
def test_worker_processes_each_take_a_group_and_store_the_same_files(seven, tmp_path):
    site = tmp_path / "site"
    site.mkdir()
    fake_distribution(site, "logged-pkg", "logged", LOGGING_ENCODER)
    runs = {}
    for workers, size in (("1", "1"), ("2", "3")):
        log = tmp_path / f"log-{workers}-{size}"
        result = run_mer("-w", str(tmp_path / f"ws{size}"), "extract", str(seven), "--encoders", "test-logged",
                         "--workers", workers, "--batch-size", size, "--json", cwd=tmp_path,
                         env=with_site(site, BATCH_LOG=str(log)))
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["done"] == 7
        runs[size] = [json.loads(line) for line in log.read_text().splitlines()]
    assert sorted(tuple(ids) for _, ids in runs["3"]) == [("a", "b", "c_mute"), ("e", "f"), ("g",)]
    assert stored_files(tmp_path / "ws1") == stored_files(tmp_path / "ws3")


@pytest.mark.slow
def test_transformers_encoders_in_batches_of_four_agree_with_one_clip_at_a_time(tmp_path):
    """hf-audio pads and masks the clips of a batch, hf-vision stacks their frames: what ``mer
    extract`` stores at batch size 4 is what it stores clip by clip, to float precision."""
    pytest.importorskip("transformers")
    from support.hf_models import tiny_models

    models = tiny_models(tmp_path / "models", ["wav2vec2", "clip-vision"])
    folder = clips_folder(tmp_path / "clips", {
        "a.mp4": {"seconds": 1.5}, "b.mp4": {"seconds": 0.6, "colour": (20, 40, 220)}, "c_mute.mp4": {"audio": False},
        "d_voice.wav": {"video": False, "seconds": 2.2}, "e.mp4": {"seconds": 1.0, "colour": (10, 200, 10)},
    })
    (tmp_path / "mer.toml").write_text(
        '[extract]\nencoders = ["hf-audio", "hf-vision"]\n'
        f'[encoder.hf-audio]\nmodel = "{models["wav2vec2"]}"\nlevel = "frame"\nbatch_size = 3\n'
        f'[encoder.hf-vision]\nmodel = "{models["clip-vision"]}"\ninput = "frame"\nlevel = "frame"\n')
    sets = {}
    for size in ("1", "4"):
        result = run_mer("-w", str(tmp_path / f"ws{size}"), "extract", str(folder), "--batch-size", size,
                         "--workers", "1", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout)["done"] == 5
        sets[size] = {s.manifest.encoder: s for s in list_feature_sets(tmp_path / f"ws{size}" / "features")}
    for encoder, one in sets["1"].items():
        four = sets["4"][encoder]
        assert one.name == four.name
        for clip in ("a", "b", "c_mute", "d_voice", "e"):
            assert one.status(clip) == four.status(clip), (encoder, clip)
            if one.status(clip) == "done":
                alone, batched = one.read(clip), four.read(clip)
                np.testing.assert_allclose(batched.values, alone.values, atol=1e-4, err_msg=f"{encoder} {clip}")
                assert np.array_equal(batched.mask, alone.mask)


def test_worker_processes_are_counted_by_groups_and_take_a_group_each(counting, seven, tmp_path, monkeypatch):
    """Seven clips in groups of four are two items: no third worker would have anything to do."""
    from mercli import extract as stage

    items: list[list[str]] = []

    def in_this_process(make, arguments, groups, workers):
        assert workers == 2
        extractor = stage.ClipExtractor(arguments[0])
        for group in groups:
            items.append([clip.clip_id for clip in group])
            yield extractor(group)

    monkeypatch.setattr(stage.resources, "auto_workers", lambda items: 8)
    monkeypatch.setattr(stage, "run_in_workers", in_this_process)
    config = load(None, environ={}, overrides={"extract.encoders": ENCODERS, "extract.batch_size": 4})
    summary = extract_clips(discover(seven), config, Workspace(tmp_path / "ws"), {}, workers=0)
    assert summary.workers == 2 and summary.done == 7
    assert items == [["a", "b", "c_mute", "d_voice"], ["e", "f", "g"]]
    assert calls("test-count-audio", "batch") == [("a", "b", "d_voice"), ("e", "f", "g")]
    extract(tmp_path / "one", seven, 1)
    assert stored_files(tmp_path / "ws") == stored_files(tmp_path / "one")

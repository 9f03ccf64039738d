"""The extract stage's bookkeeping — resume, failures, absences, shards, interruption — with small
encoders defined here, on synthetic clips made with PyAV. The real encoders on real clips are in
tests/test_extract_real.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from support.encoders import MeanColour, SwallowsCtrlC
from support.media import loudness_frames, write_clip
from support.mer_process import run_mer

from mercli import plugins
from mercli.cli import cli
from mercli.clips import discover
from mercli.config import load
from mercli.contracts import DecodedClip, Encoder, Features, Transcriber
from mercli.extract import Shard, extract_clips
from mercli.features import list_feature_sets
from mercli.hookspecs import hookimpl
from mercli.workspace import Workspace

av = pytest.importorskip("av")



class Loudness(Encoder):
    name = "test-loudness"
    version = "1"
    modality = "audio"
    level = "frame"
    dim = 1
    calls: list[str] = []

    def encode(self, clip: DecodedClip) -> Features:
        Loudness.calls.append(clip.clip_id)
        if "boom" in clip.clip_id:
            raise RuntimeError("exploded on purpose")
        return loudness_frames(clip.audio)


class WordCount(Encoder):
    name = "test-words"
    version = "1"
    modality = "text"
    level = "utterance"
    dim = 1

    def encode(self, clip: DecodedClip) -> Features:
        return Features(np.array([len(clip.transcript.split())], dtype=np.float32))


class NotANumber(Encoder):
    """An encoder whose output the feature store refuses (NaN)."""

    name = "test-nan"
    modality = "audio"
    level = "utterance"
    dim = 1

    def encode(self, clip: DecodedClip) -> Features:
        return Features(np.array([np.nan], dtype=np.float32))


class FixedWords(Transcriber):
    name = "test-asr"
    heard: list[str] = []

    def transcribe(self, clip: DecodedClip) -> str:
        FixedWords.heard.append(clip.clip_id)
        return "words from the recogniser"


class TestPlugin:
    @hookimpl
    def register_encoders(self, register):
        for encoder in (MeanColour, Loudness, WordCount, SwallowsCtrlC, NotANumber):
            register(encoder)

    @hookimpl
    def register_transcribers(self, register):
        register(FixedWords)


@pytest.fixture
def test_encoders(fresh_plugins):
    plugins.loaded().manager.register(TestPlugin(), name="test-extract")
    Loudness.calls.clear()
    FixedWords.heard.clear()
    yield


@pytest.fixture
def clips_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "a_talk.mp4")
    write_clip(folder / "b_boom.mp4")
    write_clip(folder / "c_mute.mp4", audio=False)
    write_clip(folder / "d_voice.wav", video=False)
    (folder / "e_empty.mp4").write_bytes(b"")
    (folder / "f_text.mp4").write_text("not a video\n")
    return folder


ENCODERS = ["test-colour", "test-loudness", "test-words"]


def run_extract(workspace: Workspace, folder: Path, transcripts=None, **settings):
    overrides = {"extract.encoders": ENCODERS, "extract.transcriber": "test-asr", **settings}
    config = load(None, environ={}, overrides=overrides)
    return extract_clips(discover(folder), config, workspace, transcripts or {})


def test_first_run_stores_results_absences_and_failures(test_encoders, clips_dir, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    summary = run_extract(workspace, clips_dir)

    assert summary.clips == 6 and summary.done == 3 and summary.skipped == 0
    failed = {f["clip"]: f["reason"] for f in summary.failed}
    assert set(failed) == {"b_boom", "e_empty", "f_text"}
    assert "exploded on purpose" in failed["b_boom"]
    assert "cannot decode" in failed["e_empty"] and "e_empty.mp4" in failed["e_empty"]
    assert summary.absent["audio"] == {"no audio track": 1}
    assert summary.absent["visual"] == {"audio-only file": 1}

    sets = {s.manifest.encoder: s for s in list_feature_sets(workspace.features)}
    assert set(sets) == set(ENCODERS)
    colour = sets["test-colour"]
    assert colour.status("a_talk") == "done" and colour.status("d_voice") == "absent"
    assert np.allclose(colour.read("a_talk").values, [200, 30, 30], atol=12)
    loudness = sets["test-loudness"]
    assert loudness.status("c_mute") == "absent" and loudness.status("b_boom") is None
    assert sets["test-colour"].status("b_boom") == "done", "one encoder failing keeps the others' features"
    assert sets["test-words"].read("a_talk").values.tolist() == [4.0]
    assert sets["test-words"].status("c_mute") == "absent"
    failures = sorted(p.stem for p in (workspace.features / "_failures").glob("*.json"))
    assert failures == ["b_boom", "e_empty", "f_text"]


def test_a_clip_longer_than_max_seconds_fails_alone_and_0_lifts_the_limit(test_encoders, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    write_clip(folder / "short.mp4", seconds=1.0)
    write_clip(folder / "long.mp4", seconds=3.0)
    limited = run_extract(Workspace(tmp_path / "ws"), folder, **{"extract.max_seconds": 2.0})
    assert limited.done == 1 and [f["clip"] for f in limited.failed] == ["long"]
    assert "longer (3 s) than extract.max_seconds = 2 s allows" in limited.failed[0]["reason"]
    assert run_extract(Workspace(tmp_path / "ws"), folder, **{"extract.max_seconds": 0.0}).done == 1  # the long one


def test_output_the_store_refuses_fails_only_its_encoder(test_encoders, clips_dir, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    summary = run_extract(workspace, clips_dir, **{"extract.encoders": ["test-nan", "test-colour", "test-loudness"]})

    sets = {s.manifest.encoder: s for s in list_feature_sets(workspace.features)}
    assert sets["test-colour"].status("a_talk") == "done" and sets["test-loudness"].status("a_talk") == "done"
    assert sets["test-nan"].status("a_talk") is None
    failed = {f["clip"]: f["reason"] for f in summary.failed}
    assert "a_talk" in failed and "encoder test-nan:" in failed["a_talk"] and "NaN" in failed["a_talk"]
    assert "test-loudness" not in failed["a_talk"]
    record = json.loads((workspace.features / "_failures" / "a_talk.json").read_text())
    assert "encoder test-nan:" in record["reason"]


def test_rerun_redoes_only_what_is_missing(test_encoders, clips_dir, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    run_extract(workspace, clips_dir)
    Loudness.calls.clear()
    FixedWords.heard.clear()

    summary = run_extract(workspace, clips_dir)

    assert summary.skipped == 3
    assert Loudness.calls == ["b_boom"], "only the failed encoder of the failed clip runs again"
    assert FixedWords.heard == [], "transcripts are kept between runs"
    assert {f["clip"] for f in summary.failed} == {"b_boom", "e_empty", "f_text"}


def test_changed_setting_makes_a_new_set_and_keeps_the_others(test_encoders, clips_dir, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    run_extract(workspace, clips_dir)
    summary = run_extract(workspace, clips_dir, **{"extract.fps": 5.0})

    names = sorted(s.name for s in list_feature_sets(workspace.features))
    assert len([n for n in names if n.startswith("test-colour-")]) == 2
    assert len([n for n in names if n.startswith("test-loudness-")]) == 1
    assert summary.done == 3, "the clips are done again for the new visual set only"


def test_transcripts_from_labels_replace_speech_recognition(test_encoders, clips_dir, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    run_extract(workspace, clips_dir, transcripts={"a_talk": "one two", "d_voice": ""})
    words = next(s for s in list_feature_sets(workspace.features) if s.manifest.encoder == "test-words")
    assert words.read("a_talk").values.tolist() == [2.0]
    assert words.read("d_voice").absent == "no speech"
    assert "a_talk" not in FixedWords.heard and "d_voice" not in FixedWords.heard


def test_shards_split_the_clips_without_overlap():
    ids = [f"clip{i:03d}" for i in range(200)]
    shards = [Shard.parse(f"{k}/4") for k in range(1, 5)]
    held = [[i for i in ids if shard.holds(i)] for shard in shards]
    assert sorted(sum(held, [])) == ids
    assert all(30 < len(h) < 70 for h in held)


@pytest.mark.parametrize("text", ["0/4", "5/4", "x/4", "2", "1/0"])
def test_bad_shard_is_a_usage_error(text):
    from mercli.errors import ConfigError

    with pytest.raises(ConfigError, match="--shard"):
        Shard.parse(text)


def test_interrupted_run_leaves_no_partial_file_and_resumes(test_encoders, clips_dir, tmp_path):
    workspace = Workspace(tmp_path / "ws")
    config = load(None, environ={}, overrides={"extract.encoders": ENCODERS, "extract.transcriber": "test-asr"})
    seen = []

    def interrupt(outcome):
        seen.append(outcome.clip_id)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_clips(discover(clips_dir), config, workspace, {}, observe=interrupt)
    assert not [p for p in workspace.root.rglob("*") if p.name.endswith(".part")]

    summary = run_extract(workspace, clips_dir)
    assert summary.skipped == 1 and summary.done == 2  # a_talk was complete; b_boom failed before


def test_cli_json_summary_and_exit_status(test_encoders, clips_dir, tmp_path):
    workspace = tmp_path / "ws"
    result = CliRunner().invoke(cli, [
        "-w", str(workspace), "-s", f"extract.encoders={json.dumps(ENCODERS)}", "-s", 'extract.transcriber="test-asr"',
        "extract", str(clips_dir), "--workers", "1", "--json",  # the test plug-ins live in this process
    ])
    assert result.exit_code == 1, result.output
    document = json.loads(result.stdout)
    assert document["clips"] == 6 and document["done"] == 3
    assert {f["clip"] for f in document["failed"]} == {"b_boom", "e_empty", "f_text"}
    assert {s["modality"] for s in document["feature_sets"]} == {"visual", "audio", "text"}
    for feature_set in document["feature_sets"]:
        assert (Path(feature_set["path"]) / "manifest.json").is_file()


def test_missing_clips_folder_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(cli, ["-w", str(tmp_path), "extract", str(tmp_path / "nowhere")])
    assert result.exit_code == 2
    assert "nowhere" in result.output


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are tested on Linux")
def test_two_workers_give_the_same_features_as_one(clips_dir, tmp_path):
    """Worker processes load plug-ins from entry points, so this uses a built-in encoder."""
    pytest.importorskip("opensmile")
    results = {}
    for workers in (1, 2):
        workspace = Workspace(tmp_path / f"ws{workers}")
        config = load(None, environ={}, overrides={"extract.encoders": ["egemaps"], "extract.workers": workers})
        summary = extract_clips(discover(clips_dir), config, workspace, {}, workers=workers)
        assert summary.done == 4 and len(summary.failed) == 2
        (feature_set,) = list_feature_sets(workspace.features)
        results[workers] = {c: feature_set.read(c).values for c in ("a_talk", "b_boom", "d_voice")}
    for clip, values in results[1].items():
        assert np.allclose(values, results[2][clip], atol=1e-5), clip


def test_ctrl_c_turned_into_an_error_by_a_library_still_stops_the_run(test_encoders, clips_dir, tmp_path):
    config = load(None, environ={}, overrides={"extract.encoders": ["test-swallow"]})
    with pytest.raises(KeyboardInterrupt):
        extract_clips(discover(clips_dir), config, Workspace(tmp_path / "ws"), {})


def test_extract_lets_idle_openmp_threads_sleep(test_encoders, clips_dir, tmp_path, monkeypatch):
    """Spinning OpenMP pools of torch and CTranslate2 starve each other on few cores; the setting
    must be in the environment that the worker processes inherit, unless the user chose one."""
    import os

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    run_extract(Workspace(tmp_path / "ws"), clips_dir)
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    run_extract(Workspace(tmp_path / "ws2"), clips_dir)
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.slow
def test_entries_that_cannot_be_clips_fail_on_their_own_in_the_summary(tmp_path):
    """A child process, as from a shell: a link loop once made Path.resolve raise a traceback."""
    pytest.importorskip("opensmile")
    clips = tmp_path / "clips"
    clips.mkdir()
    write_clip(clips / "voice.wav", video=False)
    outside = write_clip(tmp_path / "outside.wav", video=False)
    (clips / "loop.mp3").symlink_to("loop.mp3")
    (clips / "escape.wav").symlink_to(outside)
    workspace = tmp_path / "ws"
    as_json = run_mer("-w", str(workspace), "extract", str(clips), "--encoders", "egemaps", "--json", cwd=tmp_path)
    assert as_json.returncode == 1 and "Traceback" not in as_json.stderr, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["clips"] == 3 and document["done"] == 1
    assert document["failed"] == [
        {"clip": str(clips / "escape.wav"), "reason": f"{clips / 'escape.wav'}: 'escape.wav' leads outside the "
                                                      f"clips folder {clips} (to {outside})"},
        {"clip": str(clips / "loop.mp3"), "reason": f"{clips / 'loop.mp3'}: 'loop.mp3' is a loop of symbolic links"},
    ]
    table = run_mer("-w", str(workspace), "extract", str(clips), "--encoders", "egemaps", cwd=tmp_path)
    assert table.returncode == 1 and "Traceback" not in table.stderr
    assert "failed" in table.stderr and "loop.mp3: 'loop.mp3' is a loop of symbolic links" in table.stderr

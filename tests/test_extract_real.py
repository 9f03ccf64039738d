"""``mer extract`` with the default encoders on real clips of ../shared/data: every kind of clip
there (video with speech, audio only, silent and missing audio tracks, a damaged file, Mandarin
film with several people) gets features or a recorded absence for each modality."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from mercli.cli import cli
from mercli.features import list_feature_sets

pytestmark = pytest.mark.slow  # real mer processes or models: run by the full suite, not the quick loop

#: (folder, clip file) pairs covering every kind of clip in ../shared/data.
CLIPS = [
    ("crema-d", "1001_DFA_ANG_XX.flv"),  # video with speech
    ("crema-d", "1002_DFA_HAP_XX.mp3"),  # audio only
    ("mead", "contempt.mp4"),  # face crop, no audio track
    ("mead", "disgusted.mp4"),  # face crop, silent audio track
    ("mead", "sad.mp4"),  # cut short, so it decodes in part; silent audio track
    ("mer2023", "sample_00000338.mp4"),  # several people in the shot
    ("emodb-dev", "wav/03a01Fa.wav"),  # German speech, audio only
]


@pytest.fixture(scope="module")
def extracted(shared_data: Path, tmp_path_factory):
    clips = tmp_path_factory.mktemp("clips")
    for folder, name in CLIPS:
        shutil.copy(shared_data / folder / name, clips / Path(name).name)
    workspace = tmp_path_factory.mktemp("workspace")
    first = CliRunner().invoke(cli, ["-w", str(workspace), "extract", str(clips), "--json"])
    second = CliRunner().invoke(cli, ["-w", str(workspace), "extract", str(clips), "--json"])
    return workspace, first, second


def test_every_clip_is_done_with_each_modality_stored_or_absent(extracted):
    workspace, first, _ = extracted
    assert first.exit_code == 0, first.output
    summary = json.loads(first.stdout)
    assert summary["clips"] == len(CLIPS) and summary["done"] == len(CLIPS) and summary["failed"] == []
    assert [p["clip"] for p in summary["partial"]] == ["sad"]

    sets = {s.manifest.encoder: s for s in list_feature_sets(workspace / "features")}
    assert set(sets) == {"face-landmarks", "fer-expression", "whisper", "egemaps", "text-embedding"}
    for feature_set in sets.values():
        assert (feature_set.path / "manifest.json").is_file()
        assert sorted(feature_set.clip_ids()) == sorted(Path(name).stem for _, name in CLIPS)

    visual, audio, text = sets["face-landmarks"], sets["whisper"], sets["text-embedding"]
    for clip in ("1001_DFA_ANG_XX", "contempt", "disgusted", "sad", "sample_00000338"):
        assert visual.status(clip) == "done", clip
    for clip in ("1002_DFA_HAP_XX", "03a01Fa"):
        assert visual.read(clip).absent == "audio-only file"
    assert audio.read("contempt").absent == "no audio track"
    assert audio.read("disgusted").absent == audio.read("sad").absent == "silent audio track"
    assert text.read("disgusted").absent == "silent audio track"
    for clip in ("1001_DFA_ANG_XX", "1002_DFA_HAP_XX", "sample_00000338", "03a01Fa"):
        assert audio.status(clip) == "done", clip
    assert text.status("1001_DFA_ANG_XX") == "done"
    transcript = json.loads((workspace / "transcripts" / "1001_DFA_ANG_XX.json").read_text())
    assert "jacket" in transcript["text"].lower()


def test_second_run_skips_everything(extracted):
    _, _, second = extracted
    assert second.exit_code == 0, second.output
    summary = json.loads(second.stdout)
    assert summary["skipped"] == len(CLIPS) and summary["done"] == 0

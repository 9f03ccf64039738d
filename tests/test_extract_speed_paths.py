"""What keeps ``mer extract`` fast without changing what it writes: the process that writes the
manifests loads no model, worker processes skip the interpreter's teardown, and two workers give
the features and transcripts one worker gives, with the default encoders on real clips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mercli.config import load
from mercli.clips import discover
from mercli.extract import extract_clips
from mercli.features import list_feature_sets
from mercli.workspace import Workspace

pytestmark = pytest.mark.slow  # real mer processes or models: run by the full suite, not the quick loop

MODEL_LIBRARIES = ("torch", "transformers", "ctranslate2", "faster_whisper", "mediapipe", "tokenizers", "whisper")


def test_manifests_of_the_default_encoders_are_written_without_loading_a_model(tmp_path, shared_models):
    code = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from mercli import config, extract\n"
        f"root = Path({str(tmp_path)!r})\n"
        "job = extract.prepare(config.load(None, environ={}), root / 'features', root / 'transcripts', {})\n"
        "print(json.dumps({name: m.dim for name, m in job.manifests.items()}))\n"
        f"print(json.dumps([m for m in {MODEL_LIBRARIES!r} if m in sys.modules]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    dims, loaded = (json.loads(line) for line in done.stdout.splitlines())
    assert dims["whisper"] == 384 and dims["text-embedding"] == 384 and dims["egemaps"] == 88
    assert loaded == []
    assert {s.manifest.encoder for s in list_feature_sets(tmp_path / "features")} == set(dims)


def test_a_worker_keeps_its_buffered_output_and_skips_the_teardown(tmp_path):
    marker = tmp_path / "teardown-ran"
    code = (
        "import atexit, sys\n"
        "from mercli.workers import _exit_without_teardown\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())  # registered first, so it would run last\n"
        "atexit.register(_exit_without_teardown)\n"
        "sys.stdout.write('buffered, no newline')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout == "buffered, no newline"
    assert not marker.exists()


@pytest.mark.skipif(sys.platform != "linux", reason="worker processes are tested on Linux")
def test_two_workers_write_what_one_writes_with_the_default_encoders(shared_data, shared_models, tmp_path):
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("1001_DFA_ANG_XX.flv", "1002_DFA_NEU_XX.mp3"):
        shutil.copy(shared_data / "crema-d" / name, clips / name)
    stored = {}
    for workers in (1, 2):
        workspace = Workspace(tmp_path / f"ws{workers}")
        summary = extract_clips(discover(clips), load(None, environ={}), workspace, {}, workers=workers)
        assert summary.done == 2 and summary.failed == []
        features = {(s.name, clip): s.read(clip).values for s in list_feature_sets(workspace.features)
                    for clip in s.clip_ids()}
        transcripts = {p.stem: json.loads(p.read_text())["text"] for p in workspace.transcripts.glob("*.json")}
        stored[workers] = features, transcripts
    (one, heard_by_one), (two, heard_by_two) = stored[1], stored[2]
    assert heard_by_one == heard_by_two and "jacket" in heard_by_one["1001_DFA_ANG_XX"].lower()
    assert one.keys() == two.keys() and len(one) == 10  # 5 sets x 2 clips (the mp3's faces absent)
    for key, values in one.items():
        if values is None:
            assert two[key] is None, key
        else:
            np.testing.assert_allclose(values, two[key], atol=1e-4, err_msg=str(key))

"""``mer predict`` end to end on real clips: a run trained on the CREMA-D sample (extract with the
default encoders, local reasoning priors, bdcl) predicts every video of ../shared/data; bad files
and bad checkpoints give one-line errors while the other files are still predicted."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from support.mer_process import run_mer

from mercli.cli import cli

pytestmark = pytest.mark.slow  # real mer processes or models: run by the full suite, not the quick loop

CREMA_CLASSES = '["neutral", "angry", "happy", "sad", "fear", "disgust"]'
VIDEO_SUFFIXES = {".mp4", ".flv", ".avi", ".mkv", ".mov", ".webm"}


def mer(workspace: Path, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-w", str(workspace), *args])


@pytest.fixture(scope="module")
def trained(shared_data: Path, tmp_path_factory) -> Path:
    """A workspace with a 2-fold bdcl run that uses priors."""
    root = tmp_path_factory.mktemp("predict")
    clips = root / "crema-d"
    shutil.copytree(shared_data / "crema-d", clips)
    workspace = root / "ws"
    workspace.mkdir()
    (workspace / "mer.toml").write_text(f"[data]\nclasses = {CREMA_CLASSES}\n")
    for args in (["extract", str(clips), "--labels", str(clips / "labels.csv")],
                 ["reason", str(clips)],
                 ["train", "--labels", str(clips / "labels.csv"), "--folds", "2", "--epochs", "3", "--name", "run"]):
        outcome = mer(workspace, *args)
        assert outcome.exit_code == 0, outcome.output
    assert any((workspace / "features").glob("prior-visual-*"))
    return workspace


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_every_video_of_the_shared_data_gets_a_valid_prediction(trained, shared_data):
    videos = sorted(p for p in shared_data.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    assert len(videos) >= 15
    outcome = mer(trained, "predict", *map(str, videos), "--json")
    assert outcome.exit_code == 0, outcome.output
    lines = json_lines(outcome.stdout)
    assert [line["clip"] for line in lines] == [str(v) for v in videos]
    config = json.loads((trained / "runs" / "run" / "config.json").read_text())
    for line in lines:
        assert set(line) == {"clip", "label", "probs", "modalities", "seconds"}
        assert list(line["probs"]) == config["classes"] and line["label"] in config["classes"]
        assert sum(line["probs"].values()) == pytest.approx(1.0, abs=1e-4)
        assert line["label"] == max(line["probs"], key=line["probs"].get)
        assert set(line["modalities"]) == {"audio", "visual", "text"} and line["seconds"] > 0
    by_name = {Path(line["clip"]).parent.name + "/" + Path(line["clip"]).name: line for line in lines}
    mead_without_audio = [line for name, line in by_name.items() if name.startswith("mead/")
                          and not line["modalities"]["audio"]]
    assert mead_without_audio and all(line["modalities"]["visual"] for line in mead_without_audio)


def test_bad_files_get_one_line_errors_and_the_others_are_still_predicted(trained, shared_data, tmp_path):
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_text("this is not a video")
    good = next((shared_data / "crema-d").glob("*.flv"))
    outcome = mer(trained, "predict", str(corrupt), str(tmp_path / "missing.mp4"), str(good), "--json")
    assert outcome.exit_code == 1
    lines = json_lines(outcome.stdout)
    assert lines[0]["clip"] == str(corrupt) and "corrupt.mp4" in lines[0]["error"]
    assert "no such file" in lines[1]["error"]
    assert lines[2]["clip"] == str(good) and sum(lines[2]["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2


def test_the_human_report_is_a_table_on_stderr_and_a_submission_can_be_written(trained, shared_data, tmp_path):
    good = sorted((shared_data / "crema-d").glob("*.flv"))[:2]
    submission = tmp_path / "submission.csv"
    outcome = mer(trained, "predict", *map(str, good), "--submission", str(submission))
    assert outcome.exit_code == 0 and outcome.stdout == ""
    assert "mer predict with run" in outcome.stderr and good[0].name in outcome.stderr
    rows = submission.read_text().splitlines()
    classes = json.loads((trained / "runs" / "run" / "config.json").read_text())["classes"]
    assert rows[0] == "name,discrete" and [r.split(",")[0] for r in rows[1:]] == [p.stem for p in good]
    assert all(r.split(",")[1] in classes for r in rows[1:])


def copy_run(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained / "runs" / "run", run)
    return run


@pytest.mark.parametrize("damage, expected", [
    (lambda run: (run / "model-fold1.safetensors").write_bytes(b"garbage"), "not readable safetensors"),
    (lambda run: (run / "config.json").write_text("{"), "config.json: unreadable"),
    (lambda run: shutil.rmtree(run), "no such run folder"),
])
def test_a_missing_or_corrupt_checkpoint_is_one_line(trained, shared_data, tmp_path, damage, expected):
    run = copy_run(trained, tmp_path)
    damage(run)
    outcome = mer(trained, "predict", str(next((shared_data / "crema-d").glob("*.flv"))), "--checkpoint", str(run))
    assert outcome.exit_code != 0
    assert expected in outcome.stderr and outcome.stderr.count("error:") == 1 and "Traceback" not in outcome.output


def test_a_checkpoint_whose_encoder_is_not_installed_is_refused(trained, shared_data, tmp_path):
    run = copy_run(trained, tmp_path)
    config = json.loads((run / "config.json").read_text())
    name = next(n for n, m in config["manifests"].items() if m["encoder"] == "egemaps")
    config["manifests"][name]["encoder"] = "no-such-encoder"
    (run / "config.json").write_text(json.dumps(config))
    outcome = mer(trained, "predict", str(next((shared_data / "crema-d").glob("*.flv"))), "--checkpoint", str(run))
    assert outcome.exit_code == 2 and "no-such-encoder" in outcome.stderr and "Traceback" not in outcome.output


def test_priors_from_label_conditioned_traces_stay_absent_for_new_clips(trained, shared_data, tmp_path):
    run = copy_run(trained, tmp_path)
    config = json.loads((run / "config.json").read_text())
    for manifest in config["manifests"].values():
        if manifest["encoder"].startswith("prior-"):
            manifest["settings"]["source"]["label_conditioned"] = True
    (run / "config.json").write_text(json.dumps(config))
    clip = next((shared_data / "crema-d").glob("*.flv"))
    conditioned = mer(trained, "predict", str(clip), "--checkpoint", str(run), "--json")
    plain = mer(trained, "predict", str(clip), "--checkpoint", "run", "--json")
    assert conditioned.exit_code == 0 and plain.exit_code == 0, conditioned.output
    without_priors, with_priors = json_lines(conditioned.stdout)[0], json_lines(plain.stdout)[0]
    assert sum(without_priors["probs"].values()) == pytest.approx(1.0, abs=1e-4)
    assert without_priors["probs"] != with_priors["probs"]


def test_a_folder_with_a_link_loop_and_a_link_outside_still_predicts_its_clips(trained, shared_data, tmp_path):
    """A child process, as from a shell. It writes nothing in the workspace but the traces of the
    clips it asked about: no feature set, no scratch folder."""
    clips = tmp_path / "clips"
    clips.mkdir()
    good = sorted((shared_data / "crema-d").glob("*.flv"))[:2]
    for path in good:
        shutil.copy(path, clips / path.name)
    (clips / "loop.mp3").symlink_to("loop.mp3")
    (clips / "escape.mp4").symlink_to(next((shared_data / "mead").glob("*.mp4")))
    before = workspace_files(trained)
    outcome = run_mer("-w", str(trained), "predict", str(clips), "--json", cwd=tmp_path)
    assert outcome.returncode == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    lines = json_lines(outcome.stdout)
    failed = {line["clip"]: line["error"] for line in lines if "error" in line}
    assert failed == {
        str(clips / "escape.mp4"): f"{clips / 'escape.mp4'}: 'escape.mp4' leads outside the clips folder {clips} "
                                   f"(to {(clips / 'escape.mp4').resolve()})",
        str(clips / "loop.mp3"): f"{clips / 'loop.mp3'}: 'loop.mp3' is a loop of symbolic links",
    }
    predicted = [line for line in lines if "error" not in line]
    assert [line["clip"] for line in predicted] == [str(clips / path.name) for path in good]
    assert all(sum(line["probs"].values()) == pytest.approx(1.0, abs=1e-4) for line in predicted)
    errors = [line for line in outcome.stderr.splitlines() if line.startswith("error:")]
    assert sorted(errors) == sorted(f"error: {reason}" for reason in failed.values())
    added = workspace_files(trained) - before
    assert all(path.startswith("reasoning/") and path.endswith(".trace.json") for path in added), added


def test_a_new_clip_is_asked_about_once_and_never_replaces_the_trace_of_a_clip_named_alike(trained, shared_data,
                                                                                          tmp_path):
    """The trace of a clip the workspace does not hold is kept under its content: a second
    prediction asks nothing, and a file named like a training clip leaves that clip's trace alone."""
    clips = tmp_path / "clips"
    clips.mkdir()
    training_clip = sorted((shared_data / "crema-d").glob("*.flv"))[0]
    shutil.copy(sorted((shared_data / "emodb-dev" / "wav").glob("*.wav"))[0], clips / f"{training_clip.stem}.wav")
    kept = {path: path.read_bytes() for path in (trained / "reasoning").rglob(f"{training_clip.stem}.trace.json")}
    assert kept
    before = workspace_files(trained)
    first = json_lines(mer(trained, "predict", str(clips), "--json").stdout)
    added = workspace_files(trained) - before
    assert len(added) == 1 and Path(added.pop()).name.startswith("content-"), added
    assert all(path.read_bytes() == content for path, content in kept.items())
    settled = workspace_files(trained)
    second = json_lines(mer(trained, "predict", str(clips), "--json").stdout)
    assert workspace_files(trained) == settled and second[0]["probs"] == first[0]["probs"]


def workspace_files(workspace: Path) -> set[str]:
    return {str(path.relative_to(workspace)) for path in workspace.rglob("*") if path.is_file()}


# --- the Python API -----------------------------------------------------------------------------


def test_the_python_api_predicts_what_mer_predict_prints_with_models_loaded_once(trained, shared_data, tmp_path):
    import mercli

    clips = [shared_data / "crema-d" / "1001_DFA_ANG_XX.flv", shared_data / "crema-d" / "1002_DFA_SAD_XX.mp3"]
    printed = json_lines(mer(trained, "predict", *map(str, clips), "--checkpoint", "run", "--json").stdout)
    run = mercli.load_run(trained / "runs" / "run")
    assert run.classes == json.loads(CREMA_CLASSES) and "2 folds" in repr(run)
    first = list(run.predict(clips))
    assert [(p.clip, p.label) for p in first] == [(line["clip"], line["label"]) for line in printed]
    for prediction, line in zip(first, printed):
        assert prediction.probs == pytest.approx(line["probs"], abs=1e-5)
        assert prediction.modalities == line["modalities"]
    predictor = run._predictor
    again = list(run.predict(str(clips[1])))  # one path as text; the same encoders, not built again
    assert run._predictor is predictor and again[0].probs == pytest.approx(first[1].probs, abs=1e-6)
    missing = list(run.predict([tmp_path / "missing.mp4"]))
    assert missing[0].error == f"{tmp_path / 'missing.mp4'}: no such file"


def test_the_python_api_refuses_an_incomplete_run_with_the_commands_message(trained, tmp_path):
    import mercli
    from mercli.errors import DataError

    broken = tmp_path / "runs" / "broken"
    shutil.copytree(trained / "runs" / "run", broken)
    (broken / "metrics.json").unlink()
    with pytest.raises(DataError, match="metrics.json"):
        mercli.load_run(broken)
    with pytest.raises(DataError, match="no such run folder"):
        mercli.load_run("nothing-here", workspace=trained)


def test_predict_makes_the_very_priors_mer_reason_wrote_numeric_and_text(trained, shared_data):
    """Parity: for a clip of the workspace, the priors predict makes in memory are those
    ``mer reason`` stored (the class scores exactly, the embeddings to float precision)."""
    import numpy as np

    import mercli
    from mercli.clips import clip_from_file
    from mercli.features import list_feature_sets

    predictor = mercli.load_run(trained / "runs" / "run")._predictor_once()
    clip = clip_from_file(shared_data / "crema-d" / "1001_DFA_ANG_XX.flv")
    made = predictor.priors(clip, predictor.encode(clip), predictor.set_of)
    stored = {s.name: s for s in list_feature_sets(trained / "features")}
    numeric = sorted(stored[name].manifest.encoder for name in made if "prior-scores-" in stored[name].manifest.encoder)
    assert numeric == ["prior-scores-acoustic", "prior-scores-overall", "prior-scores-textual", "prior-scores-visual"]
    assert len(made) == 8
    for name, features in made.items():
        on_disk = stored[name].read(clip.clip_id)
        if on_disk.values is None:
            assert features.values is None and features.absent == on_disk.absent, name
        elif name.startswith("prior-scores-"):
            assert np.array_equal(features.values, on_disk.values), name
        else:
            np.testing.assert_allclose(features.values, on_disk.values, atol=1e-5)


def test_a_predict_process_imports_neither_transformers_nor_scipy(trained, shared_data):
    """Start-up: with the default encoders a ``mer predict`` process never imports transformers
    (the bundled text model runs through plain torch; its modelling stack cost about two seconds
    of every cold prediction on two CPUs) nor scipy (calibration's softmax is numpy's), nor torch's
    compiler (which building a model on the meta device would bring in), nor sympy (which
    ``nn.MultiheadAttention``'s own forward brings in: the network computes attention itself)."""
    clip = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    result = run_mer("-w", str(trained), "predict", str(clip), "--checkpoint", "run", "--json", cwd=trained,
                     python_options=("-X", "importtime"))
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert "mercli.predict" in imported
    assert not sorted(m for m in imported if m.split(".")[0] in {"transformers", "scipy", "sympy"} or m == "torch._dynamo")
    assert json_lines(result.stdout)[0]["label"]

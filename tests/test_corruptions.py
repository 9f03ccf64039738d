"""``mer eval --corrupt``: specs, the corrupted copies, and the figures under corruption.

The quick tests use the synthetic workspace of test_train (drop needs no encoder) and ffmpeg on a
few real clips; the slow ones train an egemaps run on a few EmoDB clips of ../shared/data and
corrupt them for real: noise that must hurt does, a rerun is identical, a second run re-extracts
nothing, and a clip that cannot be corrupted is recorded without stopping the others."""

from __future__ import annotations

import csv
import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import mercli.extract
from mercli.cli import cli
from mercli.clips import Clip
from mercli.contracts import Features
from mercli.corruptions import KINDS, SCRATCH, Corruption, Recipe, Robustness, corrupt_clip, parse_specs
from mercli.errors import ConfigError
from mercli.evaluation import evaluate
from mercli.features import list_feature_sets
from mercli.media import decode, probe
from mercli.report_html import _number, write_report
from mercli.train import train
from mercli.workspace import Workspace
from support.training import config, noisy_labels_with_a_mixed_test_split, write_workspace


def mer(workspace: Path, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-w", str(workspace), "-s", "train.device=cpu", *args])


# --- specs ------------------------------------------------------------------------------------


def test_specs_are_lists_of_corruptions_and_levels():
    parsed = parse_specs(["audio-noise:snr=20,10,5,0", "video-blur:sigma=2,4;drop:audio",
                          "frame-drop:rate=0.5 video-lowres:scale=0.5,0.25,drop:text"])
    assert [(c.name, c.parameter, c.levels) for c in parsed] == [
        ("audio-noise", "snr", (20, 10, 5, 0)), ("video-blur", "sigma", (2, 4)), ("drop:audio", None, (None,)),
        ("frame-drop", "rate", (0.5,)), ("video-lowres", "scale", (0.5, 0.25)), ("drop:text", None, (None,))]
    assert parse_specs(["audio-babble:snr=-5.5"])[0].levels == (-5.5,)


@pytest.mark.parametrize("spec, problem", [
    ("mp3-crush:bits=3", "unknown corruption 'mp3-crush'"),
    ("audio-noise", "missing level"),
    ("audio-noise:snr=", "missing level"),
    ("video-blur:radius=2", "missing level"),
    ("video-blur:sigma=-2", "sigma=-2 is out of range"),
    ("video-blur:sigma=0", "sigma=0 is out of range"),
    ("video-lowres:scale=1.5", "scale=1.5 is out of range"),
    ("frame-drop:rate=1", "rate=1 is out of range"),
    ("frame-drop:rate=-0.1", "rate=-0.1 is out of range"),
    ("audio-noise:snr=ten", "level 'ten' is not a number"),
    ("audio-noise:snr=nan", "out of range"),
    ("drop:smell", "drop needs a modality"),
    ("drop:audio,drop:audio", "drop:audio is given twice"),
    ("audio-noise:snr=1,,0", "an empty item"),
])
def test_a_bad_spec_is_one_line_naming_it_and_exit_2(tmp_path, spec, problem):
    with pytest.raises(ConfigError, match=re.escape(problem)):
        parse_specs([spec])
    outcome = mer(tmp_path, "eval", "--corrupt", spec)
    assert outcome.exit_code == 2
    [line] = outcome.stderr.strip().splitlines()
    assert line.startswith(f"error: --corrupt '{spec}': ") and problem in line


# --- drop on the synthetic workspace ------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """A 3-fold run "cv" on the synthetic audio + visual workspace."""
    root = tmp_path_factory.mktemp("corrupt")
    labels = write_workspace(root)
    noisy_labels_with_a_mixed_test_split(labels)
    train(config(**{"train.epochs": 6}), Workspace(root), labels, name="cv", folds=3)
    return Workspace(root), labels


def without_audio(workspace: Workspace, tmp_path: Path) -> Workspace:
    """A copy of the workspace whose audio set holds nothing but absent records."""
    copy = Workspace(tmp_path / "copy")
    shutil.copytree(workspace.root, copy.root)
    audio = next(s for s in list_feature_sets(copy.features) if s.manifest.modality == "audio")
    for clip in audio.clip_ids():
        audio.write(clip, Features(None, absent="removed"))
    return copy


def robustness(workspace: Workspace, specs: list[str], **settings):
    chosen = config(**settings)
    return Robustness(chosen, workspace, parse_specs(specs))


@pytest.mark.parametrize("labels_mode", [False, True])
def test_drop_audio_equals_removing_the_audio_feature_sets(synthetic, tmp_path, labels_mode):
    workspace, labels = synthetic
    options = {"labels": labels} if labels_mode else {}
    dropped = evaluate(config(), workspace, ["cv"], out=tmp_path / "drop", **options,
                       robustness=robustness(workspace, ["drop:audio"]))
    copy = without_audio(workspace, tmp_path)
    removed = evaluate(config(), copy, [str(copy.runs / "cv")], out=tmp_path / "removed",
                       **({"labels": copy.root / "labels.csv"} if labels_mode else {}))
    curve = dropped.robustness["drop:audio"]
    assert curve["parameter"] is None and curve["failed"] == []
    assert curve["clean"] == {k: dropped.figures[k] for k in ("waf", "macro_f1", "accuracy")}
    assert curve["levels"] == [{"level": None, **{k: removed.figures[k] for k in ("waf", "macro_f1", "accuracy")}}]
    document = json.loads((tmp_path / "drop" / "metrics.json").read_text())
    assert document["robustness"] == json.loads(json.dumps(dropped.robustness))
    assert (tmp_path / "drop" / "robustness-drop-audio.png").read_bytes().startswith(b"\x89PNG")


def test_dropping_a_modality_the_run_lacks_changes_nothing_and_dropping_vision_hurts(synthetic, tmp_path):
    workspace, _labels = synthetic
    evaluation = evaluate(config(), workspace, ["cv"], out=tmp_path,
                          robustness=robustness(workspace, ["drop:visual", "drop:text"]))
    assert evaluation.robustness["drop:text"]["levels"][0]["waf"] == evaluation.figures["waf"]  # no text set
    assert evaluation.robustness["drop:visual"]["levels"][0]["waf"] < evaluation.figures["waf"] - 0.1


def test_mer_report_draws_the_curves_eval_recorded(synthetic):
    workspace, _labels = synthetic
    assert "robustness: drop:visual" in mer(workspace.root, "eval", "--checkpoint", "cv", "--corrupt",
                                            "drop:visual").stderr
    outcome = mer(workspace.root, "eval", "--checkpoint", "cv", "--corrupt", "drop:audio,drop:visual", "--json")
    assert outcome.exit_code == 0, outcome.output
    section = json.loads(outcome.stdout)["robustness"]
    assert list(section) == ["drop:audio", "drop:visual"]
    assert json.loads((workspace.runs / "cv" / "eval" / "metrics.json").read_text())["robustness"] == section
    page = write_report(config(), workspace, ["cv"]).out.read_text()
    for name, curve in section.items():
        for label, point in (("clean", curve["clean"]), ("on", curve["levels"][0])):
            for key in ("waf", "macro_f1", "accuracy"):
                cell = (f'data-run="cv" data-corruption="{name}" data-level="{label}" data-figure="{key}">'
                        f'{_number(point[key])}<')
                assert cell in page


# --- corrupted copies (ffmpeg on real clips) ----------------------------------------------------


def recipe(kind: str, level: float, seed: int = 0, sample_rate: int = 16000) -> Recipe:
    return Recipe(Corruption(kind, kind, KINDS[kind].parameter, (level,), KINDS[kind].modality), level, seed, None,
                  sample_rate)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def crema_video(shared_data) -> Clip:
    return Clip("1001_DFA_ANG_XX", shared_data / "crema-d" / "1001_DFA_ANG_XX.flv", "video")


@pytest.fixture(scope="module")
def emodb(shared_data) -> list[Clip]:
    folder = shared_data / "emodb-dev" / "wav"
    return [Clip(p.stem, p, "audio") for p in sorted(folder.glob("*.wav"))[:4]]


def frames(path: Path) -> np.ndarray:
    return decode(path, "x", fps=30.0, audio=False).frames


def sharpness(images: np.ndarray) -> float:
    grey = images.astype(np.float64).mean(axis=-1)
    return float(np.abs(np.diff(grey, axis=1)).mean() + np.abs(np.diff(grey, axis=2)).mean())


@pytest.mark.parametrize("kind, level", [("video-blur", 4), ("video-lowres", 0.25), ("frame-drop", 0.5)])
def test_video_corruptions_are_seeded_byte_identical_and_do_what_they_say(crema_video, tmp_path, kind, level):
    first = corrupt_clip(recipe(kind, level), crema_video, tmp_path / "a", [])
    again = corrupt_clip(recipe(kind, level), crema_video, tmp_path / "b", [])
    assert digest(first.path) == digest(again.path)
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no temporary file left
    original, corrupted = frames(crema_video.path), frames(first.path)
    before, after = probe(crema_video.path), probe(first.path)
    assert (after.width, after.height, after.has_audio) == (before.width, before.height, True)
    if kind == "frame-drop":
        assert 0.3 * len(original) < len(corrupted) < 0.7 * len(original)
        other = corrupt_clip(recipe(kind, level, seed=1), crema_video, tmp_path / "c", [])
        assert digest(other.path) != digest(first.path)
    else:
        assert abs(len(corrupted) - len(original)) <= 1  # the same frames, their times rounded to ms
        assert sharpness(corrupted) < 0.7 * sharpness(original)


def snr(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2)))


@pytest.mark.parametrize("kind", ["audio-noise", "audio-pink", "audio-babble"])
def test_audio_noise_is_mixed_at_the_snr_of_the_clips_own_signal(emodb, tmp_path, kind):
    clip = emodb[0]
    noisy = corrupt_clip(recipe(kind, 5), clip, tmp_path / "a", emodb)
    assert noisy.path.suffix == ".wav"
    assert digest(noisy.path) == digest(corrupt_clip(recipe(kind, 5), clip, tmp_path / "b", emodb).path)
    clean = decode(clip.path, clip.clip_id, video=False).audio
    mixed = decode(noisy.path, clip.clip_id, video=False).audio
    assert len(mixed) == len(clean)
    assert snr(clean, mixed) == pytest.approx(5, abs=0.05)
    if kind == "audio-pink":
        spectrum = np.abs(np.fft.rfft(mixed - clean)) ** 2
        assert spectrum[1:len(spectrum) // 10].mean() > 10 * spectrum[len(spectrum) // 2:].mean()


def test_audio_noise_keeps_a_video_clips_picture(crema_video, tmp_path):
    noisy = corrupt_clip(recipe("audio-noise", 0), crema_video, tmp_path, [])
    assert noisy.path.suffix == ".mkv" and probe(noisy.path).has_video
    assert len(frames(noisy.path)) == len(frames(crema_video.path))
    clean = decode(crema_video.path, "x", video=False).audio
    assert snr(clean, decode(noisy.path, "x", video=False).audio) == pytest.approx(0, abs=0.1)


def test_a_noise_corpus_is_used_when_noise_dir_is_set(emodb, tmp_path):
    corpus = tmp_path / "musan"
    corpus.mkdir()
    shutil.copy(emodb[3].path, corpus / "noise.wav")
    with_corpus = Recipe(recipe("audio-noise", 0).corruption, 0, 0, corpus, 16000)
    assert with_corpus.key != recipe("audio-noise", 0).key
    noisy = corrupt_clip(with_corpus, emodb[0], tmp_path / "out", [])
    white = corrupt_clip(recipe("audio-noise", 0), emodb[0], tmp_path / "white", [])
    assert digest(noisy.path) != digest(white.path)
    clean = decode(emodb[0].path, "x", video=False).audio
    assert snr(clean, decode(noisy.path, "x", video=False).audio) == pytest.approx(0, abs=0.05)
    with pytest.raises(ConfigError, match="eval.noise_dir: .*no such folder"):
        Robustness(config(**{"eval.noise_dir": str(tmp_path / "none")}), Workspace(tmp_path),
                   parse_specs(["audio-noise:snr=0"]))


# --- a real run under corruption (egemaps on EmoDB clips) ---------------------------------------

EMODB_CLASSES = {"anger": "angry", "neutral": "neutral", "sadness": "sad"}


@pytest.fixture(scope="module")
def emodb_run(shared_data, tmp_path_factory) -> Workspace:
    """A 2-fold egemaps run on 7 EmoDB clips of each of three classes (copied: one is broken later)."""
    root = tmp_path_factory.mktemp("emodb")
    clips = root / "clips"
    clips.mkdir()
    rows, counts = ["name,discrete,speaker"], dict.fromkeys(EMODB_CLASSES, 0)
    with (shared_data / "emodb-dev" / "labels.csv").open(newline="") as handle:
        for row in csv.DictReader(handle):
            if counts.get(row["discrete"], 7) < 7:
                counts[row["discrete"]] += 1
                shutil.copy(shared_data / "emodb-dev" / "wav" / f"{row['name']}.wav", clips)
                rows.append(f"{row['name']},{row['discrete']},{row['speaker']}")
    (clips / "labels.csv").write_text("\n".join(rows) + "\n")
    workspace = Workspace(root / "ws")
    workspace.root.mkdir()
    workspace.config_path.write_text('[data]\nclasses = ["neutral", "angry", "sad"]\n'
                                     '[extract]\nencoders = ["egemaps"]\nworkers = 1\n')
    for args in (["extract", str(clips), "--labels", str(clips / "labels.csv")],
                 ["train", "--labels", str(clips / "labels.csv"), "--folds", "2", "--epochs", "20", "--name", "run"]):
        outcome = mer(workspace.root, *args)
        assert outcome.exit_code == 0, outcome.output
    return workspace


def corrupted_eval(workspace: Workspace, *specs: str, run: str = "run", priors: str = "absent") -> dict:
    outcome = mer(workspace.root, "-s", f"eval.corrupt_priors={priors}", "eval", "--checkpoint", run,
                  *(a for s in specs for a in ("--corrupt", s)), "--json")
    assert outcome.exit_code in (0, 1), outcome.output
    return {"exit": outcome.exit_code, **json.loads(outcome.stdout)}


def copies(workspace: Workspace) -> dict[str, str]:
    return {str(p.relative_to(workspace.root)): digest(p) for p in (workspace.root / SCRATCH).rglob("*")
            if p.is_file() and "clips" in p.parts}


@pytest.mark.slow
def test_noise_that_must_hurt_does_and_a_rerun_is_identical(emodb_run):
    first = corrupted_eval(emodb_run, "audio-noise:snr=-10", "drop:audio", "video-blur:sigma=4")
    assert first["exit"] == 0
    noise = first["robustness"]["audio-noise"]
    assert noise["clean"]["waf"] > 0.6 and noise["failed"] == []
    assert noise["levels"][0]["waf"] < noise["clean"]["waf"] - 0.2
    blur = first["robustness"]["video-blur"]  # the run has no visual set: nothing to corrupt
    assert blur["levels"] == [{"level": 4, **blur["clean"]}]
    made = copies(emodb_run)
    assert len(made) == 21 and all(name.startswith(f"{SCRATCH}/audio-noise-snr-10-") for name in made)
    shutil.rmtree(emodb_run.root / SCRATCH)
    again = corrupted_eval(emodb_run, "audio-noise:snr=-10", "drop:audio", "video-blur:sigma=4")
    assert again["robustness"] == first["robustness"]
    assert copies(emodb_run) == made


@pytest.mark.slow
def test_a_second_run_of_the_same_spec_re_extracts_nothing(emodb_run, monkeypatch):
    first = corrupted_eval(emodb_run, "audio-pink:snr=0")

    def refuse(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(mercli.extract, "extract_clips", refuse)
    assert corrupted_eval(emodb_run, "audio-pink:snr=0")["robustness"] == first["robustness"]


@pytest.mark.slow
def test_a_clip_that_cannot_be_corrupted_is_recorded_and_the_others_are_scored(emodb_run, tmp_path):
    broken = sorted((emodb_run.root.parent / "clips").glob("*.wav"))[0]
    saved = tmp_path / broken.name
    shutil.copy(broken, saved)
    broken.write_bytes(b"not a wav file")
    try:
        result = corrupted_eval(emodb_run, "audio-babble:snr=0")
    finally:
        shutil.copy(saved, broken)
    curve = result["robustness"]["audio-babble"]
    assert result["exit"] == 1
    assert [(f["clip"], f["level"]) for f in curve["failed"]] == [(broken.stem, 0)]
    assert broken.name in curve["failed"][0]["reason"]
    assert result["clips"] == 21 and 0 <= curve["levels"][0]["waf"] <= 1


@pytest.fixture(scope="module")
def with_priors(emodb_run) -> Workspace:
    """The EmoDB workspace, reasoned about by the local reasoner, and a run "pri" that uses its priors."""
    clips = emodb_run.root.parent / "clips"
    for args in (["reason", str(clips)],
                 ["train", "--labels", str(clips / "labels.csv"), "--folds", "2", "--epochs", "20", "--name", "pri"]):
        outcome = mer(emodb_run.root, *args)
        assert outcome.exit_code == 0, outcome.output
    assert any(name.startswith("prior-acoustic-")
               for name in json.loads((emodb_run.runs / "pri" / "config.json").read_text())["manifests"])
    return emodb_run


@pytest.mark.slow
def test_priors_of_corrupted_copies_come_from_the_runs_reasoner_when_asked(with_priors):
    traces = lambda: sorted(p.name for p in (with_priors.root / "reasoning").rglob("content-*"))  # noqa: E731
    before = traces()
    first = corrupted_eval(with_priors, "audio-noise:snr=-10", run="pri", priors="reason")
    assert first["exit"] == 0 and first["robustness"]["audio-noise"]["failed"] == []
    asked = traces()
    assert len(asked) == len(before) + 21  # one trace per corrupted copy, kept under its content
    [level] = (with_priors.root / SCRATCH).glob("audio-noise-snr-10-*")
    priors = [s for s in list_feature_sets(level / "features") if s.manifest.encoder.startswith("prior-")]
    # the text and the class-score priors of the 4 trace parts (prompt version 2)
    assert len(priors) == 8 and all(len(s.clip_ids()) == 21 for s in priors)
    assert corrupted_eval(with_priors, "audio-noise:snr=-10", run="pri", priors="reason") == first
    assert traces() == asked  # nothing asked again


@pytest.mark.slow
def test_a_clip_whose_copy_cannot_be_re_extracted_is_recorded_and_the_others_are_scored(emodb_run, monkeypatch):
    from mer_plugins.encoders.egemaps import EgemapsEncoder

    victim = sorted(p.stem for p in (emodb_run.root.parent / "clips").glob("*.wav"))[1]
    measure = EgemapsEncoder.encode

    def failing(self, clip):
        if clip.clip_id == victim and SCRATCH in clip.path.parts:
            raise RuntimeError("openSMILE gave up")
        return measure(self, clip)

    monkeypatch.setattr(EgemapsEncoder, "encode", failing)  # extract runs in this process (workers = 1)
    result = corrupted_eval(emodb_run, "audio-noise:snr=5")
    curve = result["robustness"]["audio-noise"]
    assert result["exit"] == 1
    assert curve["failed"] == [{"clip": victim, "level": 5, "reason": "re-extraction: encoder egemaps: "
                                                                     "RuntimeError: openSMILE gave up"}]
    assert result["clips"] == 21  # the victim scored without its audio set, the others with theirs

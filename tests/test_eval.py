"""The eval stage on the synthetic workspace of test_train (with some labels flipped, so that the
fold models make mistakes and the fitted temperatures differ from 1). Every figure is checked
against scikit-learn computed here from the written predictions."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import statistics
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import softmax
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                             precision_recall_fscore_support)

from mercli.calibration import expected_calibration_error, reliability
from mercli.cli import cli
from mercli.contracts import Features
from mercli.errors import DataError
from mercli.features import FeatureSet
from mercli import evaluation
from mercli.evaluation import evaluate, metrics
from mercli.runs import load_model, load_run, resolve_run
from mercli.train import predict_logits, train
from mercli.trainset import build_table
from mercli.workspace import Workspace
from support.training import CLASSES, config, manifest, noisy_labels_with_a_mixed_test_split, write_workspace

import torch


def clips_of(labels: Path, split: str) -> list[str]:
    return [line.split(",")[0] for line in labels.read_text().splitlines()[1:] if line.endswith("," + split)]


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    """A workspace with two 3-fold runs of different seeds ("cv", "cv-seed1")."""
    root = tmp_path_factory.mktemp("eval")
    labels = write_workspace(root)
    noisy_labels_with_a_mixed_test_split(labels)
    for name, seed in (("cv", 0), ("cv-seed1", 1)):
        train(config(**{"train.epochs": 6, "train.seed": seed}), Workspace(root), labels, name=name, folds=3)
    return Workspace(root), labels


def mer(space: Workspace, *args: str):
    """``mer eval ARGS`` on the CPU, where the tests recompute the logits."""
    arguments = ["-w", str(space.root), "-s", "train.device=cpu", "eval", *args]
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, arguments)


def read_predictions(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def sklearn_figures(rows: list[dict[str, str]]) -> dict:
    """Every figure of eval, recomputed from predictions.csv with scikit-learn."""
    y_true = np.array([CLASSES.index(r["label"]) for r in rows])
    probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    y_pred = np.array([CLASSES.index(r["predicted"]) for r in rows])
    assert (probabilities.argmax(axis=1) == y_pred).all()
    precision, recall, f1, support = precision_recall_fscore_support(y_true, y_pred, labels=[0, 1, 2], zero_division=0)
    return {
        "waf": f1_score(y_true, y_pred, average="weighted"),
        "accuracy": accuracy_score(y_true, y_pred),
        "macro_f1": f1_score(y_true, y_pred, average="macro"),
        "uar": balanced_accuracy_score(y_true, y_pred),
        "ece": expected_calibration_error(y_true, probabilities),
        "per_class": {c: {"precision": precision[k], "recall": recall[k], "f1": f1[k], "support": support[k]}
                      for k, c in enumerate(CLASSES)},
        "confusion": confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist(),
    }


def assert_same_figures(reported: dict, expected: dict) -> None:
    for key in ("waf", "accuracy", "macro_f1", "uar"):
        assert reported[key] == pytest.approx(expected[key], abs=1e-12), key
    assert reported["ece"] == pytest.approx(expected["ece"], abs=1e-5)  # the CSV rounds to 6 decimals
    assert reported["confusion"] == expected["confusion"]
    for name, row in expected["per_class"].items():
        assert reported["per_class"][name] == pytest.approx(row, abs=1e-12), name


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_metrics_equal_sklearn_with_a_class_never_predicted_and_one_absent():
    rng = np.random.default_rng(0)
    classes = ["a", "b", "c", "d"]
    y_true = rng.choice([0, 1, 2], size=60)  # "d" is never true
    probabilities = rng.dirichlet(np.ones(4), size=60)
    probabilities[:, 1] *= 0.1  # "b" is (almost) never predicted
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    y_pred = probabilities.argmax(axis=1)
    figures = metrics(y_true, probabilities, classes)
    assert figures["waf"] == f1_score(y_true, y_pred, average="weighted", zero_division=0)
    assert figures["macro_f1"] == f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert figures["accuracy"] == accuracy_score(y_true, y_pred)
    assert figures["uar"] == pytest.approx(balanced_accuracy_score(y_true, y_pred))
    assert figures["confusion"] == confusion_matrix(y_true, y_pred, labels=range(4)).tolist()
    assert figures["per_class"]["d"]["support"] == 0 and list(figures["per_class"]) == classes
    assert figures["ece"] == expected_calibration_error(y_true, probabilities)


# --- validation mode ----------------------------------------------------------------------------


def test_validation_figures_equal_sklearn_on_the_written_predictions(space):
    workspace, _labels = space
    outcome = mer(workspace, "--checkpoint", "cv", "--json")
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    run = workspace.runs / "cv"
    assert json.loads((run / "eval" / "metrics.json").read_text()) == document
    assert (run / "eval" / "confusion.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = read_predictions(run / "eval" / "predictions.csv")
    assert document["clips"] == len(rows) == len({r["clip"] for r in rows})  # each non-test clip once
    assert_same_figures(document, sklearn_figures(rows))
    recorded = json.loads((run / "metrics.json").read_text())["folds"]
    for fold, trained in zip(document["folds"], recorded):
        mine = [r for r in rows if r["fold"] == str(fold["fold"])]
        assert {r["clip"] for r in mine} == set(trained["val_clips"])
        assert_same_figures(fold, sklearn_figures(mine))
        assert fold["waf"] == pytest.approx(trained["waf"])  # re-predicting reproduces the selection
        assert fold["temperature"] == trained["temperature"]
    for key in ("waf", "accuracy", "macro_f1", "uar", "ece"):
        values = [fold[key] for fold in document["folds"]]
        assert document["mean"][key] == pytest.approx(np.mean(values))
        assert document["std"][key] == pytest.approx(statistics.stdev(values))


def test_json_shape(space):
    workspace, _labels = space
    document = json.loads(mer(workspace, "--checkpoint", "cv", "--json").stdout)
    assert {"classes", "waf", "accuracy", "macro_f1", "uar", "ece", "per_class", "confusion", "folds", "mean",
            "std"} <= set(document)
    assert document["classes"] == CLASSES and len(document["confusion"]) == 3
    assert all(set(row) == {"precision", "recall", "f1", "support"} for row in document["per_class"].values())
    assert [f["fold"] for f in document["folds"]] == [1, 2, 3]


def test_train_fits_temperatures_and_eval_applies_them(space):
    workspace, labels = space
    run = workspace.runs / "cv"
    recorded = json.loads((run / "metrics.json").read_text())["folds"]
    assert any(abs(f["temperature"] - 1) > 0.05 for f in recorded)
    for fold in recorded:
        calibration = fold["calibration"]
        assert calibration["temperature"] == fold["temperature"]
        assert calibration["nll_after"] <= calibration["nll_before"]
    assert [f.temperature for f in load_run(run).folds] == [f["temperature"] for f in recorded]
    evaluate(config(), workspace, ["cv"])
    rows = {r["clip"]: r for r in read_predictions(run / "eval" / "predictions.csv")}
    table = build_table(config(), workspace.features, labels)
    for fold in recorded:
        model, _ = load_model(run, fold=fold["fold"])
        indices = [table.clip_ids.index(c) for c in fold["val_clips"]]
        logits = predict_logits(model, table, indices, torch.device("cpu"), 8).numpy()
        expected = softmax(logits / fold["temperature"], axis=1)
        written = np.array([[float(rows[c][f"p_{k}"]) for k in CLASSES] for c in fold["val_clips"]])
        assert np.allclose(written, expected, atol=2e-6)


def assert_same_bins(reported: list[dict], expected: list[dict]) -> None:
    assert [(b["lower"], b["upper"]) for b in reported] == [(b["lower"], b["upper"]) for b in expected]
    for mine, theirs in zip(reported, expected):
        assert mine == pytest.approx(theirs, abs=1e-6)  # the logits are float32


def test_the_reliability_diagram_is_recorded_before_and_after_calibration(space, tmp_path):
    """metrics.json holds the bins of the pooled predictions at T = 1 and at each fold's T, so
    that a report can show what temperature scaling did; both recomputed here from the logits."""
    workspace, labels = space
    table = build_table(config(), workspace.features, labels)
    run = load_run(workspace.runs / "cv")
    position = {clip: i for i, clip in enumerate(table.clip_ids)}
    pooled = {"before": [], "after": []}
    for fold in run.folds:
        logits = predict_logits(fold.model, table, [position[c] for c in fold.val_clips], torch.device("cpu"), 8).numpy()
        pooled["before"].append(softmax(logits, axis=1))
        pooled["after"].append(softmax(logits / fold.temperature, axis=1))
    y_true = np.concatenate([table.labels[[position[c] for c in f.val_clips]] for f in run.folds])
    document = evaluate(config(), workspace, ["cv"], out=tmp_path / "val").to_json()["reliability"]
    for moment in ("before", "after"):
        assert_same_bins(document[moment], reliability(y_true, np.concatenate(pooled[moment])))
    assert document["ece_before"] == pytest.approx(expected_calibration_error(y_true, np.concatenate(pooled["before"])))
    assert document["ece_before"] != pytest.approx(document["ece_after"])  # the temperatures changed something

    test_clips = [position[c] for c in clips_of(labels, "test")]
    logits = [predict_logits(f.model, table, test_clips, torch.device("cpu"), 8).numpy() for f in run.folds]
    held_out = evaluate(config(), workspace, ["cv"], labels=labels, out=tmp_path / "test").to_json()
    assert_same_bins(held_out["reliability"]["before"],
                     reliability(table.labels[test_clips], np.mean([softmax(z, axis=1) for z in logits], axis=0)))
    assert held_out["labels_file"] == str(labels.resolve())
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["reliability"] == held_out["reliability"]


def test_a_run_without_temperatures_or_training_clips_loads_with_t_1(space, tmp_path):
    workspace, labels = space
    old = tmp_path / "old"
    shutil.copytree(workspace.runs / "cv", old)
    metrics_path = old / "metrics.json"
    document = json.loads(metrics_path.read_text())
    for fold in document["folds"]:
        del fold["temperature"], fold["calibration"], fold["train_clip_ids"]
    metrics_path.write_text(json.dumps(document))
    assert [f.temperature for f in load_run(old).folds] == [1.0, 1.0, 1.0]
    assert evaluate(config(), workspace, [str(old)]).member_figures[0]["temperature"] == 1.0
    with pytest.raises(DataError, match="predates the record of its training clips"):
        evaluate(config(), workspace, [str(old)], labels=labels)
    assert evaluate(config(), workspace, [str(old)], labels=labels, allow_train_clips=True).clip_ids


def test_seeds_are_aggregated_over_every_fold_model(space, tmp_path):
    workspace, _labels = space
    with pytest.raises(DataError, match="--out"):
        evaluate(config(), workspace, ["cv", "cv-seed1"])
    evaluation = evaluate(config(), workspace, ["cv", "cv-seed1", "cv"], out=tmp_path / "both")
    assert [(Path(f["run"]).name, f["fold"]) for f in evaluation.member_figures] == [
        ("cv", 1), ("cv", 2), ("cv", 3), ("cv-seed1", 1), ("cv-seed1", 2), ("cv-seed1", 3)]
    mean, std = evaluation.spread()
    wafs = [f["waf"] for f in evaluation.member_figures]
    assert mean["waf"] == pytest.approx(np.mean(wafs)) and std["waf"] == pytest.approx(statistics.stdev(wafs))
    rows = read_predictions(tmp_path / "both" / "predictions.csv")
    assert len(rows) == 2 * len({r["clip"] for r in rows})  # every clip once per seed
    assert_same_figures(evaluation.figures, sklearn_figures(rows))


# --- labels mode --------------------------------------------------------------------------------


def test_held_out_clips_get_the_mean_of_the_calibrated_fold_models(space, tmp_path):
    workspace, labels = space
    outcome = mer(workspace, "--checkpoint", "cv", "--labels", str(labels), "--out", str(tmp_path / "test"),
                  "--submission", str(tmp_path / "submission.csv"), "--json")
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    rows = read_predictions(tmp_path / "test" / "predictions.csv")
    test_clips = clips_of(labels, "test")
    assert [r["clip"] for r in rows] == test_clips and document["clips"] == len(test_clips)
    assert {r["label"] for r in rows} == set(CLASSES)
    assert_same_figures(document, sklearn_figures(rows))
    assert len(document["folds"]) == 3 and all(f["clips"] == len(test_clips) for f in document["folds"])

    table = build_table(config(), workspace.features, labels)
    indices = [table.clip_ids.index(c) for c in test_clips]
    run = load_run(workspace.runs / "cv")
    expected = np.mean([softmax(predict_logits(f.model, table, indices, torch.device("cpu"), 8).numpy() / f.temperature,
                                axis=1) for f in run.folds], axis=0)
    written = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    assert np.allclose(written, expected, atol=2e-6)

    submission = (tmp_path / "submission.csv").read_text().splitlines()
    assert submission == ["name,discrete", *(f"{r['clip']},{r['predicted']}" for r in rows)]


def test_clips_a_run_was_trained_or_selected_on_are_refused(space):
    workspace, labels = space
    outcome = mer(workspace, "--checkpoint", "cv", "--labels", str(labels), "--split", "all")
    assert outcome.exit_code == 2
    trained = len(clips_of(labels, "train")) + len(clips_of(labels, "val"))
    everything = trained + len(clips_of(labels, "test"))
    assert f"{trained} of the {everything} clips to evaluate were used to train or select" in outcome.stderr
    assert "first: clip001, clip002" in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
    allowed = evaluate(config(), workspace, ["cv"], labels=labels, split="validation", allow_train_clips=True,
                       out=workspace.root / "val-eval")
    assert allowed.source.endswith("(split val)") and allowed.clip_ids == clips_of(labels, "val")


def test_test_clips_without_features_are_listed_as_exclusions(space, tmp_path):
    workspace, labels = space
    extended = tmp_path / "labels.csv"
    extended.write_text(labels.read_text() + "ghost1,happy,spk0,test\nghost2,angry,spk0,train\n")
    evaluation = evaluate(config(), workspace, ["cv"], labels=extended, out=tmp_path / "out")
    assert evaluation.excluded == ["ghost1"]
    outcome = mer(workspace, "--checkpoint", "cv", "--labels", str(extended), "--out", str(tmp_path / "shown"))
    assert outcome.exit_code == 0 and outcome.stdout == ""
    for shown in ("mer eval:", "mean of the fold models", "per class", "confusion matrix", "excluded: 1", "ghost1"):
        assert shown in outcome.stderr


def test_priors_whose_reasoner_saw_the_labels_are_refused_for_evaluated_clips(tmp_path):
    labels = write_workspace(tmp_path, clips_per_class=6)
    leaky = manifest("prior-visual", "visual", 5, "utterance")
    leaky = type(leaky)(**{**leaky.to_json(), "settings": {"source": {"label_conditioned": True}}})
    priors = FeatureSet.open(tmp_path / "features", leaky)
    for clip in clips_of(labels, "train"):  # label-conditioned priors are fine for training clips
        priors.write(clip, Features(np.ones(5, dtype=np.float32)))
    train(config(**{"train.epochs": 1}), Workspace(tmp_path), labels, name="leaky")
    assert evaluate(config(), Workspace(tmp_path), ["leaky"], labels=labels).clip_ids == clips_of(labels, "test")
    priors.write(clips_of(labels, "test")[0], Features(np.ones(5, dtype=np.float32)))
    with pytest.raises(DataError, match="label-conditioned traces for 1 evaluated clip"):
        evaluate(config(), Workspace(tmp_path), ["leaky"], labels=labels)
    evaluate(config(), Workspace(tmp_path), ["leaky"])
    priors.write(clips_of(labels, "val")[0], Features(np.ones(5, dtype=np.float32)))
    with pytest.raises(DataError, match="label-conditioned traces for 1 validation clip"):
        evaluate(config(), Workspace(tmp_path), ["leaky"])


# --- choosing runs, and bad input ---------------------------------------------------------------


def test_the_default_run_is_the_newest(tmp_path):
    for age, name in enumerate(["new", "old"]):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
        os.utime(tmp_path / "runs" / name / "config.json", (1e9 - age, 1e9 - age))
    (tmp_path / "runs" / "eval-notes").mkdir()  # not a run: no config.json
    workspace = Workspace(tmp_path)
    assert resolve_run(workspace, None) == tmp_path / "runs" / "new"
    assert resolve_run(workspace, "old") == tmp_path / "runs" / "old"
    assert resolve_run(workspace, str(tmp_path / "runs" / "old")) == tmp_path / "runs" / "old"
    with pytest.raises(DataError, match="no training runs"):
        resolve_run(Workspace(tmp_path / "empty"), None)


def broken_copy(space: Workspace, tmp_path: Path, damage) -> Path:
    run = tmp_path / "broken"
    shutil.copytree(space.runs / "cv", run)
    damage(run)
    return run


def edit_config(run: Path, change) -> None:
    document = json.loads((run / "config.json").read_text())
    change(document)
    (run / "config.json").write_text(json.dumps(document))


def widen_first_set(document: dict) -> None:
    document["manifests"][sorted(document["manifests"])[0]]["dim"] = 99


@pytest.mark.parametrize("damage, message", [
    (lambda run: shutil.rmtree(run), "no such run folder"),
    (lambda run: (run / "model-fold2.safetensors").unlink(),
     "model-fold2.safetensors: missing, so fold 2 of the run has no weights"),
    (lambda run: (run / "model-fold1.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json"),
     "model-fold1.safetensors: not readable safetensors weights"),
    (lambda run: (run / "config.json").write_text("{"), "config.json: unreadable"),
    (lambda run: (run / "metrics.json").unlink(), "metrics.json: missing, so"),
    (lambda run: edit_config(run, lambda d: d.update(classes=["a", "b"])), "does not fit the network"),
    (lambda run: edit_config(run, widen_first_set), "the run expects utterance-level of dim 99"),
])
def test_a_bad_checkpoint_is_one_line_and_exit_2(space, tmp_path, damage, message):
    workspace, _labels = space
    run = broken_copy(workspace, tmp_path, damage)
    outcome = mer(workspace, "--checkpoint", str(run))
    assert outcome.exit_code == 2, outcome.output
    assert message in outcome.stderr and len(outcome.stderr.strip().splitlines()) == 1
    assert outcome.stdout == ""


@pytest.mark.parametrize("rows, args, message", [
    ("clip000,sad,spk0,test\n", (), r"labels outside the classes \(neutral, angry, happy\): sad \(1\)"),
    ("clip001,angry,spk0,train\nclip002,happy,spk0,val\n", (),
     r"no labelled clips with features to evaluate \(split test\)"),
    ("clip000,neutral,spk0,test\nclip001,angry,spk0,train\n", ("--split", "dev"), r"\(split val\)"),
    ("clip000,neutral,spk0,Test\nclip001,angry,spk0,bogus\n", (), r"labels.csv: clip 'clip001': split 'bogus' is not "
                                                                 r"one of train, val, valid, validation, dev, test"),
])
def test_bad_labels_are_one_line_and_exit_2(space, tmp_path, rows, args, message):
    workspace, _labels = space
    labels = tmp_path / "labels.csv"
    labels.write_text("name,discrete,speaker,split\n" + rows)
    outcome = mer(workspace, "--checkpoint", "cv", "--labels", str(labels), *args)
    assert outcome.exit_code == 2, outcome.output
    assert len(outcome.stderr.strip().splitlines()) == 1
    assert re.search(message, outcome.stderr), outcome.stderr


def test_a_split_option_that_names_no_split_is_a_usage_error(space, tmp_path):
    workspace, labels = space
    outcome = mer(workspace, "--checkpoint", "cv", "--labels", str(labels), "--split", "nonsense")
    assert outcome.exit_code == 2, outcome.output
    assert outcome.stderr.strip().endswith("Error: --split: split 'nonsense' is not one of train, val, valid, "
                                           "validation, dev, test or all"), outcome.stderr


def test_an_evaluation_stopped_between_its_files_is_not_read_as_one(space, tmp_path, monkeypatch):
    workspace, labels = space
    run = tmp_path / "copy"
    shutil.copytree(workspace.runs / "cv", run, ignore=shutil.ignore_patterns("eval"))
    assert mer(workspace, "--checkpoint", str(run)).exit_code == 0
    written = json.loads((run / "eval" / "metrics.json").read_text())
    assert written["predictions_sha256"] == hashlib.sha256((run / "eval" / "predictions.csv").read_bytes()).hexdigest()

    def stopped(path, document):
        raise KeyboardInterrupt

    monkeypatch.setattr(evaluation, "write_json", stopped)  # Ctrl-C once predictions.csv is written
    assert mer(workspace, "--checkpoint", str(run), "--labels", str(labels), "--split", "all",
               "--allow-train-clips").exit_code == 130
    monkeypatch.undo()
    report = CliRunner().invoke(cli, ["-w", str(workspace.root), "report", str(run), "--out", str(tmp_path / "r.html")])
    assert report.exit_code == 2, report.output
    assert "predictions.csv: missing, or not the predictions of" in report.stderr
    assert not (tmp_path / "r.html").exists()


def test_options_that_need_labels_are_refused_without(space):
    workspace, _labels = space
    outcome = mer(workspace, "--checkpoint", "cv", "--submission", "out.csv")
    assert outcome.exit_code == 2 and "need --labels" in outcome.stderr


@pytest.mark.slow
def test_retraining_a_run_removes_the_reports_of_the_models_it_replaces(tmp_path):
    labels = write_workspace(tmp_path)
    space = Workspace(tmp_path)
    train(config(**{"train.epochs": 2}), space, labels, name="again", folds=2)
    assert mer(space, "--checkpoint", "again").exit_code == 0
    assert (tmp_path / "runs" / "again" / "eval" / "metrics.json").exists()
    train(config(**{"train.epochs": 2}), space, labels, name="again", folds=2)
    assert not (tmp_path / "runs" / "again" / "eval").exists()

"""Self-training: ``mer pseudolabel`` (the teacher's fold ensemble labels a pool, class-balanced, with an
optional agreement rule with a reasoner's traces) and ``mer train --pseudo-labels`` (pseudo-labelled
clips in the training folds only, weighted in the loss, with the teacher's provenance and the
honesty checks), on the small synthetic workspaces of support.training."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import mercli.plugins as plugins
from mercli.calibration import calibrated
from mercli.ensemble import ensemble_probabilities
from mercli.errors import ConfigError, DataError
from mercli.evaluation import evaluate
from mercli.pseudolabels import read_pseudo_labels
from mercli.runs import load_run
from mercli.settings import PseudolabelSettings
from mercli.prompts import PROMPT_VERSIONS
from mercli.teacher import (class_quotas, class_thresholds, pseudolabel, select_by_quota, select_by_threshold,
                            trace_emotions)
from mercli.traces import TraceSource, TraceStore
from mercli.train import predict_logits, train
from mercli.trainset import choose_sets, clip_table
from mercli.workspace import Workspace
from support.mer_process import error_document, mer_environment, one_error_line, run_mer
from support.training import CLASSES, FAST, config, write_workspace

SETTINGS = [a for k, v in {**FAST, "data.classes": CLASSES}.items() for a in ("-s", f"{k}={json.dumps(v)}")]


@dataclass
class SelfTraining:
    """A workspace whose labels file keeps every other training clip's label; the rest is the pool.
    ``clips`` holds (empty) files of the pool and of the labelled train and val clips."""

    space: Workspace
    labels: Path
    rows: list[dict[str, str]]
    pool: list[str]
    clips: Path

    def write_labels(self, name: str, change=lambda row: row) -> Path:
        path = self.space.root / name
        kept = [change(dict(row)) for row in self.rows if row["name"] not in self.pool]
        with path.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.DictWriter(handle, ["name", "discrete", "speaker", "split"])
            writer.writeheader()
            writer.writerows(r for r in kept if r is not None)
        return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> SelfTraining:
    root = tmp_path_factory.mktemp("selftraining")
    everything = write_workspace(root)
    rows = list(csv.DictReader(everything.open(encoding="utf-8")))
    train_rows = [r["name"] for r in rows if r["split"] == "train"]
    pool = train_rows[::2]
    clips = root / "clips"
    clips.mkdir()
    for row in rows:
        if row["split"] != "test":
            (clips / f"{row['name']}.wav").write_bytes(b"")
    built = SelfTraining(Workspace(root), root / "labelled.csv", rows, pool, clips)
    built.write_labels("labelled.csv")
    return built


@pytest.fixture(scope="module")
def teacher(setup):
    return train(config(), setup.space, setup.labels, name="teacher")


@pytest.fixture(scope="module")
def round_one(setup, teacher):
    return pseudolabel(config(), setup.space, setup.clips, "teacher")


@pytest.fixture(scope="module")
def student(setup, round_one):
    return train(config(), setup.space, setup.labels, name="student", pseudo_labels=round_one.out)


def rows_of(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(path.open(encoding="utf-8")))


# --- selection --------------------------------------------------------------------------------


def test_quotas_follow_the_labelled_prior_not_the_teachers_favourite_class():
    rng = np.random.default_rng(0)
    predicted = np.array([0] * 80 + [1] * 10 + [2] * 10)
    confidence = np.where(predicted == 0, rng.uniform(0.9, 1.0, 100), rng.uniform(0.3, 0.6, 100))
    quotas = class_quotas(100, np.array([2.0, 1.0, 1.0]), 0.4)
    assert quotas.tolist() == [20, 10, 10]
    kept = select_by_quota(predicted, confidence, np.ones(100, dtype=bool), quotas, 0.0)
    assert np.bincount(predicted[kept], minlength=3).tolist() == [20, 10, 10]
    assert confidence[kept & (predicted == 0)].min() >= confidence[~kept & (predicted == 0)].max()  # the most confident
    floor = select_by_quota(predicted, confidence, np.ones(100, dtype=bool), quotas, 0.5)
    assert (confidence[floor] >= 0.5).all() and np.bincount(predicted[floor], minlength=3)[0] == 20


def test_per_class_thresholds_keep_rare_classes_a_lower_bar():
    thresholds = class_thresholds(PseudolabelSettings(threshold=0.9, thresholds={"happy": 0.5}), CLASSES)
    assert thresholds.tolist() == [0.9, 0.9, 0.5]
    predicted, confidence = np.array([0, 1, 2, 2]), np.array([0.95, 0.6, 0.6, 0.4])
    assert select_by_threshold(predicted, confidence, np.ones(4, dtype=bool), thresholds).tolist() == \
        [True, False, True, False]


@pytest.mark.parametrize("given, problem", [({"sad": 0.5}, "thresholds: no class named sad"),
                                            ({"happy": 1.5}, "thresholds.happy: must be a number in [0, 1]")])
def test_bad_per_class_thresholds_are_configuration_errors(given, problem):
    with pytest.raises(ConfigError, match=problem.replace("[", r"\[").replace("]", r"\]")):
        class_thresholds(PseudolabelSettings(threshold=0.9, thresholds=given), CLASSES)


def test_the_pool_is_labelled_class_balanced_and_the_teachers_clips_are_skipped(setup, round_one):
    summary = round_one.to_json()
    assert summary["pool"] == len(setup.pool)
    assert summary["teacher_clips_skipped"] == len(list(setup.clips.iterdir())) - len(setup.pool)
    assert summary["kept"] + summary["dropped"] == summary["pool"]
    rows = rows_of(round_one.out)
    assert len(rows) == summary["kept"] and {r["name"] for r in rows} <= set(setup.pool)
    prior = np.bincount([CLASSES.index(r["discrete"]) for r in setup.rows if r["name"] not in setup.pool
                         and r["split"] != "test"], minlength=3)
    quotas = class_quotas(len(setup.pool), prior.astype(float), 0.5)
    assert all(summary["classes"][c]["kept"] <= quotas[k] for k, c in enumerate(CLASSES))
    assert {r["teacher"] for r in rows} == {f"{setup.space.root.resolve() / 'runs' / 'teacher'} (1 fold)"}
    assert {r["round"] for r in rows} == {"1"} and all(0 <= float(r["confidence"]) <= 1 for r in rows)


def test_the_ensemble_is_the_mean_of_the_folds_calibrated_probabilities(setup):
    run = load_run(train(config(), setup.space, setup.labels, name="two-folds", folds=2).run)
    table = clip_table(CLASSES, choose_sets(setup.space.features, None), setup.pool)
    indices = list(range(len(table.clip_ids)))
    by_hand = np.mean([calibrated(predict_logits(f.model, table, indices, torch.device("cpu"), 7).numpy(), f.temperature)
                       for f in run.folds], axis=0)
    assert len(run.folds) == 2
    np.testing.assert_allclose(ensemble_probabilities(run, table, indices, torch.device("cpu")), by_hand, rtol=1e-6)


# --- agreement with a reasoner's traces ---------------------------------------------------------

SOURCE = TraceSource("fake", "m1", "v1")


def write_trace(store: TraceStore, clip: str, emotion: str) -> None:
    """A trace of ``clip`` in ``store``, its prompt version its source's."""
    absent = {"cues": [], "emotion": None, "confidence": None, "absent": "not looked at"}
    store.write(clip, {
        "clip": clip, "visual": absent, "acoustic": absent, "textual": absent,
        "overall": {"emotion": emotion, "confidence": 0.7, "summary": "a test trace"},
        "provenance": {"reasoner": store.source.reasoner, "model": store.source.model,
                       "prompt_version": store.source.prompt_version,
                       "label_conditioned": False, "usage": {"input_tokens": 1, "output_tokens": 1}, "cost_usd": 0.0,
                       "content_hash": "a" * 64, "created": "2026-01-01T00:00:00+00:00"}})


def test_agreement_requires_or_weighs_the_traces_overall_emotion(setup, teacher, tmp_path):
    keep_all = {"pseudolabel.selection": "threshold", "pseudolabel.threshold": 0.0}
    everything = rows_of(pseudolabel(config(**keep_all), setup.space, setup.clips, "teacher", tmp_path / "all.csv").out)
    store = TraceStore.open(setup.space.reasoning, SOURCE)
    agreeing = set()
    for number, row in enumerate(everything):
        if number % 3 == 2:
            continue  # no trace: never agrees
        other = CLASSES[(CLASSES.index(row["discrete"]) + 1) % 3]
        write_trace(store, row["name"], row["discrete"].upper() if number % 3 == 0 else other)  # case folds
        agreeing |= {row["name"]} if number % 3 == 0 else set()
    required = pseudolabel(config(**keep_all, **{"pseudolabel.agree_with": "fake"}), setup.space, setup.clips,
                           "teacher", tmp_path / "required.csv")
    assert {r["name"] for r in rows_of(required.out)} == agreeing
    weighed = rows_of(pseudolabel(config(**keep_all, **{"pseudolabel.agree_with": "fake:m1", "pseudolabel.agreement":
                                                        "weight", "pseudolabel.disagree_weight": 0.25}),
                                  setup.space, setup.clips, "teacher", tmp_path / "weighed.csv").out)
    original = {r["name"]: float(r["confidence"]) for r in everything}
    assert len(weighed) == len(everything)
    for row in weighed:
        factor = 1.0 if row["name"] in agreeing else 0.25
        assert float(row["confidence"]) == pytest.approx(original[row["name"]] * factor, abs=2e-6)
    with pytest.raises(DataError, match="needs the traces of one model"):
        pseudolabel(config(**{"pseudolabel.agree_with": "other"}), setup.space, setup.clips, "teacher", tmp_path / "x.csv")


def test_agreement_reads_the_newest_prompt_version_of_a_clip_asked_in_two(setup, tmp_path):
    clips = ["c1", "c2"]
    older = TraceStore.open(setup.space.reasoning, TraceSource("fake", "m1", PROMPT_VERSIONS[0]))
    newer = TraceStore.open(setup.space.reasoning, TraceSource("fake", "m1", PROMPT_VERSIONS[1]))
    write_trace(older, "c1", "happy")
    write_trace(older, "c2", "happy")
    write_trace(newer, "c1", "angry")
    assert trace_emotions(config(), setup.space, "fake", clips) == {"c1": "angry", "c2": "happy"}
    write_trace(TraceStore.open(setup.space.reasoning, TraceSource("fake", "m2", PROMPT_VERSIONS[0])), "c1", "sad")
    with pytest.raises(DataError, match="name the model"):
        trace_emotions(config(), setup.space, "fake", clips)
    assert trace_emotions(config(), setup.space, "fake:m2", clips) == {"c1": "sad"}


# --- weights in the loss ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ce", "focal", "la-ce", "cb-ce", "supcon", "bcl", "bdcl"])
def test_every_built_in_loss_multiplies_each_clips_term_by_its_weight(name):
    torch.manual_seed(0)
    loss = plugins.build("losses", name, config()).build([6, 5, 5], 8)
    logits, embeddings = torch.randn(16, 3), torch.randn(16, 8)
    labels = torch.arange(16) % 3
    plain = loss(logits, embeddings, labels)
    assert torch.allclose(loss(logits, embeddings, labels, torch.ones(16)), plain)
    assert torch.allclose(loss(logits, embeddings, labels, torch.full((16,), 2.0)), 2 * plain)
    uneven = torch.linspace(0.0, 1.0, 16)
    assert not torch.allclose(loss(logits, embeddings, labels, uneven), plain * uneven.mean())


def test_the_pseudo_labelled_clips_weights_reach_the_loss(setup, round_one, monkeypatch):
    from mer_plugins.losses.objectives import Float32Loss

    seen: list[torch.Tensor] = []
    forward = Float32Loss.forward

    def spy(self, logits, embeddings, labels, weights=None):
        seen.append(weights)
        return forward(self, logits, embeddings, labels, weights)

    monkeypatch.setattr(Float32Loss, "forward", spy)
    train(config(**{"pseudolabel.weight": 0.5, "train.epochs": 1}), setup.space, setup.labels, name="spied",
          pseudo_labels=round_one.out)
    assert seen and all(w is not None for w in seen)
    values = np.unique(torch.cat(seen).numpy())
    expected = np.unique(np.array([0.5 * float(r["confidence"]) for r in rows_of(round_one.out)] + [1.0], np.float32))
    np.testing.assert_allclose(values, expected, atol=1e-6)


def test_a_loss_that_cannot_weigh_clips_is_refused(setup, round_one, monkeypatch):
    from mer_plugins.losses.cross_entropy import CrossEntropy

    monkeypatch.setattr(CrossEntropy, "sample_weights", False)
    with pytest.raises(ConfigError, match="does not take per-clip weights"):
        train(config(**{"train.loss": "ce"}), setup.space, setup.labels, name="refused", pseudo_labels=round_one.out)


# --- the student run --------------------------------------------------------------------------


def test_the_student_records_its_pseudo_labels_and_uses_them_for_training_only(setup, round_one, student):
    record = json.loads((student.run / "config.json").read_text())["pseudo_labels"]
    pseudo = [r["name"] for r in rows_of(round_one.out)]
    assert record["path"] == str(round_one.out.resolve())
    assert record["sha256"] == hashlib.sha256(round_one.out.read_bytes()).hexdigest()
    assert record["teacher"] == {"run": str((setup.space.runs / "teacher").resolve()), "folds": 1}
    assert record["round"] == 1 and record["weight"] == 1.0 and record["clip_ids"] == pseudo
    test_clips = {r["name"] for r in setup.rows if r["split"] == "test"}
    for fold in json.loads((student.run / "metrics.json").read_text())["folds"]:
        assert set(pseudo) <= set(fold["train_clip_ids"])
        assert not set(pseudo) & set(fold["val_clips"]) and not test_clips & set(fold["train_clip_ids"])
    assert record["teacher_saw_validation"]["clips"] == record["teacher_saw_validation"]["of"] > 0


def test_eval_says_the_students_validation_figures_are_optimistic(setup, teacher, student):
    evaluation = evaluate(config(), setup.space, ["student"])
    assert len(evaluation.notes) == 1 and "optimistic" in evaluation.notes[0]
    assert evaluate(config(), setup.space, ["teacher"]).notes == []
    held_out = evaluate(config(), setup.space, ["student"], labels=setup.labels, out=setup.space.root / "test-eval")
    assert held_out.notes == [] and len(held_out.clip_ids) == sum(r["split"] == "test" for r in setup.rows)


def test_a_student_becomes_the_next_teacher(setup, student):
    summary = pseudolabel(config(), setup.space, setup.clips, "student")
    assert summary.round == 2 and summary.to_json()["pool"] == len(setup.pool)  # its pseudo clips are the pool again
    assert {r["round"] for r in rows_of(summary.out)} == {"2"}
    second = train(config(), setup.space, setup.labels, name="round2", pseudo_labels=summary.out)
    assert json.loads((second.run / "config.json").read_text())["pseudo_labels"]["round"] == 2


# --- refusals ---------------------------------------------------------------------------------


def test_a_clip_cannot_be_both_labelled_and_pseudo_labelled(setup, round_one, tmp_path):
    labelled = next(r["name"] for r in setup.rows if r["name"] not in setup.pool and r["split"] == "train")
    both = tmp_path / "both.csv"
    text = round_one.out.read_text()
    teacher = rows_of(round_one.out)[0]["teacher"]
    both.write_text(text + f"{labelled},happy,0.9,{teacher},1\n")
    with pytest.raises(DataError, match=f"1 of its clips are in the labels file .*first: {labelled}"):
        train(config(), setup.space, setup.labels, name="both", pseudo_labels=both)


def test_a_teacher_that_saw_a_test_clip_is_refused_even_rounds_later(setup, tmp_path):
    as_training = setup.write_labels("no-test-split.csv", lambda r: {**r, "split": "train" if r["split"] == "test"
                                                                        else r["split"]})
    train(config(), setup.space, as_training, name="leaky")
    leaky = pseudolabel(config(), setup.space, setup.clips, "leaky", tmp_path / "leaky.csv")
    with pytest.raises(DataError, match="trained or selected on [0-9]+ of this run's test clips"):
        train(config(), setup.space, setup.labels, name="refused-leak", pseudo_labels=leaky.out)
    without_test = setup.write_labels("without-test.csv", lambda r: None if r["split"] == "test" else r)
    train(config(), setup.space, without_test, name="middle", pseudo_labels=leaky.out)  # no test clips: allowed
    later = pseudolabel(config(), setup.space, setup.clips, "middle", tmp_path / "later.csv")
    with pytest.raises(DataError, match=r"\(or a teacher before it\)"):
        train(config(), setup.space, setup.labels, name="refused-later", pseudo_labels=later.out)


def test_a_teacher_that_cannot_be_checked_is_refused(setup, tmp_path):
    missing = tmp_path / "gone"
    path = tmp_path / "orphan.csv"
    path.write_text(f"name,discrete,confidence,teacher,round\n{setup.pool[0]},happy,0.9,{missing} (1 fold),1\n")
    with pytest.raises(DataError, match=f"{missing / 'metrics.json'}: missing, so the clips teacher"):
        train(config(), setup.space, setup.labels, name="orphan", pseudo_labels=path)


BAD_FILES = {
    "unknown class": ("name,discrete,confidence,teacher,round\nclip001,bored,0.9,/r (1 fold),1\n",
                      ":2: class 'bored' is not one of neutral, angry, happy"),
    "confidence above 1": ("name,discrete,confidence,teacher,round\nclip001,happy,1.5,/r (1 fold),1\n",
                           ":2: confidence '1.5' is not a number in [0, 1]"),
    "confidence not a number": ("name,discrete,confidence,teacher,round\nclip001,happy,nan,/r (1 fold),1\n",
                                ":2: confidence 'nan' is not a number in [0, 1]"),
    "missing column": ("name,discrete,teacher,round\nclip001,happy,/r (1 fold),1\n",
                       ": missing column(s) confidence; a pseudo-label file has"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_pseudo_label_files_are_one_line_errors(case, tmp_path):
    text, problem = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DataError) as raised:
        read_pseudo_labels(path, config())
    assert str(raised.value).startswith(f"{path}{problem}") and "\n" not in str(raised.value)


# --- the command line -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("case", BAD_FILES)
def test_mer_train_refuses_bad_pseudo_label_files_with_exit_2(setup, case, tmp_path):
    text, problem = BAD_FILES[case]
    path = tmp_path / "bad.csv"
    path.write_text(text)
    result = run_mer("-w", str(setup.space.root), *SETTINGS, "train", "--labels", str(setup.labels),
                     "--pseudo-labels", str(path), "--name", "bad", "--json", cwd=tmp_path)
    assert result.returncode == 2
    line = one_error_line(result)
    assert line.startswith(f"error: {path}{problem}")
    error_document(result.stdout, line, 2)


@pytest.mark.slow
def test_mer_refuses_a_clip_both_labelled_and_pseudo_labelled_with_exit_2(setup, round_one, tmp_path):
    labelled = next(r["name"] for r in setup.rows if r["name"] not in setup.pool and r["split"] == "train")
    both = tmp_path / "both.csv"
    both.write_text(round_one.out.read_text() + f"{labelled},happy,0.9,{rows_of(round_one.out)[0]['teacher']},1\n")
    result = run_mer("-w", str(setup.space.root), *SETTINGS, "train", "--labels", str(setup.labels),
                     "--pseudo-labels", str(both), "--name", "both", cwd=tmp_path)
    assert result.returncode == 2
    assert "a clip is either labelled or pseudo-labelled, not both" in one_error_line(result)


@pytest.mark.slow
def test_mer_pseudolabel_then_train_then_eval(setup, teacher, tmp_path):
    out = tmp_path / "round1.csv"
    labelled = run_mer("-w", str(setup.space.root), *SETTINGS, "pseudolabel", str(setup.clips), "--checkpoint",
                       "teacher", "--out", str(out), "--json", cwd=tmp_path)
    assert labelled.returncode == 0, labelled.stderr
    summary = json.loads(labelled.stdout)
    assert summary["kept"] == len(rows_of(out)) and summary["round"] == 1
    assert {c: summary["classes"][c]["kept"] for c in CLASSES} == \
        {c: sum(r["discrete"] == c for r in rows_of(out)) for c in CLASSES}
    trained = run_mer("-w", str(setup.space.root), *SETTINGS, "train", "--labels", str(setup.labels),
                      "--pseudo-labels", str(out), "--pseudo-weight", "0.5", "--name", "cli-student", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    assert "pseudo-labels" in trained.stderr and "optimistic" in trained.stderr
    evaluated = run_mer("-w", str(setup.space.root), *SETTINGS, "eval", "--checkpoint", "cli-student", cwd=tmp_path,
                        env=mer_environment())
    assert evaluated.returncode == 0, evaluated.stderr
    assert "validation figures are optimistic" in " ".join(evaluated.stderr.split())

"""The train stage on small synthetic feature sets written with the feature store: an utterance-level
audio set that some clips lack, and a frame-level visual set with masks and varying lengths. The
classes are separable, so a working trainer reaches a high validation WAF in a few CPU seconds."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mercli.cli import cli
from mercli.errors import ConfigError, DataError
from mercli.model import FusionNetwork, InputSpec
from mercli.runs import load_model
from mercli.settings import TrainSettings
from mercli.splits import plan_splits
import mercli.resources as resources
from mercli.resources import native_bfloat16
from mercli.train import predict_logits, train, train_fold, training_precision
from mercli import trainset
from mercli.trainset import TableTensors, build_table, collate, feature_statistics
from mercli.workspace import Workspace
from support.mer_process import error_document
from support.training import CLASSES, FAST, config, write_workspace


@pytest.fixture
def workspace(tmp_path):
    labels = write_workspace(tmp_path)
    return Workspace(tmp_path), labels


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One run with the default loss (bdcl), shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("trained")
    labels = write_workspace(root)
    return Workspace(root), labels, train(config(), Workspace(root), labels, name="syn")


def test_training_reaches_a_high_waf_on_separable_data(trained):
    _space, _labels, result = trained
    assert result.best["waf"] > 0.9
    assert result.seconds_per_epoch < 5  # about 0.1 s on an idle 2-core machine


def test_same_seed_same_run(trained):
    space, labels, first = trained
    second = train(config(), space, labels, name="again")
    assert first.folds[0].history[-1]["train_loss"] == second.folds[0].history[-1]["train_loss"]
    assert all(torch.equal(first.folds[0].state[k], second.folds[0].state[k]) for k in first.folds[0].state)


# --- what the run writes ----------------------------------------------------------------------


def test_run_folder_holds_weights_that_load_back_to_the_same_logits(trained):
    space, labels, result = trained
    run = space.root / "runs" / "syn"
    assert {p.name for p in run.iterdir()} == {"model.safetensors", "config.json", "history.json", "metrics.json",
                                               "curves.png"}
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recorded = json.loads((run / "config.json").read_text())
    assert recorded["classes"] == CLASSES and recorded["seed"] == 0 and recorded["loss"]["name"] == "bdcl"
    assert recorded["loss"]["settings"]["temperature"] == 0.1
    assert sorted(recorded["manifests"]) == sorted(spec.name for spec in result.inputs)
    assert {m["encoder"] for m in recorded["manifests"].values()} == {"syn-audio", "syn-visual"}
    history = json.loads((run / "history.json").read_text())["folds"][0]["epochs"]
    assert len(history) == FAST["train.epochs"] and {"train_loss", "val_waf", "val_macro_f1"} <= set(history[0])

    model, _ = load_model(run)
    table = build_table(config(), space.features, labels)
    indices = list(range(10))
    fresh = FusionNetwork(table.inputs, len(CLASSES), config().train)
    fresh.load_state_dict(result.folds[0].state)
    expected = predict_logits(fresh, table, indices, torch.device("cpu"), 4)
    assert torch.allclose(predict_logits(model, table, indices, torch.device("cpu"), 4), expected)


def test_clips_with_labels_but_no_features_are_listed_not_fatal(workspace):
    space, labels = workspace
    with labels.open("a", encoding="utf-8") as handle:
        handle.write("ghost1,happy,spk0,train\nghost2,sad,spk1,train\nunlabelled,,spk1,train\n")
    result = train(config(**{"data.classes": [*CLASSES, "sad"], "train.epochs": 1}), space, labels, name="syn")
    assert result.excluded == ["ghost1", "ghost2"]
    assert json.loads((result.run / "config.json").read_text())["excluded"] == ["ghost1", "ghost2"]


def test_absent_modalities_are_masked_and_padding_changes_nothing(workspace):
    space, labels = workspace
    table = build_table(config(), space.features, labels)
    audio = next(s.name for s in table.sets if s.manifest.encoder == "syn-audio")
    assert table.values[audio][0] is None  # clip000 has an absent record
    model = FusionNetwork(table.inputs, len(CLASSES), TrainSettings(width=16, heads=2, layers=1)).eval()
    batch = collate(table, [0, 1, 2])
    assert not batch.masks[audio][0] and batch.masks[audio][1]
    with torch.no_grad():
        alone = model(collate(table, [0]).values, collate(table, [0]).masks).logits
        together = model(batch.values, batch.masks).logits  # clip 0 padded to the longest clip of the batch
    assert torch.isfinite(together).all()
    assert torch.allclose(alone[0], together[0], atol=1e-5)


# --- validation never touches test clips ------------------------------------------------------


def test_selection_uses_val_clips_only(trained):
    _space, labels, result = trained
    rows = [line.split(",") for line in labels.read_text().splitlines()[1:]]
    val = {r[0] for r in rows if r[3] == "val"}
    test = {r[0] for r in rows if r[3] == "test"}
    metrics = json.loads((result.run / "metrics.json").read_text())
    assert set(metrics["folds"][0]["val_clips"]) == val and not val & test
    assert metrics["folds"][0]["train_clips"] == len(rows) - len(val) - len(test)


def test_group_holdout_keeps_every_speaker_on_one_side(workspace):
    space, labels = workspace
    table = build_table(config(), space.features, labels)
    (split,) = plan_splits(table, seed=3, group_column="speaker", val_fraction=0.3)
    train_speakers = {table.speakers[i] for i in split.train}
    val_speakers = {table.speakers[i] for i in split.val}
    assert val_speakers and train_speakers and not train_speakers & val_speakers
    assert not {table.splits[i] for i in (*split.train, *split.val)} & {"test"}
    result = train(config(), space, labels, name="grouped", group_column="speaker")
    assert result.folds[0].val_clips and result.best["waf"] > 0.8


@pytest.mark.parametrize("group_column", [None, "speaker"])
def test_k_folds_cover_the_non_test_clips_once(workspace, group_column):
    space, labels = workspace
    table = build_table(config(), space.features, labels)
    splits = plan_splits(table, seed=0, folds=3, group_column=group_column)
    validated = np.concatenate([s.val for s in splits])
    assert sorted(validated) == [i for i, split in enumerate(table.splits) if split != "test"]
    for split in splits:
        assert not set(split.train) & set(split.val)
        if group_column:
            assert not {table.speakers[i] for i in split.train} & {table.speakers[i] for i in split.val}
        else:  # stratified: every class in every fold
            assert len(np.unique(table.labels[split.val])) == len(CLASSES)


def test_k_fold_run_writes_one_model_per_fold(workspace):
    space, labels = workspace
    result = train(config(**{"train.epochs": 3}), space, labels, name="cv", folds=2, group_column="speaker")
    assert [f.weights for f in result.folds] == ["model-fold1.safetensors", "model-fold2.safetensors"]
    assert all((result.run / f.weights).exists() for f in result.folds)
    model, _ = load_model(result.run, fold=2)
    assert isinstance(model, FusionNetwork)


# --- priors -----------------------------------------------------------------------------------


def test_priors_flag_switches_prior_injection(tmp_path):
    labels = write_workspace(tmp_path, clips_per_class=6, prior=True)
    fast = {"train.epochs": 1}
    with_priors = train(config(**fast), Workspace(tmp_path), labels, name="on")
    without = train(config(**fast, **{"train.priors": False}), Workspace(tmp_path), labels, name="off")
    assert with_priors.priors_note.startswith("priors injected: prior-visual-")
    assert "switched off" in without.priors_note
    assert json.loads((with_priors.run / "config.json").read_text())["priors"]
    assert json.loads((without.run / "config.json").read_text())["priors"] == []
    assert any(k.startswith("prior_attention.") for k in with_priors.folds[0].state)
    assert not any(k.startswith("prior_") for k in without.folds[0].state)


def test_without_prior_sets_the_run_says_priors_are_off(workspace):
    space, labels = workspace
    assert "no prior feature sets" in train(config(**{"train.epochs": 1}), space, labels).priors_note


# --- bad input --------------------------------------------------------------------------------


def test_labels_outside_the_classes_are_refused(workspace):
    space, labels = workspace
    with labels.open("a", encoding="utf-8") as handle:
        handle.write("clip000x,bored,spk0,train\n")
    with pytest.raises(DataError, match=r"labels outside the classes .*bored \(1\)"):
        train(config(), space, labels)


def test_a_single_class_is_refused(workspace):
    space, labels = workspace
    lines = labels.read_text().splitlines()
    labels.write_text("\n".join([lines[0], *(l for l in lines[1:] if ",angry," in l)]) + "\n")
    with pytest.raises(DataError, match="one class only"):
        train(config(), space, labels)


def test_labels_that_match_no_features_are_refused(workspace):
    space, labels = workspace
    labels.write_text("name,discrete,split\nother1,happy,train\nother2,angry,val\n")
    with pytest.raises(DataError, match="none of its 2 labelled clips has features"):
        train(config(), space, labels)


def test_nan_features_are_refused_naming_the_file(workspace):
    space, labels = workspace
    audio = next(p for p in space.features.iterdir() if p.name.startswith("syn-audio"))
    np.save(audio / "clip001.npy", np.full(8, np.nan, dtype=np.float32))
    with pytest.raises(DataError, match=r"clip001\.npy: features hold NaN"):
        train(config(), space, labels)


def test_feature_sets_must_match_an_earlier_run_of_the_same_name(workspace):
    space, labels = workspace
    train(config(**{"train.epochs": 1}), space, labels, name="r")
    path = space.root / "runs" / "r" / "config.json"
    recorded = json.loads(path.read_text())
    audio = next(n for n in recorded["manifests"] if n.startswith("syn-audio"))
    recorded["manifests"][audio]["dim"] = 99
    path.write_text(json.dumps(recorded))
    with pytest.raises(DataError, match=rf"{audio} is utterance-level of dim 8, the run expects utterance-level of dim 99"):
        train(config(**{"train.epochs": 1}), space, labels, name="r")
    visual = next(n for n in recorded["manifests"] if n.startswith("syn-visual"))
    with pytest.raises(DataError, match="was trained on feature sets"):
        train(config(**{"train.epochs": 1, "train.features": [visual]}), space, labels, name="r")


def test_unknown_feature_set_and_missing_validation_are_refused(workspace):
    space, labels = workspace
    with pytest.raises(DataError, match="no feature set named nope"):
        train(config(**{"train.features": ["nope"]}), space, labels)
    text = labels.read_text().replace(",val\n", ",train\n")
    labels.write_text(text)
    with pytest.raises(DataError, match="no validation clips"):
        train(config(), space, labels)


@pytest.mark.parametrize("setting, message", [({"train.heads": 3}, "must divide width"),
                                              ({"train.epochs": 0}, "'epochs' must be an integer >= 1, got 0"),
                                              ({"train.modality_dropout": 1.0},
                                               r"'modality_dropout' must be a finite number in \[0, 1\), got 1.0")])
def test_bad_train_settings_are_refused(workspace, setting, message):
    space, labels = workspace
    with pytest.raises(ConfigError, match=message):
        train(config(**setting), space, labels)


# --- command line -----------------------------------------------------------------------------


def test_mer_train_json(workspace):
    space, labels = workspace
    args = ["-w", str(space.root), *(a for k, v in {**FAST, "data.classes": CLASSES}.items()
                                     for a in ("-s", f"{k}={json.dumps(v)}")),
            "train", "--labels", str(labels), "--loss", "ce", "--name", "cli", "--epochs", "3", "--json"]
    outcome = CliRunner().invoke(cli, args)
    assert outcome.exit_code == 0, outcome.output
    document = json.loads(outcome.stdout)
    assert set(document) == {"run", "best", "folds", "excluded"} and set(document["best"]) == {"epoch", "waf", "macro_f1"}
    assert document["excluded"] == []
    assert document["run"] == str(space.root / "runs" / "cli")
    assert json.loads((space.root / "runs" / "cli" / "config.json").read_text())["loss"]["name"] == "ce"


def test_mer_train_bad_input_exits_2_with_one_line(workspace):
    space, labels = workspace
    outcome = CliRunner().invoke(cli, ["-w", str(space.root), "-s", 'data.classes=["neutral", "angry"]',
                                       "train", "--labels", str(labels), "--json"])
    assert outcome.exit_code == 2
    assert "labels outside the classes" in outcome.stderr and "happy (24)" in outcome.stderr
    assert len(outcome.stderr.strip().splitlines()) == 1
    error_document(outcome.stdout, outcome.stderr.strip(), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (mixed precision runs on CUDA only)")
def test_mixed_precision_training_on_cuda(workspace):
    space, labels = workspace
    result = train(config(**{"train.device": "cuda"}), space, labels, name="gpu")
    assert result.device.startswith("cuda") and result.best["waf"] > 0.9
    assert json.loads((result.run / "config.json").read_text())["precision"] == "float16"


def test_native_bfloat16_is_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n")
    assert native_bfloat16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert not native_bfloat16(cpuinfo)
    cpuinfo.write_text("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n")  # Arm
    assert native_bfloat16(cpuinfo)
    assert not native_bfloat16(tmp_path / "absent")


# Training steps at MER2024 input sizes; prints the page faults of 40 later steps. The environment
# starts glibc from its worst case, a fixed 128 KiB threshold that maps and hands back every large
# tensor, so the count does not hang on the adaptive threshold (a fresh machine faulted in 3 of 40
# steps with glibc's defaults, this one in 18); the setting has to override it.
STEPS_WITH_FAULTS = """
import resource, sys, torch
from mercli.resources import keep_freed_memory
torch.set_num_threads(1)
kept = sys.argv[1] == "kept" and keep_freed_memory()
net = torch.nn.Sequential(torch.nn.Linear(5120, 128), torch.nn.GELU(), torch.nn.Linear(128, 6))
table = torch.randn(1000, 5120)
def step():
    rows = torch.randint(0, 1000, (128,))
    net((table.index_select(0, rows) - 0.5) / 2.0).sum().backward()
for number in range(50):
    if number == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step()
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
HANDING_BACK = {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="the allocator's settings are glibc's")
def test_a_training_process_keeps_freed_memory_for_its_next_steps():
    faults = {}
    for mode in ("plain", "kept"):
        printed = subprocess.run([sys.executable, "-c", STEPS_WITH_FAULTS, mode], capture_output=True, text=True,
                                 check=True, env={**os.environ, **HANDING_BACK}).stdout.split()
        assert printed[0] == str(mode == "kept")
        faults[mode] = int(printed[1])
    one_batch = 128 * 5120 * 4 // resource.getpagesize()
    assert faults["plain"] >= 40 * one_batch  # every step faults its batch in afresh
    assert faults["kept"] <= 4 * one_batch, faults  # observed 0-3 batches' worth as the heap settles


@pytest.mark.parametrize("native, on_cpu", [(True, torch.bfloat16), (False, torch.float32)])
def test_automatic_precision_follows_the_device(monkeypatch, native, on_cpu):
    monkeypatch.setattr(resources, "native_bfloat16", lambda: native)
    assert training_precision("auto", torch.device("cpu")) == on_cpu
    assert training_precision("auto", torch.device("cuda")) == torch.float16
    assert training_precision("auto", torch.device("mps")) == torch.float32
    assert training_precision("float32", torch.device("cuda")) == torch.float32
    assert training_precision("bfloat16", torch.device("cpu")) == torch.bfloat16


def test_float16_on_a_cpu_is_refused_before_training(workspace):
    space, labels = workspace
    outcome = CliRunner().invoke(cli, ["-w", str(space.root), "-s", "train.device=cpu", "-s", "train.precision=float16",
                                       "-s", f"data.classes={json.dumps(CLASSES)}", "train", "--labels", str(labels)])
    assert outcome.exit_code == 2
    assert outcome.stderr.strip() == ("error: train.precision = float16 needs a CUDA device, not cpu; "
                                      "on a CPU use bfloat16")
    assert not (space.root / "runs").exists()


def test_an_unknown_precision_is_refused_naming_the_choices(workspace):
    space, labels = workspace
    outcome = CliRunner().invoke(cli, ["-w", str(space.root), "-s", "train.precision=half", "train", "--labels",
                                       str(labels)])
    assert outcome.exit_code == 2 and len(outcome.stderr.strip().splitlines()) == 1
    assert "train.precision" in outcome.stderr and "bfloat16" in outcome.stderr and "half" in outcome.stderr


def test_bfloat16_training_computes_in_bfloat16_and_says_so(workspace):
    space, labels = workspace
    runs = {name: train(config(**{"train.epochs": 2, "train.deterministic": True, "train.precision": precision}),
                        space, labels, name=name)
            for name, precision in [("f32", "float32"), ("bf16", "bfloat16"), ("bf16-again", "bfloat16")]}
    recorded = {name: json.loads((run.run / "config.json").read_text())["precision"] for name, run in runs.items()}
    assert recorded == {"f32": "float32", "bf16": "bfloat16", "bf16-again": "bfloat16"}
    loss = {name: run.folds[0].history[-1]["train_loss"] for name, run in runs.items()}
    assert loss["bf16"] == loss["bf16-again"]  # reproducible
    assert loss["bf16"] != loss["f32"]  # the products were rounded to bfloat16
    assert abs(loss["bf16"] - loss["f32"]) < 0.05 * loss["f32"]  # and the training is the same otherwise
    assert all(t.dtype == torch.float32 for t in runs["bf16"].folds[0].state.values() if t.is_floating_point())


def test_deterministic_mode_runs_and_restores_torch_global_mode(workspace):
    space, labels = workspace
    before = torch.are_deterministic_algorithms_enabled()
    first = train(config(**{"train.epochs": 2, "train.deterministic": True}), space, labels, name="d1")
    second = train(config(**{"train.epochs": 2, "train.deterministic": True}), space, labels, name="d2")
    assert torch.are_deterministic_algorithms_enabled() == before
    assert first.folds[0].history[-1]["train_loss"] == second.folds[0].history[-1]["train_loss"]
    assert json.loads((first.run / "config.json").read_text())["train"]["deterministic"] is True


def test_retraining_a_run_with_fewer_folds_removes_the_old_fold_weights(workspace):
    space, labels = workspace
    train(config(**{"train.epochs": 1}), space, labels, name="r", folds=2)
    train(config(**{"train.epochs": 1}), space, labels, name="r")
    assert sorted(p.name for p in (space.root / "runs" / "r").glob("*.safetensors")) == ["model.safetensors"]


def test_prior_injection_starts_closed_and_ignores_clips_without_a_prior():
    inputs = [InputSpec("a", "audio", "utterance", 3, False), InputSpec("prior-a", "audio", "utterance", 2, True)]
    model = FusionNetwork(inputs, 2, TrainSettings(width=8, heads=2, layers=1, modality_dropout=0.0)).eval()
    values = {"a": torch.randn(2, 3), "prior-a": torch.randn(2, 2)}
    masks = {"a": torch.ones(2, dtype=torch.bool), "prior-a": torch.tensor([True, False])}
    with torch.no_grad():
        closed = model(values, masks).logits
        model.prior_attention["a"].gate.fill_(1.0)
        opened = model(values, masks).logits
    assert torch.isfinite(opened).all()
    assert not torch.allclose(closed[0], opened[0])  # the clip with a prior now hears it
    assert torch.equal(closed[1], opened[1])  # the clip without one is untouched


def test_features_are_standardised_with_training_statistics_only(workspace):
    space, labels = workspace
    table = build_table(config(), space.features, labels)
    audio = next(s.name for s in table.sets if s.manifest.encoder == "syn-audio")
    train_part = [i for i, split in enumerate(table.splits) if split == "train"]
    statistics = feature_statistics(table, train_part)
    present = np.stack([table.values[audio][i] for i in train_part if table.values[audio][i] is not None])
    assert np.allclose(statistics[audio][0].numpy(), present.mean(axis=0), atol=1e-5)
    assert np.allclose(statistics[audio][1].numpy(), present.std(axis=0), atol=1e-5)
    result = train(config(**{"train.epochs": 1}), space, labels, name="std")
    assert torch.allclose(result.folds[0].state[f"projections.{audio}.feature_mean"], statistics[audio][0])


def test_feature_statistics_do_not_depend_on_the_chunk_size(workspace, monkeypatch):
    space, labels = workspace
    table = build_table(config(), space.features, labels)
    indices = list(range(len(table.clip_ids)))
    whole = feature_statistics(table, indices)
    monkeypatch.setattr(trainset, "STATISTICS_CHUNK", 3)
    for name, (mean, scale) in feature_statistics(table, indices).items():
        assert torch.equal(mean, whole[name][0])
        assert torch.allclose(scale, whole[name][1], rtol=1e-6)


def test_a_diverging_loss_stops_the_run_with_one_line(workspace):
    class Diverging:
        name, uses_embeddings = "diverging", False

        def build(self, class_counts, embedding_dim):
            return NanLoss()

    class NanLoss(torch.nn.Module):
        def forward(self, logits, embeddings, labels):
            return logits.sum() * float("nan")

    space, labels = workspace
    table = build_table(config(), space.features, labels)
    (split,) = plan_splits(table, seed=0)
    with pytest.raises(DataError, match=r"fold 1, epoch 1: the training loss is nan; lower train.lr"):
        train_fold(TableTensors(table, torch.device("cpu")), split, config().train, Diverging())


def test_mer_train_shows_inputs_and_folds_on_stderr(workspace):
    space, labels = workspace
    args = ["-w", str(space.root), *(a for k, v in {**FAST, "data.classes": CLASSES}.items()
                                     for a in ("-s", f"{k}={json.dumps(v)}")),
            "train", "--labels", str(labels), "--loss", "ce", "--name", "shown", "--epochs", "2"]
    outcome = CliRunner(env={"COLUMNS": "200"}).invoke(cli, args)
    assert outcome.exit_code == 0, outcome.output
    assert outcome.stdout == ""
    assert "mer train:" in outcome.stderr and "feature set" in outcome.stderr
    assert "priors" in outcome.stderr and "best epoch" in outcome.stderr


def test_a_prior_of_no_one_modality_is_offered_to_every_stream():
    inputs = [InputSpec("a", "audio", "utterance", 3, False), InputSpec("v", "visual", "utterance", 4, False),
              InputSpec("prior-overall", "unknown", "utterance", 2, True)]
    model = FusionNetwork(inputs, 2, TrainSettings(width=8, heads=2, layers=1, modality_dropout=0.0)).eval()
    assert set(model.prior_attention) == {"a", "v"}
    values = {"a": torch.randn(1, 3), "v": torch.randn(1, 4), "prior-overall": torch.randn(1, 2)}
    masks = {name: torch.ones(1, dtype=torch.bool) for name in values}
    with torch.no_grad():
        model.prior_attention["a"].gate.fill_(1.0)
        model.prior_attention["v"].gate.fill_(1.0)
        before = model(values, masks).logits
        changed = model({**values, "prior-overall": values["prior-overall"] + 1.0}, masks).logits
    assert not torch.allclose(before, changed)

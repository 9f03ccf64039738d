"""``mer predict`` of runs trained on one kind of prior only, end to end on the CREMA-D sample with
the local reasoner: a run on the numeric priors alone (``prior-scores-*``, picked by name with
``--features``) and a run on the priors of prompt-version-1 traces (embedded text, no numeric sets).
For a clip of the workspace, predict (features and priors made in memory) gives the probabilities
that ``mer eval`` gives from the stored sets; it builds exactly the sets the run was trained on, and a
run whose priors cannot be made again is refused with one line."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import mercli
from mercli import api
from mercli.cli import cli
from mercli.features import list_feature_sets
from mercli.priors import is_scores_prior
from support.mer_process import one_error_line, run_mer
from support.training import FAST

pytestmark = pytest.mark.slow  # real encoders, the local reasoner and trainings

CLASSES = ["neutral", "angry", "happy", "sad", "fear", "disgust"]
SETTINGS = {**FAST, "data.classes": CLASSES}
ENCODERS = ["egemaps", "fer-expression"]
CLIP = "1001_DFA_ANG_XX.flv"
VERSIONS = {"numeric": "mer-trace-v2", "version-1": "mer-trace-v1"}


def prior_sets(workspace: Path, numeric: bool) -> list[str]:
    return sorted(s.name for s in list_feature_sets(workspace / "features")
                  if s.manifest.encoder.startswith("prior-") and is_scores_prior(s.manifest) == numeric)


@pytest.fixture(scope="module")
def runs(shared_data: Path, tmp_path_factory) -> dict[str, Path]:
    """Two workspaces over the same clips and features, each with a 2-fold run: ``numeric`` on the
    modality sets and the prior-scores sets of version-2 traces, ``version-1`` on all the sets of a
    workspace whose traces answered prompt version 1."""
    root = tmp_path_factory.mktemp("predict-priors")
    clips = root / "clips"
    shutil.copytree(shared_data / "crema-d", clips)
    labels = clips / "labels.csv"
    found = {}
    for kind, version in VERSIONS.items():
        workspace = root / kind
        if found:  # the same features: extracted once
            shutil.copytree(next(iter(found.values())) / "features", workspace / "features",
                            ignore=shutil.ignore_patterns("prior-*"))
        api.extract(clips, labels=labels, encoders=ENCODERS, workspace=workspace, settings=SETTINGS)
        api.reason(clips, model="local", labels=labels, workspace=workspace,
                   settings={**SETTINGS, "reason.prompt_version": version})
        modality_sets = [s.name for s in list_feature_sets(workspace / "features")
                         if not s.manifest.encoder.startswith("prior-")]
        features = modality_sets + prior_sets(workspace, numeric=True) if kind == "numeric" else None
        api.train(labels, features=features, folds=2, name=kind, workspace=workspace, settings=SETTINGS)
        found[kind] = workspace
    return {kind: workspace / "runs" / kind for kind, workspace in found.items()}


@pytest.mark.parametrize("kind", VERSIONS)
def test_predict_gives_the_probabilities_eval_gives_from_the_stored_sets(runs, shared_data, kind):
    run = runs[kind]
    workspace = run.parent.parent
    evaluation = api.evaluate(str(run), labels=shared_data / "crema-d" / "labels.csv", split="all",
                              allow_train_clips=True, out=workspace / "eval-out", workspace=workspace)
    stored = dict(zip(evaluation.clip_ids, evaluation.probabilities))[Path(CLIP).stem]
    printed = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["-w", str(workspace), "predict", str(shared_data / "crema-d" / CLIP), "--checkpoint", kind, "--json"])
    assert printed.exit_code == 0, printed.output
    (line,) = [json.loads(text) for text in printed.stdout.splitlines()]
    assert list(line["probs"]) == CLASSES
    assert list(line["probs"].values()) == pytest.approx(list(stored), abs=2e-5)


def test_each_run_makes_exactly_the_prior_sets_it_was_trained_on(runs):
    numeric_workspace, first_workspace = (runs[k].parent.parent for k in VERSIONS)
    assert len(prior_sets(numeric_workspace, numeric=True)) == 4 and len(prior_sets(first_workspace, False)) == 4
    assert prior_sets(first_workspace, numeric=True) == []  # version-1 traces have no class scores
    # No text features were extracted: the textual prior has no stream to enter, and is left out.
    expected = {"numeric": [n for n in prior_sets(numeric_workspace, numeric=True) if "-textual-" not in n],
                "version-1": [n for n in prior_sets(first_workspace, numeric=False) if "-textual-" not in n]}
    for kind, run in runs.items():
        trained_on = json.loads((run / "config.json").read_text())
        assert sorted(trained_on["priors"]) == expected[kind] and len(expected[kind]) == 3
        modality_sets = [s["name"] for s in trained_on["inputs"] if not s["prior"]]
        predictor = mercli.load_run(run)._predictor_once()
        assert sorted(predictor.manifests) == sorted(modality_sets + expected[kind])
        assert sorted(m.set_name for m in predictor.priors.manifests.values()) == expected[kind]
        assert (predictor.priors.embedder is None) == (kind == "numeric")  # no text model where none is used


@pytest.mark.parametrize("kind", VERSIONS)
def test_a_run_whose_priors_cannot_be_made_again_is_refused_with_one_line(runs, shared_data, tmp_path, kind):
    """The run's traces answered a prompt version the installed reasoner no longer writes."""
    copy = runs[kind].parent / f"{kind}-unmakeable"
    shutil.copytree(runs[kind], copy)
    config = json.loads((copy / "config.json").read_text())
    for manifest in config["manifests"].values():
        if "source" in manifest["settings"]:
            manifest["settings"]["source"]["prompt_version"] = "mer-trace-v9"
    (copy / "config.json").write_text(json.dumps(config))
    result = run_mer("-w", str(copy.parent.parent), "predict", str(shared_data / "crema-d" / CLIP),
                     "--checkpoint", copy.name, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    line = one_error_line(result)
    assert line.startswith(f"error: {copy}: its priors come from local mer-trace-v9"), line


def test_predict_whose_reader_closes_after_the_first_line_ends_quietly_with_141(runs, shared_data, tmp_path):
    """``mer predict clips/ --json | head -1``: one JSON line per clip, the reader goes after the first."""
    from support.mer_process import mer_environment

    workspace = runs["numeric"].parent.parent
    process = subprocess.Popen([sys.executable, "-m", "mercli", "-w", str(workspace), "predict",
                                str(shared_data / "crema-d"), "--checkpoint", "numeric", "--json"], cwd=tmp_path,
                               env=mer_environment(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = json.loads(process.stdout.readline())
    process.stdout.close()
    stderr = process.stderr.read()
    assert process.wait(timeout=300) == 141, stderr
    assert list(first["probs"]) == CLASSES
    assert "error" not in stderr and "Traceback" not in stderr, stderr

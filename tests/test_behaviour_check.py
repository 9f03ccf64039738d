"""benchmarks/behaviour.py's comparison on two tiny synthetic workspaces: it must see every kind of
change that matters, name the file, and let through only what it says it ignores."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "behaviour.py"


@pytest.fixture(scope="module")
def behaviour():
    spec = importlib.util.spec_from_file_location("behaviour_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def write_json(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, indent=2), encoding="utf-8")


def workspace(root: Path) -> Path:
    """A workspace with one file of each compared kind."""
    features = root / "features" / "egemaps-1e40727d"
    features.mkdir(parents=True)
    np.save(features / "clip.npy", np.arange(4, dtype=np.float32))
    write_json(features / "manifest.json", {"encoder": "egemaps", "dim": 4, "created": "2026-12-03T05:20:34+00:00"})
    write_json(root / "transcripts" / "clip.json", {"text": "Don't forget a jacket!", "source": "whisper"})
    write_json(root / "reasoning" / "local" / "clip.trace.json",
               {"overall": {"emotion": "angry", "confidence": 0.337},
                "provenance": {"reasoner": "local", "created": "2026-12-03T05:21:10+00:00"}})
    run = root / "runs" / "r"
    write_json(run / "metrics.json", {"best": {"epoch": 2, "waf": 0.5}, "folds": [{"fold": 1, "waf": 0.5}]})
    write_json(run / "history.json", {"folds": [{"epochs": [{"epoch": 1, "train_loss": 1.25, "seconds": 0.38}]}]})
    write_json(run / "eval" / "metrics.json", {"waf": 0.5, "accuracy": 0.5})
    (run / "eval" / "predictions.csv").write_text("clip,label,p_angry\nclip,angry,0.637771\n", encoding="utf-8")
    save_file({"head.weight": np.ones((2, 3), dtype=np.float32)}, str(run / "model-fold1.safetensors"))
    (run / "curves.png").write_bytes(b"\x89PNG one drawing")
    return root


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    before = workspace(tmp_path / "before")
    return before, Path(shutil.copytree(before, tmp_path / "after"))


def check(behaviour, pair, capsys, *options: str) -> tuple[int, str]:
    status = behaviour.main(["--compare", *map(str, pair), *options])
    return status, capsys.readouterr().out


def test_identical_workspaces_pass(behaviour, pair, capsys):
    status, out = check(behaviour, pair, capsys)
    assert status == 0, out
    assert "differs" not in out and "only " not in out.split("ignored")[1]


@pytest.mark.parametrize("change, named", [
    (lambda ws: np.save(ws / "features/egemaps-1e40727d/clip.npy", np.array([0, 1, 2, 3.0000002], dtype=np.float32)),
     "features/egemaps-1e40727d/clip.npy"),
    (lambda ws: write_json(ws / "reasoning/local/clip.trace.json",
                           {"overall": {"emotion": "angry", "confidence": 0.338},
                            "provenance": {"reasoner": "local", "created": "2026-12-03T05:21:10+00:00"}}),
     "reasoning/local/clip.trace.json: .overall.confidence: 0.337 != 0.338"),
    (lambda ws: write_json(ws / "transcripts/clip.json", {"text": "Don't forget a jacket.", "source": "whisper"}),
     "transcripts/clip.json"),
    (lambda ws: write_json(ws / "runs/r/metrics.json", {"best": {"epoch": 2, "waf": 0.50001},
                                                         "folds": [{"fold": 1, "waf": 0.5}]}),
     "runs/r/metrics.json: .best.waf"),
    (lambda ws: write_json(ws / "runs/r/eval/metrics.json", {"waf": 0.5, "accuracy": 0.75}),
     "runs/r/eval/metrics.json: .accuracy"),
    (lambda ws: (ws / "runs/r/eval/predictions.csv").write_text("clip,label,p_angry\nclip,angry,0.637791\n"),
     "runs/r/eval/predictions.csv"),
    (lambda ws: save_file({"head.weight": np.full((2, 3), 1.001, dtype=np.float32)}, str(ws / "runs/r/model-fold1.safetensors")),
     "runs/r/model-fold1.safetensors: head.weight"),
    (lambda ws: (ws / "features/egemaps-1e40727d/extra.npy").write_bytes(b"\x93NUMPY"),
     "only after: features/egemaps-1e40727d/extra.npy"),
])
def test_a_change_fails_and_names_the_file(behaviour, pair, capsys, change, named):
    change(pair[1])
    status, out = check(behaviour, pair, capsys)
    assert status == 1, out
    assert named in out


def test_a_file_missing_after_is_named(behaviour, pair, capsys):
    (pair[1] / "runs/r/curves.png").unlink()
    status, out = check(behaviour, pair, capsys)
    assert status == 1 and "only before: runs/r/curves.png" in out


def test_only_the_stated_volatile_fields_and_plots_are_ignored(behaviour, pair, capsys):
    after = pair[1]
    for path, key in [("features/egemaps-1e40727d/manifest.json", None), ("reasoning/local/clip.trace.json", "provenance")]:
        value = json.loads((after / path).read_text())
        (value[key] if key else value)["created"] = "2027-01-01T00:00:00+00:00"
        write_json(after / path, value)
    write_json(after / "runs/r/history.json", {"folds": [{"epochs": [{"epoch": 1, "train_loss": 1.25, "seconds": 9.5}]}]})
    (after / "runs/r/curves.png").write_bytes(b"\x89PNG another drawing")
    status, out = check(behaviour, pair, capsys)
    assert status == 0, out
    rows = {line[:22].strip(): line[22:].split() for line in out.splitlines()[1:13]}
    # in both, compared, identical, equivalent (equal once the ignored keys are dropped)
    assert rows["feature manifests"][:4] == rows["traces"][:4] == rows["run history"][:4] == ["1", "1", "0", "1"]
    assert rows["plots (not compared)"][:2] == ["1", "0"]


def test_numbers_within_the_tolerance_pass_and_are_counted_apart(behaviour, pair, capsys):
    write_json(pair[1] / "runs/r/metrics.json", {"best": {"epoch": 2, "waf": 0.5000004}, "folds": [{"fold": 1, "waf": 0.5}]})
    status, out = check(behaviour, pair, capsys)
    assert status == 0, out
    row = next(line for line in out.splitlines() if line.startswith("run metrics")).split()
    assert row[2:6] == ["1", "1", "0", "1"] and float(row[-1]) == pytest.approx(4e-7, rel=0.01)


def test_a_renamed_key_is_a_difference_even_in_a_numeric_kind(behaviour, pair, capsys):
    write_json(pair[1] / "runs/r/eval/metrics.json", {"waf": 0.5, "acc": 0.5})
    status, out = check(behaviour, pair, capsys)
    assert status == 1 and "runs/r/eval/metrics.json: .: keys ['acc', 'accuracy'] in one only" in out


def test_clips_are_spread_over_the_folder(behaviour):
    items = [Path(f"{index:02d}") for index in range(12)]
    assert [p.name for p in behaviour.spread(items, 6)] == ["00", "02", "04", "06", "08", "10"]
    assert behaviour.spread(items[:3], 6) == items[:3]


def test_weights_have_their_own_tolerance_and_only_weights(behaviour, pair, capsys):
    save_file({"head.weight": np.full((2, 3), 1.001, dtype=np.float32)}, str(pair[1] / "runs/r/model-fold1.safetensors"))
    assert check(behaviour, pair, capsys, "--weights-tolerance", "2e-3")[0] == 0
    write_json(pair[1] / "runs/r/eval/metrics.json", {"waf": 0.5, "accuracy": 0.5001})
    status, out = check(behaviour, pair, capsys, "--weights-tolerance", "2e-3")
    assert status == 1 and "runs/r/eval/metrics.json: .accuracy" in out

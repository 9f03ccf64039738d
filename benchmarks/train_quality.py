"""Quality of the losses on real speech: ce vs bcl vs bdcl, speaker-independent, over several seeds,
with a linear SVM on the same features and the same clips as the reference.

Data: ../shared/data/emodb-dev (EmoDB, 6 speakers, 7 classes, imbalanced), eGeMAPS features (the
default audio functionals). For each seed, two speakers are the test set (never used for selection),
and ``mer train --group-column speaker`` holds out further speakers for early stopping; the scores
are on the test speakers. Prints mean ± std of WAF, macro-F1 and the F1 of the two smallest classes.

    .venv/bin/python benchmarks/train_quality.py [--seeds 5] [--workspace DIR] [--losses ce,bcl,bdcl]
        [--set train.batch_size=64 ...]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import tomllib
from pathlib import Path

import numpy as np
import torch

from mercli.config import load
from mercli.extract import extract_folder
from mercli.runs import load_model
from mercli.train import predict_logits, train
from mercli.trainset import build_table
from mercli.workspace import Workspace

EMODB = Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb-dev"
CLASSES = ["neutral", "angry", "happy", "sad", "boredom", "fear", "disgust"]
LOSSES = ["ce", "bcl", "bdcl"]


def labels_with_test_speakers(source: Path, target: Path, test_speakers: set[str]) -> None:
    with source.open(encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "discrete", "speaker", "split"])
        for row in rows:
            writer.writerow([row["name"], row["discrete"], row["speaker"],
                             "test" if row["speaker"] in test_speakers else "train"])


def scores(labels: np.ndarray, predicted: np.ndarray, smallest: list[int]) -> list[float]:
    from sklearn.metrics import f1_score

    per_class = f1_score(labels, predicted, average=None, labels=smallest, zero_division=0)
    return [f1_score(labels, predicted, average="weighted", zero_division=0),
            f1_score(labels, predicted, average="macro", zero_division=0), *per_class]


def svm_predictions(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray) -> np.ndarray:
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import LinearSVC

    model = make_pipeline(StandardScaler(), LinearSVC(C=0.1, max_iter=20000))
    return model.fit(features[train], labels[train]).predict(features[test])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="reuse a workspace (features are extracted once)")
    parser.add_argument("--losses", default=",".join(LOSSES))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting for every run, e.g. train.batch_size=64 (TOML value)")
    arguments = parser.parse_args()
    losses = arguments.losses.split(",")
    settings = {key: tomllib.loads(f"v = {value}")["v"] for key, value in (s.split("=", 1) for s in arguments.set)}
    root = arguments.workspace or Path(tempfile.mkdtemp(prefix="mer-quality-"))
    space = Workspace(root)
    overrides = {"data.classes": CLASSES, "extract.encoders": ["egemaps"], "train.device": "cpu"}
    config = load(None, environ={}, overrides=overrides)
    extract_folder(config, space, EMODB / "wav", EMODB / "labels.csv", None)
    speakers = sorted({row["speaker"] for row in csv.DictReader((EMODB / "labels.csv").open(encoding="utf-8"))})
    results: dict[str, list[list[float]]] = {name: [] for name in [*losses, "linear SVM"]}
    for seed in range(arguments.seeds):
        test_speakers = set(np.random.default_rng(seed).choice(speakers, size=2, replace=False).tolist())
        labels = root / f"labels-seed{seed}.csv"
        labels_with_test_speakers(EMODB / "labels.csv", labels, test_speakers)
        table = build_table(config, space.features, labels)
        test = np.array([i for i, split in enumerate(table.splits) if split == "test"])
        train_part = np.array([i for i, split in enumerate(table.splits) if split != "test"])
        counts = np.bincount(table.labels[train_part], minlength=len(CLASSES))
        smallest = [int(k) for k in np.argsort(counts)[:2]]
        for loss in losses:
            seeded = load(None, environ={}, overrides={**overrides, **settings, "train.seed": seed, "train.loss": loss})
            run = train(seeded, space, labels, name=f"{loss}-seed{seed}", group_column="speaker").run
            model, _ = load_model(run)
            predicted = predict_logits(model, table, test, torch.device("cpu"), 256).argmax(dim=1).numpy()
            results[loss].append(scores(table.labels[test], predicted, smallest))
        values = np.stack([table.values[table.sets[0].name][i] for i in range(len(table.clip_ids))])
        results["linear SVM"].append(scores(table.labels[test], svm_predictions(values, table.labels, train_part, test),
                                            smallest))
    print(f"emodb-dev, eGeMAPS, 2 test speakers per seed, {arguments.seeds} seeds (mean ± std)"
          + (f"; {', '.join(arguments.set)}" if arguments.set else ""))
    print(f"{'model':<11} {'WAF':>13} {'macro-F1':>13} {'F1 smallest':>13} {'F1 2nd small':>13}")
    for name, rows in results.items():
        table_rows = np.array(rows)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table_rows.mean(axis=0), table_rows.std(axis=0))]
        print(f"{name:<11} " + " ".join(f"{cell:>13}" for cell in cells))


if __name__ == "__main__":
    main()

"""Reasoning priors as text embeddings vs as numbers: ``mer train`` with no priors, text priors,
numeric priors (class scores + confidence) and both, speaker-independent, over several seeds.

Data: ../shared/data/emodb-dev (EmoDB, 6 speakers, 7 classes), eGeMAPS features, traces from the
``local`` reasoner (prompt version 2: class scores). EmoDB is audio only and no transcriber runs,
so the traces observe the acoustic modality alone (visual and textual are absent): the priors that
reach the network are ``acoustic`` and ``overall``, both derived by hand-set rules from the very
eGeMAPS vector the network also reads. For each seed two speakers are the test set (never used for
training or selection: their split is ``test``), and ``--group-column speaker`` holds out further
speakers for early stopping, as in benchmarks/train_quality.py. The same seed gives every
condition the same split and initialisation; conditions differ only in ``train.features``.

Small on purpose (a shared, busy machine): ``--epochs`` (default 30, patience 10), 3 seeds.

    .venv/bin/python benchmarks/numeric_priors.py [--seeds 3] [--epochs 30] [--workspace DIR]
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import numpy as np
import torch

from mercli.config import load
from mercli.extract import extract_folder
from mercli.features import list_feature_sets
from mercli.reason import reason_folder
from mercli.runs import load_model
from mercli.train import predict_logits, train
from mercli.trainset import build_table
from mercli.vocabulary import PRIOR_PREFIX, SCORES_PRIOR
from mercli.workspace import Workspace
from train_quality import CLASSES, EMODB, labels_with_test_speakers

CONDITIONS = ["no priors", "text priors", "numeric priors", "text + numeric"]


def feature_choices(space: Workspace) -> dict[str, list[str]]:
    """The ``train.features`` list of each condition: eGeMAPS, plus the chosen kind of prior set."""
    sets = list_feature_sets(space.features)
    base = [s.name for s in sets if s.manifest.encoder == "egemaps"]
    numeric = [s.name for s in sets if s.manifest.encoder.startswith(f"{PRIOR_PREFIX}{SCORES_PRIOR}-")]
    text = [s.name for s in sets if s.manifest.encoder.startswith(PRIOR_PREFIX) and s.name not in numeric]
    return {"no priors": base, "text priors": base + text, "numeric priors": base + numeric,
            "text + numeric": base + text + numeric}


def figures(labels: np.ndarray, predicted: np.ndarray) -> list[float]:
    """WAF (weighted F1) and macro-F1."""
    from sklearn.metrics import f1_score

    return [f1_score(labels, predicted, average=kind, zero_division=0) for kind in ("weighted", "macro")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--workspace", type=Path, help="reuse a workspace (features and traces are made once)")
    arguments = parser.parse_args()
    root = arguments.workspace or Path(tempfile.mkdtemp(prefix="mer-numeric-priors-"))
    space = Workspace(root)
    overrides = {"data.classes": CLASSES, "extract.encoders": ["egemaps"], "train.device": "cpu",
                 "train.epochs": arguments.epochs, "reason.prompt_version": "mer-trace-v2"}
    config = load(None, environ={}, overrides=overrides)
    extract_folder(config, space, EMODB / "wav", EMODB / "labels.csv", None)
    summary = reason_folder(config, space, EMODB / "wav", labels=EMODB / "labels.csv")
    print(f"local traces: {len(summary.done) + len(summary.cached)} of {summary.clips} clips "
          f"({len(summary.failed)} failed)")
    choices = feature_choices(space)
    speakers = sorted({row["speaker"] for row in csv.DictReader((EMODB / "labels.csv").open(encoding="utf-8"))})
    results: dict[str, list[list[float]]] = {name: [] for name in CONDITIONS}
    for seed in range(arguments.seeds):
        test_speakers = set(np.random.default_rng(seed).choice(speakers, size=2, replace=False).tolist())
        labels = root / f"labels-seed{seed}.csv"
        labels_with_test_speakers(EMODB / "labels.csv", labels, test_speakers)
        for condition in CONDITIONS:
            seeded = load(None, environ={}, overrides={**overrides, "train.seed": seed,
                                                       "train.features": choices[condition]})
            run = train(seeded, space, labels, name=f"{condition.replace(' ', '_')}-seed{seed}",
                        group_column="speaker").run
            model, _ = load_model(run)
            table = build_table(seeded, space.features, labels, choices[condition])
            test = np.array([i for i, split in enumerate(table.splits) if split == "test"])
            predicted = predict_logits(model, table, test, torch.device("cpu"), 256).argmax(dim=1).numpy()
            results[condition].append(figures(table.labels[test], predicted))
            print(f"seed {seed} (test speakers {', '.join(sorted(test_speakers))}) {condition}: "
                  f"WAF {results[condition][-1][0]:.3f}", flush=True)
    print(f"\nemodb-dev, eGeMAPS + local-reasoner priors, 2 test speakers per seed, {arguments.seeds} seeds, "
          f"at most {arguments.epochs} epochs (mean ± std)")
    print(f"{'priors':<16} {'WAF':>13} {'macro-F1':>13}")
    for name, rows in results.items():
        table_rows = np.array(rows)
        cells = [f"{m:.3f} ± {s:.3f}" for m, s in zip(table_rows.mean(axis=0), table_rows.std(axis=0))]
        print(f"{name:<16} " + " ".join(f"{cell:>13}" for cell in cells))


if __name__ == "__main__":
    main()

"""Self-training on real speech: labelled-only vs one and two rounds of pseudo-labels vs all labels.

Data: ../shared/data/emodb-dev (EmoDB, 6 speakers, 7 classes), eGeMAPS features, as in
benchmarks/train_quality.py. For each seed two speakers are the test set (never used for training,
selection or pseudo-labelling), two keep their labels, and the other two are the unlabelled pool:
their clips are copied into a folder that ``mer pseudolabel`` labels with the teacher's fold
ensemble. Every run is a 3-fold ensemble (stratified folds over its labelled clips); the figures
are the ensemble's on the test speakers. Also shown: how many pseudo-labels each round kept and
how many of them were right (the pool's true labels are known here, never used).

    .venv/bin/python benchmarks/semi_supervised.py [--seeds 5] [--workspace DIR] [--loss ce]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mercli.config import load
from mercli.ensemble import ensemble_probabilities
from mercli.extract import extract_folder
from mercli.labels import read_labels
from mercli.runs import load_run
from mercli.teacher import pseudolabel
from mercli.train import scores, train
from mercli.trainset import build_table
from mercli.workspace import Workspace
from train_quality import CLASSES, EMODB

FOLDS = 3
CONDITIONS = ["labelled only", "self-training, 1 round", "self-training, 2 rounds", "all labels (ceiling)"]


def write_labels(target: Path, rows: list[dict[str, str]], roles: dict[str, str], keep: set[str]) -> Path:
    """The rows of the speakers whose role is in ``keep``, with split train or test."""
    with target.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "discrete", "speaker", "split"])
        for row in rows:
            role = roles[row["speaker"]]
            if role in keep:
                writer.writerow([row["name"], row["discrete"], row["speaker"], "test" if role == "test" else "train"])
    return target


def pool_folder(target: Path, rows: list[dict[str, str]], roles: dict[str, str]) -> Path:
    """A folder with copies of the pool speakers' clips: what ``mer pseudolabel`` is pointed at."""
    target.mkdir(parents=True, exist_ok=True)
    for row in rows:
        if roles[row["speaker"]] == "pool":
            shutil.copyfile(EMODB / "wav" / f"{row['name']}.wav", target / f"{row['name']}.wav")
    return target


def test_scores(config: Any, space: Workspace, run: Path, labels: Path) -> list[float]:
    table = build_table(config, space.features, labels)
    test = [i for i, split in enumerate(table.splits) if split == "test"]
    probabilities = ensemble_probabilities(load_run(run), table, test, torch.device("cpu"))
    figures = scores(table.labels[test], probabilities.argmax(axis=1))
    return [figures["waf"], figures["macro_f1"]]


def pseudo_accuracy(path: Path, truth: dict[str, str]) -> tuple[int, float]:
    rows = list(csv.DictReader(path.open(encoding="utf-8")))
    right = sum(truth[row["name"]] == row["discrete"] for row in rows)
    return len(rows), right / max(len(rows), 1)


def one_seed(seed: int, config_for: Any, space: Workspace, rows: list[dict[str, str]], speakers: list[str],
             truth: dict[str, str]) -> tuple[list[list[float]], list[tuple[int, float]]]:
    order = np.random.default_rng(seed).permutation(speakers).tolist()
    roles = {s: "test" for s in order[:2]} | {s: "labelled" for s in order[2:4]} | {s: "pool" for s in order[4:]}
    root = space.root
    labelled = write_labels(root / f"labelled-seed{seed}.csv", rows, roles, {"labelled", "test"})
    everything = write_labels(root / f"all-seed{seed}.csv", rows, roles, {"labelled", "pool", "test"})
    pool = pool_folder(root / f"pool-seed{seed}", rows, roles)
    config = config_for(seed)
    results, pseudo = [], []
    teacher = train(config, space, labelled, name=f"labelled-seed{seed}", folds=FOLDS).run
    results.append(test_scores(config, space, teacher, labelled))
    for round_ in (1, 2):
        out = pseudolabel(config, space, pool, teacher.name, root / f"pseudo-seed{seed}-round{round_}.csv").out
        pseudo.append(pseudo_accuracy(out, truth))
        teacher = train(config, space, labelled, name=f"round{round_}-seed{seed}", folds=FOLDS, pseudo_labels=out).run
        results.append(test_scores(config, space, teacher, labelled))
    ceiling = train(config, space, everything, name=f"ceiling-seed{seed}", folds=FOLDS).run
    results.append(test_scores(config, space, ceiling, everything))
    return results, pseudo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--workspace", type=Path, help="reuse a workspace (features are extracted once)")
    parser.add_argument("--loss", default="bdcl")
    parser.add_argument("--fraction", type=float, default=0.5, help="pseudolabel.fraction (quota selection)")
    arguments = parser.parse_args()
    root = arguments.workspace or Path(tempfile.mkdtemp(prefix="mer-semi-"))
    space = Workspace(root)
    overrides = {"data.classes": CLASSES, "extract.encoders": ["egemaps"], "train.device": "cpu",
                 "train.loss": arguments.loss, "pseudolabel.fraction": arguments.fraction}
    base = load(None, environ={}, overrides=overrides)
    extract_folder(base, space, EMODB / "wav", EMODB / "labels.csv", None)
    rows = list(csv.DictReader((EMODB / "labels.csv").open(encoding="utf-8")))
    speakers = sorted({row["speaker"] for row in rows})
    truth = {clip.clip_id: clip.label for clip in read_labels(EMODB / "labels.csv", base)}
    figures: list[list[list[float]]] = []
    kept: list[list[tuple[int, float]]] = []
    for seed in range(arguments.seeds):
        results, pseudo = one_seed(seed, lambda s: load(None, environ={}, overrides={**overrides, "train.seed": s}),
                                   space, rows, speakers, truth)
        figures.append(results)
        kept.append(pseudo)
    table = np.array(figures)  # seeds x conditions x (WAF, macro-F1)
    print(f"emodb-dev, eGeMAPS, loss {arguments.loss}, {FOLDS}-fold ensembles; per seed 2 test, 2 labelled and "
          f"2 pool speakers; quota selection, fraction {arguments.fraction}; {arguments.seeds} seeds (mean ± std)")
    print(f"{'condition':<26} {'WAF':>15} {'macro-F1':>15}")
    for k, name in enumerate(CONDITIONS):
        cells = [f"{table[:, k, j].mean():.3f} ± {table[:, k, j].std():.3f}" for j in range(2)]
        print(f"{name:<26} {cells[0]:>15} {cells[1]:>15}")
    for round_ in (0, 1):
        counts = [seed[round_][0] for seed in kept]
        accuracy = [seed[round_][1] for seed in kept]
        print(f"round {round_ + 1} pseudo-labels: {np.mean(counts):.0f} kept per seed, "
              f"{np.mean(accuracy):.3f} ± {np.std(accuracy):.3f} of them right")


if __name__ == "__main__":
    main()

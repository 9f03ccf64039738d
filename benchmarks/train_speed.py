"""Training speed: samples per second and seconds per epoch of the fusion network.

Synthetic clips at MER2024-like feature sizes (audio 1024, visual 768, text 5120, utterance-level),
plus one 384-d prior set per modality, held in memory so that only training is measured. Runs on
the device ``[train] device`` picks (auto: cuda, then mps, then cpu); mixed precision on CUDA.

    .venv/bin/python benchmarks/train_speed.py [--clips 5000] [--epochs 2] [--loss bdcl] [--no-priors] [--device cuda]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from mercli.config import MER2024_CLASSES, load
from mercli.features import FeatureSet, Manifest
from mercli.splits import Split
from mercli.train import checked_settings, seeded, train_fold
from mercli.trainset import TrainingTable
from mercli.vocabulary import pick_device
from mercli import plugins

SETS = [("audio-1024", "audio", 1024), ("visual-768", "visual", 768), ("text-5120", "text", 5120),
        ("prior-audio", "audio", 384), ("prior-visual", "visual", 384), ("prior-text", "text", 384)]


def synthetic_table(clips: int, priors: bool, seed: int = 0) -> TrainingTable:
    rng = np.random.default_rng(seed)
    chosen = [s for s in SETS if priors or not s[0].startswith("prior-")]
    sets = [FeatureSet(Path("memory") / name, Manifest(name, "1", "benchmark", "0", "", {}, modality, dim, "utterance"))
            for name, modality, dim in chosen]
    labels = rng.integers(len(MER2024_CLASSES), size=clips)
    values = {s.name: list(rng.normal(size=(clips, s.manifest.dim)).astype(np.float32)) for s in sets}
    return TrainingTable(MER2024_CLASSES, [f"c{i}" for i in range(clips)], labels, [None] * clips, ["train"] * clips,
                         sets, values, {s.name: [None] * clips for s in sets}, [])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--loss", default="bdcl")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-priors", action="store_true")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    arguments = parser.parse_args()
    config = load(None, environ={}, overrides={"train.epochs": arguments.epochs, "train.patience": 0,
                                               "train.batch_size": arguments.batch_size,
                                               "train.device": arguments.device})
    settings = checked_settings(config.table("train"))
    table = synthetic_table(arguments.clips, priors=not arguments.no_priors)
    device = pick_device(settings["device"])
    split = Split(1, np.arange(arguments.clips), np.arange(min(500, arguments.clips)))
    with seeded(0, False):
        result = train_fold(table, split, settings, plugins.build("losses", arguments.loss, config), device)
    epoch_seconds = [record["seconds"] for record in result.history[1:]] or [result.history[0]["seconds"]]
    seconds = float(np.median(epoch_seconds))  # the first epoch carries one-off start-up costs
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    print(f"{'device':<8} {'amp':<5} {'loss':<6} {'priors':<6} {'clips':>6} {'batch':>5} {'s/epoch':>8} "
          f"{'samples/s':>10} {'peak MiB':>9}")
    print(f"{device.type:<8} {str(device.type == 'cuda'):<5} {arguments.loss:<6} {str(not arguments.no_priors):<6} "
          f"{arguments.clips:>6} {arguments.batch_size:>5} {seconds:>8.2f} {arguments.clips / seconds:>10.0f} {peak:>9.0f}")


if __name__ == "__main__":
    main()

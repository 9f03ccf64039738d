"""Small synthetic training workspaces: separable features for three classes, written with the
feature store, and the configuration that trains on them in a few CPU seconds."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mercli.config import load
from mercli.contracts import Features
from mercli.features import FeatureSet, Manifest

CLASSES = ["neutral", "angry", "happy"]
FAST = {"train.epochs": 8, "train.batch_size": 16, "train.width": 32, "train.heads": 2, "train.layers": 1,
        "train.projection_dim": 16, "train.lr": 3e-3, "train.patience": 0, "train.device": "cpu"}


def manifest(encoder: str, modality: str, dim: int, level: str) -> Manifest:
    return Manifest(encoder=encoder, encoder_version="1", package="tests", package_version="0", weights=encoder,
                    settings={}, modality=modality, dim=dim, level=level)


def write_workspace(root: Path, clips_per_class: int = 24, speakers: int = 5, seed: int = 0,
                    prior: bool = False) -> Path:
    """Separable synthetic features for three classes; returns the labels CSV.

    Every 5th clip lacks the audio set (absent record); the visual set is frame-level with 3 to 7
    frames, some masked. Clips are spread over ``speakers`` speakers; every 6th clip is in the test
    split and every 4th (from the second) in val."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(CLASSES), 8)) * 2.5
    audio = FeatureSet.open(root / "features", manifest("syn-audio", "audio", 8, "utterance"))
    visual = FeatureSet.open(root / "features", manifest("syn-visual", "visual", 4, "frame"))
    priors = FeatureSet.open(root / "features", manifest("prior-visual", "visual", 5, "utterance")) if prior else None
    rows = ["name,discrete,speaker,split"]
    for number in range(clips_per_class * len(CLASSES)):
        label = number % len(CLASSES)
        clip = f"clip{number:03d}"
        if number % 5 == 0:
            audio.write(clip, Features(None, absent="no audio track"))
        else:
            audio.write(clip, Features((centres[label] + rng.normal(scale=0.5, size=8)).astype(np.float32)))
        frames = int(rng.integers(3, 8))
        values = (centres[label, :4] + rng.normal(scale=0.7, size=(frames, 4))).astype(np.float32)
        mask = rng.random(frames) > 0.2
        mask[0] = True
        visual.write(clip, Features(values, mask))
        if priors is not None:
            priors.write(clip, Features(rng.normal(size=5).astype(np.float32)))
        split = "test" if number % 6 == 0 else "val" if number % 4 == 1 else "train"
        rows.append(f"{clip},{CLASSES[label]},spk{number % speakers},{split}")
    labels = root / "labels.csv"
    labels.write_text("\n".join(rows) + "\n", encoding="utf-8")
    return labels


def noisy_labels_with_a_mixed_test_split(labels: Path) -> None:
    """Make every 7th clip a test clip (so the test split holds every class), and give every 5th
    other clip the next class: noise that the fold models cannot learn, so they make mistakes."""
    lines = labels.read_text().splitlines()
    for number in range(1, len(lines)):
        clip, label, speaker, split = lines[number].split(",")
        split = "test" if number % 7 == 1 else "val" if split == "val" else "train"
        if split != "test" and number % 5 == 0:
            label = CLASSES[(CLASSES.index(label) + 1) % len(CLASSES)]
        lines[number] = ",".join((clip, label, speaker, split))
    labels.write_text("\n".join(lines) + "\n")


def config(**overrides):
    return load(None, environ={}, overrides={"data.classes": CLASSES, **FAST, **overrides})

"""The MER2024 baseline's attention fusion, written from its published description, as the
reference that ``benchmarks/train_speed.py`` times ``mer train`` against.

The network: one 3-layer MLP encoder per modality (Linear, ReLU, Dropout, three times) to a hidden
width; an MLP over the three concatenated hidden vectors gives one weight per modality; the fused
vector is the weighted sum of the three, and a linear head gives the class logits. It is trained the
way the baseline trains: a per-clip dataset behind a DataLoader (batch 32, shuffled), Adam, cross
entropy, validation after every epoch, the epoch with the best validation WAF kept. It reads the
same MERTools-layout folders and trains on the same folds as ``mer train --folds K`` (mercli.splits),
so that the two differ only in what is being measured.

    .venv/bin/python benchmarks/baseline_attention.py WORKSPACE LABELS [--folds 5] [--epochs 10] [--hidden 256]

Prints one JSON line: the mean validation WAF over folds and the seconds spent training.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mercli.config import load
from mercli.splits import plan_splits
from mercli.train import scores
from mercli.trainset import build_table

MODALITIES = ("audio", "visual", "text")


class ClipDataset(Dataset):
    """One clip at a time, as the baseline's dataset gives them."""

    def __init__(self, features: dict[str, np.ndarray], labels: np.ndarray, indices: np.ndarray) -> None:
        self.features, self.labels, self.indices = features, labels, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, position: int) -> dict[str, torch.Tensor]:
        row = self.indices[position]
        return {**{m: torch.from_numpy(self.features[m][row]) for m in MODALITIES},
                "label": torch.tensor(self.labels[row])}


def mlp_encoder(dim: int, hidden: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in (dim, hidden, hidden):
        layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
    return nn.Sequential(*layers)


class AttentionFusion(nn.Module):
    def __init__(self, dims: dict[str, int], hidden: int, classes: int, dropout: float) -> None:
        super().__init__()
        self.encoders = nn.ModuleDict({m: mlp_encoder(dims[m], hidden, dropout) for m in MODALITIES})
        self.attention = nn.Sequential(mlp_encoder(hidden * len(MODALITIES), hidden, dropout),
                                       nn.Linear(hidden, len(MODALITIES)))
        self.head = nn.Linear(hidden, classes)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        hidden = [self.encoders[m](batch[m]) for m in MODALITIES]
        weights = self.attention(torch.cat(hidden, dim=1)).unsqueeze(2)  # (B, 3, 1)
        fused = torch.matmul(torch.stack(hidden, dim=2), weights).squeeze(2)  # (B, hidden)
        return self.head(fused)


def evaluate(model: AttentionFusion, loader: DataLoader, device: torch.device) -> dict[str, float]:
    model.eval()
    predicted, labels = [], []
    with torch.no_grad():
        for batch in loader:
            logits = model({m: batch[m].to(device) for m in MODALITIES})
            predicted.append(logits.argmax(dim=1).cpu().numpy())
            labels.append(batch["label"].numpy())
    return scores(np.concatenate(labels), np.concatenate(predicted))


def train_fold(features: dict[str, np.ndarray], labels: np.ndarray, train: np.ndarray, val: np.ndarray,
               classes: int, arguments: argparse.Namespace, device: torch.device) -> float:
    torch.manual_seed(arguments.seed)
    model = AttentionFusion({m: features[m].shape[1] for m in MODALITIES}, arguments.hidden, classes,
                            arguments.dropout).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=arguments.lr, weight_decay=1e-5)
    train_loader = DataLoader(ClipDataset(features, labels, train), batch_size=32, shuffle=True)
    val_loader = DataLoader(ClipDataset(features, labels, val), batch_size=32)
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    best = -1.0
    for _epoch in range(arguments.epochs):
        model.train()
        for batch in train_loader:
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                logits = model({m: batch[m].to(device) for m in MODALITIES})
                loss = nn.functional.cross_entropy(logits.float(), batch["label"].to(device))
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        best = max(best, evaluate(model, val_loader, device)["waf"])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspace", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dropout", type=float, default=0.3)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    arguments = parser.parse_args()
    config = load(arguments.workspace / "mer.toml", environ={})
    table = build_table(config, arguments.workspace / "features", arguments.labels)
    by_modality = {s.manifest.modality: s.name for s in table.sets}
    features = {m: np.stack(table.values[by_modality[m]]) for m in MODALITIES}
    started = time.perf_counter()
    device = torch.device(arguments.device)
    wafs = [train_fold(features, table.labels, split.train, split.val, len(table.classes), arguments, device)
            for split in plan_splits(table, seed=arguments.seed, folds=arguments.folds)]
    print(json.dumps({"waf": float(np.mean(wafs)), "training_seconds": time.perf_counter() - started}))


if __name__ == "__main__":
    main()

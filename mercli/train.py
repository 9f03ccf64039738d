"""The train stage: fit the fusion network on the training table, fold by fold, and write a run.

A run folder ``runs/<name>/`` holds ``model.safetensors`` (``model-fold<k>.safetensors`` per fold
under k-fold), ``config.json`` (class list, loss and its settings, train settings, the exact
feature manifests used, the seed, how validation was chosen), ``history.json`` (per epoch: training
loss, validation WAF and macro-F1), ``metrics.json`` (the selected epoch of every fold, the clips
it was trained and selected on, and its ``temperature``) and ``curves.png``. A run trained with
pseudo-labels (``--pseudo-labels``, see mercli.pseudolabels) records the file, its sha256, its teacher
and which clips it added to the training folds under ``pseudo_labels`` in config.json. The epoch kept is the
one with the best validation WAF (weighted F1); test clips are never part of a fold. The temperature
is fitted on the same validation clips once the epoch is chosen (see mercli.calibration), so that
predicted probabilities mean what they say; runs without one load with T = 1. The folder is written
and loaded by mercli.runs, as one unit: retraining a run replaces it whole or not at all.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import random
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

import mercli.plugins as plugins
import mercli.resources as resources
from mercli.calibration import TemperatureFit, fit_temperature
from mercli.config import Config
from mercli.errors import ConfigError, DataError
from mercli.model import FusionNetwork, InputSpec, injected_priors
from mercli.optimizer import FusedAdamW, cosine_decay
from mercli.parallel_folds import fold_training, fold_workers
import mercli.pseudolabels as pseudolabels
from mercli.labels import read_labels
from mercli.plots import Curve, curves_png
from mercli.runs import RunFiles, check_writable, recorded_manifests, weights_name, write_run
from mercli.settings import TrainSettings
from mercli.splits import Split, plan_splits
from mercli.trainset import (TableTensors, TrainingTable, build_table, check_expected_inputs, clip_table,
                             feature_statistics, refuse_label_leaks)
from mercli.vocabulary import pick_device
from mercli.workspace import Workspace

#: Called after every epoch with (fold, epoch, epochs, record).
EpochCallback = Callable[[int, int, int, dict[str, Any]], None]


@dataclass
class FoldResult:
    fold: int
    best_epoch: int
    waf: float
    macro_f1: float
    accuracy: float
    history: list[dict[str, Any]]
    state: dict[str, torch.Tensor]
    train_clips: int
    val_clips: list[str]
    train_clip_ids: list[str]
    calibration: TemperatureFit
    batch_size: int
    lr: float
    weights: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fold": self.fold, "best_epoch": self.best_epoch, "waf": self.waf, "macro_f1": self.macro_f1,
                "accuracy": self.accuracy, "train_clips": self.train_clips, "val_clips": self.val_clips,
                "train_clip_ids": self.train_clip_ids, "batch_size": self.batch_size, "lr": self.lr,
                "weights": self.weights,
                "temperature": self.calibration.temperature, "calibration": self.calibration.to_json()}


@dataclass
class RunResult:
    run: Path
    folds: list[FoldResult]
    inputs: list[InputSpec]
    manifests: dict[str, dict[str, Any]]
    priors_note: str
    excluded: list[str]
    device: str
    seconds_per_epoch: float
    best: dict[str, Any] = field(default_factory=dict)
    pseudo_labels: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        document = {"run": str(self.run), "best": self.best, "folds": [f.to_json() for f in self.folds],
                    "excluded": self.excluded}
        if self.pseudo_labels is not None:  # a run trained on labels alone keeps its document as it was
            document["pseudo_labels"] = {k: v for k, v in self.pseudo_labels.items() if k != "clip_ids"}
        return document


# --- settings, device, seeds ------------------------------------------------------------------


@contextlib.contextmanager
def seeded(seed: int, deterministic: bool) -> Iterator[None]:
    """Seed Python, numpy and torch; in deterministic mode allow deterministic kernels only, and
    restore torch's global mode afterwards (other code in the process may not want it). The mode is
    touched only when it changes: setting it imports torch's compiler, 1.8 s of a process's start."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    switch_on = deterministic and not torch.are_deterministic_algorithms_enabled()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
    if switch_on:
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        if switch_on:
            torch.use_deterministic_algorithms(False)


def training_precision(requested: str, device: torch.device) -> torch.dtype:
    """The number format of the network's products while training (``train.precision``); float32
    means no autocast. Losses compute in float32 whatever it is (mer_plugins.losses.objectives)."""
    if requested == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if device.type == "cpu" and resources.native_bfloat16() else torch.float32
    if requested == "float16" and device.type != "cuda":
        raise ConfigError(f"train.precision = float16 needs a CUDA device, not {device}; on a CPU use bfloat16")
    return getattr(torch, requested)


# --- one fold ---------------------------------------------------------------------------------


#: Batch sizes ``[train] batch_size = 0`` chooses from, each with the factor it applies to
#: ``train.lr``, and the batches an epoch must keep. Measured (benchmarks/train_quality.py,
#: train_speed.py): on EmoDB's ~180 training clips, batches of 64 or 128 lost WAF (0.544 -> 0.522 ->
#: 0.513 with bdcl, 5 seeds: differences of the size that another dropout stream makes there, see
#: the README); on 4,000 synthetic MER2024-size clips (31 batches of 128), 128 at the rate of 64
#: lost a point of WAF in 10 epochs (ce, 3 seeds) and 128 at twice the rate none, while it trains
#: about 1.5x faster per clip.
AUTO_BATCHES = ((128, 2.0), (64, 1.0), (32, 1.0))
MIN_BATCHES_PER_EPOCH = 30


def training_batch(requested: int, train_clips: int, lr: float) -> tuple[int, float]:
    """A fold's batch size and peak learning rate: ``requested`` and ``lr`` as they are, or with 0
    the largest automatic size that leaves an epoch enough batches, and its rate."""
    if requested:
        return requested, lr
    size, factor = next(((size, factor) for size, factor in AUTO_BATCHES if train_clips / size >= MIN_BATCHES_PER_EPOCH),
                        AUTO_BATCHES[-1])
    return size, lr * factor


def scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Weighted F1 (WAF), macro F1 and accuracy, as scikit-learn computes them (``zero_division=0``;
    macro over the classes seen in either array; tests compare the two). Computed here because
    importing scikit-learn costs every training process about a second, for a few sums."""
    labels, predicted = np.asarray(labels, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    seen = np.union1d(labels, predicted)
    true_positives = np.array([np.sum((labels == c) & (predicted == c)) for c in seen], dtype=np.float64)
    support = np.array([np.sum(labels == c) for c in seen], dtype=np.float64)
    guessed = np.array([np.sum(predicted == c) for c in seen], dtype=np.float64)
    both = support + guessed
    f1 = np.divide(2 * true_positives, both, out=np.zeros_like(both), where=both > 0)
    return {
        "waf": float(np.sum(f1 * support) / np.sum(support)) if len(labels) else 0.0,
        "macro_f1": float(f1.mean()) if len(seen) else 0.0,
        "accuracy": float(np.mean(labels == predicted)) if len(labels) else 0.0,
    }


#: Clips per batch when only predicting (validation, evaluation): no gradients are kept, so
#: batches can be larger than the training ones, and fewer calls cost less time.
PREDICT_BATCH = 512


def predict_logits(model: FusionNetwork, source: TrainingTable | TableTensors, indices: Sequence[int],
                   device: torch.device, batch_size: int = PREDICT_BATCH) -> torch.Tensor:
    """The logits of the clips at ``indices``, on the CPU."""
    tensors = source if isinstance(source, TableTensors) else TableTensors(source, device)
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = tensors.batch(indices[start:start + batch_size])
            outputs.append(model(batch.values, batch.masks).logits.float().cpu())
    return torch.cat(outputs)


def train_fold(tensors: TableTensors, split: Split, settings: TrainSettings, loss_component: Any,
               on_epoch: EpochCallback | None = None) -> FoldResult:
    """Train one fold of the table ``tensors`` holds (on its device); returns the weights of the
    epoch with the best validation WAF and the temperature that calibrates them on the same
    validation clips."""
    table, device = tensors.table, tensors.device
    seed = settings.seed + split.fold
    torch.manual_seed(seed)
    model = FusionNetwork(table.inputs, len(table.classes), settings)
    model.standardise_with(feature_statistics(table, split.train))
    model.to(device)
    loss_fn = loss_component.build(table.class_counts(split.train), settings.projection_dim).to(device)
    batch_size, peak_lr = training_batch(settings.batch_size, len(split.train), settings.lr)
    optimizer = FusedAdamW([*model.parameters(), *loss_fn.parameters()], peak_lr, settings.weight_decay)
    epochs = settings.epochs
    total_steps, steps_taken = epochs * math.ceil(len(split.train) / batch_size), 0
    precision = training_precision(settings.precision, device)
    # Gradients in float16 underflow without scaling; bfloat16 has float32's range.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == torch.float16)
    generator = torch.Generator().manual_seed(seed)
    val_labels = table.labels[split.val]
    best: dict[str, Any] = {"waf": -1.0}
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = split.train[torch.randperm(len(split.train), generator=generator).numpy()]
        # The loss stays on the device until the epoch ends: reading it every step would make a GPU
        # wait for each step before Python may queue the next one.
        total = torch.zeros((), device=device)
        for start in range(0, len(order), batch_size):
            batch = tensors.batch(order[start:start + batch_size])
            with torch.autocast(device_type=device.type, dtype=precision, enabled=precision != torch.float32):
                output = model(batch.values, batch.masks)
            embeddings = output.embeddings if loss_component.uses_embeddings else None
            weighted = () if batch.weights is None else (batch.weights,)
            loss = loss_fn(output.logits, embeddings, batch.labels, *weighted)
            optimizer.zero_grad()
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            steps_taken += 1
            optimizer.param_groups[0]["lr"] = peak_lr * cosine_decay(steps_taken, total_steps)
            total += loss.detach().float() * len(batch.labels)
        train_loss = total.item() / len(order)
        if not math.isfinite(train_loss):
            raise DataError(f"fold {split.fold}, epoch {epoch}: the training loss is {train_loss}; "
                            "lower train.lr or check the features")
        predicted = predict_logits(model, tensors, split.val, device).argmax(dim=1).numpy()
        record = {"epoch": epoch, "train_loss": train_loss, **{f"val_{k}": v for k, v in scores(val_labels, predicted).items()},
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        history.append(record)
        if on_epoch is not None:
            on_epoch(split.fold, epoch, epochs, record)
        if record["val_waf"] > best["waf"]:
            best = {"waf": record["val_waf"], "macro_f1": record["val_macro_f1"], "accuracy": record["val_accuracy"],
                    "epoch": epoch, "state": copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})}
        elif settings.patience and epoch - best["epoch"] >= settings.patience:
            break
    model.load_state_dict(best["state"])
    calibration = fit_temperature(predict_logits(model, tensors, split.val, device).numpy(), val_labels)
    return FoldResult(split.fold, best["epoch"], best["waf"], best["macro_f1"], best["accuracy"], history,
                      best["state"], len(split.train), [table.clip_ids[i] for i in split.val],
                      [table.clip_ids[i] for i in split.train], calibration, batch_size, peak_lr)


def fold_trainer(table: TrainingTable, settings: TrainSettings, config: Config, device: str
                 ) -> Callable[[Split, EpochCallback | None], FoldResult]:
    """Train one fold of ``table`` seeded as the run's settings say, in this process or a worker's
    (:mod:`mercli.parallel_folds`)."""
    loss_component = plugins.build("losses", settings.loss, config)
    tensors = TableTensors(table, torch.device(device))  # once for all the folds this process trains
    resources.keep_freed_memory()

    def train_one(split: Split, on_epoch: EpochCallback | None) -> FoldResult:
        with seeded(settings.seed, settings.deterministic):
            return train_fold(tensors, split, settings, loss_component, on_epoch)

    return train_one


# --- the run ----------------------------------------------------------------------------------


def run_name(name: str | None, loss: str) -> str:
    if name:
        if "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"--name {name!r}: a run name is one folder name")
        return name
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{loss}"


def plot_curves(folds: Sequence[FoldResult]) -> bytes:
    """Training loss and validation WAF per epoch of every fold, as a PNG."""
    return curves_png([Curve(f"fold {result.fold}", result.history, result.best_epoch) for result in folds])


def with_pseudo_labels(config: Config, table: TrainingTable, splits: list[Split], labels: Path, pseudo_path: Path,
                       loss_component: Any) -> tuple[TrainingTable, list[Split], dict[str, Any]]:
    """``table`` with the pseudo-labelled clips of ``pseudo_path`` added to every fold's training
    clips (never to validation or test), each weighing ``pseudolabel.weight`` times its confidence;
    and the record config.json keeps of them. See mercli.pseudolabels for what is refused."""
    if not loss_component.sample_weights:
        raise ConfigError(f"[train] loss {loss_component.name!r} does not take per-clip weights, which "
                          "pseudo-labelled clips need; choose another loss")
    pseudo = pseudolabels.read_pseudo_labels(pseudo_path, config)
    listed = read_labels(labels, config)
    pseudolabels.refuse_labelled(pseudo, [c.clip_id for c in listed], labels)
    test = [c.clip_id for c in listed if c.split == "test"]
    seen = pseudolabels.refuse_test_leaks(pseudo, test)
    weight = config.pseudolabel.weight
    index = {c: i for i, c in enumerate(table.classes)}
    extra = clip_table(table.classes, table.sets, pseudo.clip_ids, [index[label] for label in pseudo.labels],
                       [weight * confidence for confidence in pseudo.confidences])
    joined = table.joined(extra)
    added = np.arange(len(table.clip_ids), len(joined.clip_ids))
    validation = [table.clip_ids[i] for split in splits for i in split.val]
    record = pseudolabels.provenance(pseudo, extra.clip_ids, weight, seen, validation)
    return joined, [Split(s.fold, np.concatenate([s.train, added]), s.val) for s in splits], record


def train(config: Config, workspace: Workspace, labels: Path, *, name: str | None = None,
          group_column: str | None = None, folds: int | None = None, pseudo_labels: Path | None = None,
          on_epoch: EpochCallback | None = None) -> RunResult:
    """Build the training table (with the pseudo-labelled clips of ``pseudo_labels`` in the
    training folds), train every fold and write the run folder."""
    settings = config.train
    loss_component = plugins.build("losses", settings.loss, config)
    run = workspace.runs / run_name(name, settings.loss)
    device = pick_device(settings.device)
    precision = training_precision(settings.precision, device)  # one the device cannot train in: refused before any fold
    check_writable(run)
    # Whether folds go to workers is decided on the labelled rows, before the features are read,
    # so that the workers start while they are.
    labelled = sum(clip.label is not None for clip in read_labels(labels, config))
    workers = fold_workers(settings.fold_workers, device, folds or 1, labelled, settings.epochs)
    with fold_training(fold_trainer, (settings, config, str(device)), workers,
                       rebalance=not settings.deterministic) as train_folds:
        table = build_table(config, workspace.features, labels, settings.features or None)
        expected = recorded_manifests(run)
        if expected is not None:
            check_expected_inputs(table.sets, expected, str(run / "config.json"))
        splits = plan_splits(table, seed=settings.seed, folds=folds, group_column=group_column,
                             val_fraction=settings.val_fraction)
        for split in splits:
            refuse_label_leaks(table, split.val, "validation")
            if len(np.unique(table.labels[split.train])) < 2:
                raise DataError(f"fold {split.fold}: the training clips cover one class only; training needs two or more")
        pseudo_record = None
        if pseudo_labels is not None:
            table, splits, pseudo_record = with_pseudo_labels(config, table, splits, labels, pseudo_labels,
                                                              loss_component)
        results = train_folds(table, splits, on_epoch)
    used_priors = [p.name for p in injected_priors(table.inputs, settings)]
    priors_note = _priors_note(table.inputs, used_priors, settings.priors)
    for result in results:
        result.weights = weights_name(result.fold, len(results))
    best = {
        "epoch": round(float(np.mean([r.best_epoch for r in results]))),
        "waf": float(np.mean([r.waf for r in results])),
        "macro_f1": float(np.mean([r.macro_f1 for r in results])),
    }
    run_config = _run_config(table, settings, loss_component, used_priors,
                             _validation(settings, folds, group_column), labels, device, precision)
    if pseudo_record is not None:
        run_config["pseudo_labels"] = pseudo_record
    write_run(run, RunFiles(weights={r.weights: r.state for r in results}, config=run_config,
                            history={"folds": [{"fold": r.fold, "epochs": r.history} for r in results]},
                            metrics={"best": best, "folds": [r.to_json() for r in results]},
                            curves=plot_curves(results)))
    epoch_seconds = [record["seconds"] for r in results for record in r.history]
    return RunResult(run, results, table.inputs, table.manifests(), priors_note, table.excluded, str(device),
                     float(np.mean(epoch_seconds)), best, pseudo_record)


def _validation(settings: TrainSettings, folds: int | None, group_column: str | None) -> dict[str, Any]:
    """How the validation clips were chosen, for config.json."""
    if folds is not None:
        return {"mode": "k-fold", "folds": folds, "group_column": group_column}
    if group_column is not None:
        return {"mode": "group holdout", "group_column": group_column, "val_fraction": settings.val_fraction}
    return {"mode": "split column"}


def _run_config(table: TrainingTable, settings: TrainSettings, loss_component: Any, used_priors: list[str],
                validation: dict[str, Any], labels: Path, device: torch.device, precision: torch.dtype
                ) -> dict[str, Any]:
    """The run's config.json: what eval and predict need to rebuild and check its inputs."""
    return {
        "classes": table.classes,
        "loss": {"name": loss_component.name, "version": loss_component.version, "settings": loss_component.settings},
        "train": settings.to_json(),
        "seed": settings.seed,
        "inputs": [asdict(spec) for spec in table.inputs],
        "manifests": table.manifests(),
        "priors": used_priors,
        "validation": validation,
        "labels": str(labels.resolve()),
        "excluded": table.excluded,
        "device": str(device),
        "precision": str(precision).removeprefix("torch."),
    }


def _priors_note(inputs: Sequence[InputSpec], used: Sequence[str], enabled: bool) -> str:
    """What the run did with priors, in words, so that "with vs without priors" is never a guess."""
    available = [spec.name for spec in inputs if spec.prior]
    if not available:
        return "no prior feature sets (prior-*) in the workspace: priors off"
    if not enabled:
        return f"priors switched off (train.priors = false); not used: {', '.join(available)}"
    unused = [n for n in available if n not in used]
    note = f"priors injected: {', '.join(used) or 'none'}"
    return note + (f"; no feature set of their modality for: {', '.join(unused)}" if unused else "")

"""The train stage: fit the fusion network on the training table, fold by fold, and write a run.

A run folder ``runs/<name>/`` holds ``model.safetensors`` (``model-fold<k>.safetensors`` per fold
under k-fold), ``config.json`` (class list, loss and its settings, train settings, the exact
feature manifests used, the seed, how validation was chosen), ``history.json`` (per epoch: training
loss, validation WAF and macro-F1), ``metrics.json`` (the selected epoch of every fold, the clips
it was trained and selected on, and its ``temperature``) and ``curves.png``. The epoch kept is the
one with the best validation WAF (weighted F1); test clips are never part of a fold. The temperature
is fitted on the same validation clips once the epoch is chosen (see mercli.calibration), so that
predicted probabilities mean what they say; runs without one load with T = 1.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import os
import random
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from mercli import plugins
from mercli.atomic import write_bytes, write_json
from mercli.calibration import TemperatureFit, fit_temperature
from mercli.config import Config
from mercli.errors import ConfigError, DataError
from mercli.model import FusionNetwork, ModelSettings, injected_priors
from mercli.splits import Split, plan_splits
from mercli.trainset import (InputSpec, TrainingTable, build_table, check_expected_inputs, collate,
                             feature_statistics, refuse_label_leaks)
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
    weights: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"fold": self.fold, "best_epoch": self.best_epoch, "waf": self.waf, "macro_f1": self.macro_f1,
                "accuracy": self.accuracy, "train_clips": self.train_clips, "val_clips": self.val_clips,
                "train_clip_ids": self.train_clip_ids, "weights": self.weights,
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

    def to_json(self) -> dict[str, Any]:
        return {"run": str(self.run), "best": self.best, "folds": [f.to_json() for f in self.folds]}


# --- settings, device, seeds ------------------------------------------------------------------


def checked_settings(table: dict[str, Any]) -> dict[str, Any]:
    """``[train]`` once the settings agree with each other (each one's range is checked as the
    configuration loads), or a ConfigError naming them."""
    if table["width"] % table["heads"]:
        raise ConfigError(f"[train] heads ({table['heads']}) must divide width ({table['width']})")
    return table


def pick_device(name: str) -> torch.device:
    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError as problem:
            raise ConfigError(f"[train] device '{name}': {problem}") from None
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


@contextlib.contextmanager
def seeded(seed: int, deterministic: bool) -> Iterator[None]:
    """Seed Python, numpy and torch; in deterministic mode allow deterministic kernels only, and
    restore torch's global mode afterwards (other code in the process may not want it)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    previous = torch.are_deterministic_algorithms_enabled()
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False
        torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


# --- one fold ---------------------------------------------------------------------------------


def scores(labels: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import accuracy_score, f1_score

    return {
        "waf": float(f1_score(labels, predicted, average="weighted", zero_division=0)),
        "macro_f1": float(f1_score(labels, predicted, average="macro", zero_division=0)),
        "accuracy": float(accuracy_score(labels, predicted)),
    }


def predict_logits(model: FusionNetwork, table: TrainingTable, indices: Sequence[int], device: torch.device,
                   batch_size: int) -> torch.Tensor:
    model.eval()
    outputs = []
    with torch.no_grad():
        for start in range(0, len(indices), batch_size):
            batch = collate(table, indices[start:start + batch_size]).to(device)
            outputs.append(model(batch.values, batch.masks).logits.float().cpu())
    return torch.cat(outputs)


def train_fold(table: TrainingTable, split: Split, settings: dict[str, Any], loss_component: Any,
               device: torch.device, on_epoch: EpochCallback | None = None) -> FoldResult:
    """Train one fold; returns the weights of the epoch with the best validation WAF and the
    temperature that calibrates them on the same validation clips."""
    seed = settings["seed"] + split.fold
    torch.manual_seed(seed)
    model = FusionNetwork(table.inputs, len(table.classes), ModelSettings.from_table(settings))
    model.standardise_with(feature_statistics(table, split.train))
    model.to(device)
    loss_fn = loss_component.build(table.class_counts(split.train), settings["projection_dim"]).to(device)
    optimizer = torch.optim.AdamW([*model.parameters(), *loss_fn.parameters()], lr=settings["lr"],
                                  weight_decay=settings["weight_decay"])
    batch_size, epochs = settings["batch_size"], settings["epochs"]
    total_steps = epochs * math.ceil(len(split.train) / batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps)))
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    generator = torch.Generator().manual_seed(seed)
    val_labels = table.labels[split.val]
    best: dict[str, Any] = {"waf": -1.0}
    history = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        model.train()
        order = split.train[torch.randperm(len(split.train), generator=generator).numpy()]
        total, seen = 0.0, 0
        for start in range(0, len(order), batch_size):
            batch = collate(table, order[start:start + batch_size]).to(device)
            with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=amp):
                output = model(batch.values, batch.masks)
            embeddings = output.embeddings if loss_component.uses_embeddings else None
            loss = loss_fn(output.logits, embeddings, batch.labels)
            if not torch.isfinite(loss):
                raise DataError(f"fold {split.fold}, epoch {epoch}: the training loss is {loss.item()}; "
                                "lower train.lr or check the features")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            schedule.step()
            total += loss.item() * len(batch.labels)
            seen += len(batch.labels)
        predicted = predict_logits(model, table, split.val, device, batch_size).argmax(dim=1).numpy()
        record = {"epoch": epoch, "train_loss": total / seen, **{f"val_{k}": v for k, v in scores(val_labels, predicted).items()},
                  "lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
        history.append(record)
        if on_epoch is not None:
            on_epoch(split.fold, epoch, epochs, record)
        if record["val_waf"] > best["waf"]:
            best = {"waf": record["val_waf"], "macro_f1": record["val_macro_f1"], "accuracy": record["val_accuracy"],
                    "epoch": epoch, "state": copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})}
        elif settings["patience"] and epoch - best["epoch"] >= settings["patience"]:
            break
    model.load_state_dict(best["state"])
    calibration = fit_temperature(predict_logits(model, table, split.val, device, batch_size).numpy(), val_labels)
    return FoldResult(split.fold, best["epoch"], best["waf"], best["macro_f1"], best["accuracy"], history,
                      best["state"], len(split.train), [table.clip_ids[i] for i in split.val],
                      [table.clip_ids[i] for i in split.train], calibration)


# --- the run ----------------------------------------------------------------------------------


def run_name(name: str | None, loss: str) -> str:
    if name:
        if "/" in name or "\\" in name or name.startswith("."):
            raise DataError(f"--name {name!r}: a run name is one folder name")
        return name
    return f"{datetime.now(timezone.utc).strftime('%Y%m%d-%H%M%S')}-{loss}"


def recorded_manifests(run: Path) -> dict[str, Any] | None:
    """The feature manifests an earlier run in ``run`` was trained on, if there is one."""
    path = run / "config.json"
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["manifests"]
    except (OSError, ValueError, KeyError, TypeError) as problem:
        raise DataError(f"{path}: unreadable run configuration ({problem})") from None


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    write_bytes(path, save({k: v.contiguous() for k, v in state.items()}))


@dataclass
class TrainedFold:
    """One fold of a run, ready to predict: its network, the temperature that calibrates it, and
    the clips it was trained and selected on (``train_clip_ids`` is ``None`` for runs written
    before they were recorded)."""

    fold: int
    model: FusionNetwork
    temperature: float
    val_clips: list[str]
    train_clip_ids: list[str] | None


@dataclass
class TrainedRun:
    path: Path
    config: dict[str, Any]
    folds: list[TrainedFold]

    @property
    def classes(self) -> list[str]:
        return list(self.config["classes"])


def _read_run_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: missing, so {path.parent} is not a training run") from None
    except (OSError, UnicodeDecodeError, ValueError) as problem:
        raise DataError(f"{path}: unreadable ({problem})") from None


def _run_documents(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's config.json and the fold records of its metrics.json, checked for what loading needs."""
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    run_config, metrics = _read_run_json(run / "config.json"), _read_run_json(run / "metrics.json")
    try:
        if not (isinstance(run_config["classes"], list) and isinstance(run_config["manifests"], dict)
                and isinstance(run_config["train"], dict)):
            raise TypeError("classes, manifests or train has the wrong type")
        for spec in run_config["inputs"]:
            InputSpec(**spec)
    except (KeyError, TypeError) as problem:
        raise DataError(f"{run / 'config.json'}: not a run configuration ({problem!r})") from None
    folds = metrics.get("folds") if isinstance(metrics, dict) else None
    if not folds or not all(isinstance(f, dict) and {"fold", "weights", "val_clips"} <= set(f) for f in folds):
        raise DataError(f"{run / 'metrics.json'}: no fold records with fold, weights and val_clips")
    return run_config, folds


def _load_fold(run: Path, run_config: dict[str, Any], record: dict[str, Any]) -> TrainedFold:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = run / str(record["weights"])
    if weights.parent != run or not weights.is_file():
        raise DataError(f"{weights}: missing, so fold {record['fold']} of the run has no weights")
    temperature = record.get("temperature", 1.0)  # runs written before calibration: T = 1
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise DataError(f"{run / 'metrics.json'}: fold {record['fold']} has temperature {temperature!r}, "
                        "not a positive number")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as problem:
        raise DataError(f"{weights}: not readable safetensors weights ({problem})") from None
    try:
        model = FusionNetwork([InputSpec(**spec) for spec in run_config["inputs"]], len(run_config["classes"]),
                              ModelSettings.from_table(run_config["train"]))
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError) as problem:
        first_line = str(problem).strip().splitlines()[0]
        raise DataError(f"{weights}: does not fit the network {run / 'config.json'} describes ({first_line})") from None
    return TrainedFold(int(record["fold"]), model.eval(), float(temperature), list(record["val_clips"]),
                       record.get("train_clip_ids"))


def load_run(run: Path) -> TrainedRun:
    """Every fold of the run in folder ``run``; a missing or corrupt file is a DataError naming it."""
    run_config, folds = _run_documents(run)
    return TrainedRun(run, run_config, [_load_fold(run, run_config, record) for record in folds])


def load_model(run: Path, fold: int | None = None) -> tuple[FusionNetwork, dict[str, Any]]:
    """The network of a run (its first fold unless ``fold`` is given) and the run's config."""
    run_config, folds = _run_documents(run)
    chosen = next((f for f in folds if fold is None or f["fold"] == fold), None)
    if chosen is None:
        raise DataError(f"{run}: no fold {fold}")
    return _load_fold(run, run_config, chosen).model, run_config


def plot_curves(path: Path, folds: Sequence[FoldResult]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    figure = Figure(figsize=(9, 3.5))
    loss_axes, waf_axes = figure.subplots(1, 2)
    for result in folds:
        epochs = [r["epoch"] for r in result.history]
        loss_axes.plot(epochs, [r["train_loss"] for r in result.history], label=f"fold {result.fold}")
        waf_axes.plot(epochs, [r["val_waf"] for r in result.history], label=f"fold {result.fold}")
        waf_axes.axvline(result.best_epoch, linestyle=":", linewidth=0.8)
    for axes in (loss_axes, waf_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    loss_axes.set(title="training loss", xlabel="epoch")
    waf_axes.set(title="validation WAF", xlabel="epoch", ylim=(0, 1))
    waf_axes.legend(fontsize="small")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    write_bytes(path, buffer.getvalue())


def train(config: Config, workspace: Workspace, labels: Path, *, name: str | None = None,
          group_column: str | None = None, folds: int | None = None,
          on_epoch: EpochCallback | None = None) -> RunResult:
    """Build the training table, train every fold and write the run folder."""
    settings = checked_settings(config.table("train"))
    loss_component = plugins.build("losses", settings["loss"], config)
    table = build_table(config, workspace.features, labels, settings["features"] or None)
    run = workspace.runs / run_name(name, settings["loss"])
    expected = recorded_manifests(run)
    if expected is not None:
        check_expected_inputs(table.sets, expected, str(run / "config.json"))
    splits = plan_splits(table, seed=settings["seed"], folds=folds, group_column=group_column,
                         val_fraction=settings["val_fraction"])
    for split in splits:
        refuse_label_leaks(table, split.val, "validation")
        if len(np.unique(table.labels[split.train])) < 2:
            raise DataError(f"fold {split.fold}: the training clips cover one class only; training needs two or more")
    device = pick_device(settings["device"])
    with seeded(settings["seed"], settings["deterministic"]):
        results = [train_fold(table, split, settings, loss_component, device, on_epoch) for split in splits]
    used_priors = [p.name for p in injected_priors(table.inputs, ModelSettings.from_table(settings))]
    priors_note = _priors_note(table.inputs, used_priors, settings["priors"])
    for result in results:
        result.weights = "model.safetensors" if len(results) == 1 else f"model-fold{result.fold}.safetensors"
        save_weights(run / result.weights, result.state)
    for stale in set(run.glob("model*.safetensors")) - {run / r.weights for r in results}:
        stale.unlink()  # an earlier run in this folder with another number of folds
    shutil.rmtree(run / "eval", ignore_errors=True)  # reports of the models just replaced
    best = {
        "epoch": round(float(np.mean([r.best_epoch for r in results]))),
        "waf": float(np.mean([r.waf for r in results])),
        "macro_f1": float(np.mean([r.macro_f1 for r in results])),
    }
    validation = ({"mode": "k-fold", "folds": folds, "group_column": group_column} if folds is not None
                  else {"mode": "group holdout", "group_column": group_column, "val_fraction": settings["val_fraction"]}
                  if group_column is not None else {"mode": "split column"})
    write_json(run / "config.json", {
        "classes": table.classes,
        "loss": {"name": loss_component.name, "version": loss_component.version, "settings": loss_component.settings},
        "train": settings,
        "seed": settings["seed"],
        "inputs": [asdict(spec) for spec in table.inputs],
        "manifests": table.manifests(),
        "priors": used_priors,
        "validation": validation,
        "labels": str(labels.resolve()),
        "excluded": table.excluded,
        "device": str(device),
        "mixed_precision": device.type == "cuda",
    })
    write_json(run / "history.json", {"folds": [{"fold": r.fold, "epochs": r.history} for r in results]})
    write_json(run / "metrics.json", {"best": best, "folds": [r.to_json() for r in results]})
    plot_curves(run / "curves.png", results)
    epoch_seconds = [record["seconds"] for r in results for record in r.history]
    return RunResult(run, results, table.inputs, table.manifests(), priors_note, table.excluded, str(device),
                     float(np.mean(epoch_seconds)), best)


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

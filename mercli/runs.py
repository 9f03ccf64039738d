"""Run folders: the files a trained run is made of, written as one unit and loaded back checked.

A run folder ``runs/<name>/`` holds ``model.safetensors`` (``model-fold<k>.safetensors`` per fold
under k-fold), ``config.json``, ``history.json``, ``metrics.json`` and ``curves.png`` (mercli.train
says what they record). A run is never a mix of two trainings: the new one is written whole into a
hidden staging folder beside it, ``runs/.<name>.<random>.part``, which then takes the name in one
step (an exchange of the two folders where the system has one), so that a crash at any point leaves
the complete old run or the complete new one under the name. Hidden folders are never runs: run
names cannot start with a dot, so listings and ``--checkpoint`` skip or refuse them, and the next
training of the same name removes the staging folders a killed one left (a lock held while writing
tells them from one that another process is writing now).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import math
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from mercli.atomic import hidden_twin, read_json, write_bytes, write_json
from mercli.errors import ConfigError, DataError
from mercli.model import FusionNetwork, InputSpec
from mercli.settings import TrainSettings
from mercli.workspace import Workspace

try:
    import fcntl
except ImportError:  # Windows: no locks, so staging folders left by a killed train are kept
    fcntl = None  # type: ignore[assignment]

CONFIG, HISTORY, METRICS, CURVES = "config.json", "history.json", "metrics.json", "curves.png"


def weights_name(fold: int, folds: int) -> str:
    """The weights file of ``fold`` in a run of ``folds`` folds."""
    return "model.safetensors" if folds == 1 else f"model-fold{fold}.safetensors"


def save_weights(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save

    write_bytes(path, save({k: v.contiguous() for k, v in state.items()}))


# --- writing a run as one unit ----------------------------------------------------------------


@dataclass
class RunFiles:
    """Everything a run folder holds, ready to write: weights per file name, the three JSON
    documents and the PNG of the training curves."""

    weights: dict[str, dict[str, torch.Tensor]]
    config: dict[str, Any]
    history: dict[str, Any]
    metrics: dict[str, Any]
    curves: bytes


def _is_staging(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".part")


def _stale_staging(run: Path) -> list[Path]:
    pattern = re.compile(rf"\.{re.escape(run.name)}\.[0-9a-f]{{12}}\.part")
    return [p for p in run.parent.glob(f".{run.name}.*.part") if pattern.fullmatch(p.name) and p.is_dir()]


def check_writable(run: Path) -> None:
    """Refuse, before any training, a run folder that cannot be written: ``runs/`` is created and a
    staging folder made and removed in it; a file, or a folder that is not a run, is not replaced."""
    if run.exists() and not run.is_dir():
        raise DataError(f"{run}: exists and is not a folder, so a run cannot be written there")
    if run.is_dir() and not (run / CONFIG).exists() and any(run.iterdir()):
        raise DataError(f"{run}: holds files but no {CONFIG}, so it is not a training run to replace; "
                        "choose another --name or remove it")
    if run.parent.exists() and not run.parent.is_dir():
        raise DataError(f"{run.parent}: not a folder, so no run can be written in it")
    probe = hidden_twin(run)
    try:
        run.parent.mkdir(parents=True, exist_ok=True)
        probe.mkdir()
        probe.rmdir()
    except OSError as problem:
        raise DataError(f"{run.parent}: cannot write runs there ({problem.strerror or problem})") from None


@contextlib.contextmanager
def _locked(folder: Path, wait: bool) -> Iterator[int | None]:
    """An exclusive lock on ``folder`` while the block runs: its descriptor, or ``None`` where another
    process holds the lock and ``wait`` is false, or where the system has no locks (Windows)."""
    if fcntl is None:
        yield None
        return
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(descriptor)
        yield None
        return
    try:
        yield descriptor
    finally:
        os.close(descriptor)


def _remove_stale(run: Path) -> None:
    """Remove the staging folders of ``run`` that no live process is writing (none without locks)."""
    for staging in _stale_staging(run):
        with contextlib.suppress(OSError), _locked(staging, wait=False) as free:
            if free is not None:
                shutil.rmtree(staging, ignore_errors=True)


def _exchange(first: Path, second: Path) -> bool:
    """Swap two folders in one step (Linux's renameat2 with RENAME_EXCHANGE); ``False`` where the
    system or file system has no such call."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError, TypeError):
        return False
    at_cwd, rename_exchange = -100, 2
    if renameat2(at_cwd, os.fsencode(first), at_cwd, os.fsencode(second), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


def _swap_in(staging: Path, run: Path) -> None:
    """Give the complete run in ``staging`` the name ``run``; the old run, if any, ends up at
    ``staging`` or is removed. Without an exchange call, two renames leave the name empty for a
    moment (a crash then leaves the old run under a staging name, removed by the next training)."""
    if not run.exists():
        os.rename(staging, run)
    elif not _exchange(staging, run):
        aside = hidden_twin(run)
        os.rename(run, aside)
        try:
            os.rename(staging, run)
        except OSError:
            os.rename(aside, run)
            raise
        shutil.rmtree(aside, ignore_errors=True)


def write_run(run: Path, files: RunFiles) -> None:
    """Write ``files`` as the run ``run``, replacing an earlier run of that name whole (its eval
    reports included) or not at all; an OSError is one line naming the path, the old run intact."""
    _remove_stale(run)
    staging = hidden_twin(run)
    try:
        staging.mkdir()
        with _locked(staging, wait=True) as descriptor:
            for name, state in files.weights.items():
                save_weights(staging / name, state)
            write_json(staging / CONFIG, files.config)
            write_json(staging / HISTORY, files.history)
            write_json(staging / METRICS, files.metrics)
            write_bytes(staging / CURVES, files.curves)
            if descriptor is not None:
                os.fsync(descriptor)  # the folder's entries are on disk before it takes the name
            _swap_in(staging, run)
    except OSError as problem:
        raise DataError(f"{problem.filename or staging}: {problem.strerror or problem}; {run} is left as "
                        "it was") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)  # the old run after a swap, the new one after a failure


# --- finding and loading a run ----------------------------------------------------------------


def resolve_run(workspace: Workspace, checkpoint: str | None, given_as: str = "--checkpoint ") -> Path:
    """A run folder from ``--checkpoint``: a run name under ``runs/``, a folder, or (``None``) the
    run whose config.json was written last. Staging folders are never runs. ``given_as`` is how
    an error names the option (empty for an argument)."""
    if checkpoint is None:
        written = [path.parent for path in workspace.runs.glob(f"*/{CONFIG}") if not path.parent.name.startswith(".")]
        if not written:
            raise DataError(f"{workspace.runs}: no training runs; run `mer train` or name one with --checkpoint")
        return max(written, key=lambda run: (run / CONFIG).stat().st_mtime)
    given = Path(checkpoint).expanduser()
    candidates = [given] if len(given.parts) > 1 or given.is_absolute() else [workspace.runs / checkpoint, given]
    found = next((c for c in candidates if c.is_dir()), None)
    if found is None:
        raise DataError(f"{given_as}{checkpoint}: no such run folder (looked in {', '.join(map(str, candidates))})")
    if _is_staging(found.resolve()):
        raise DataError(f"{found}: the staging folder of an unfinished `mer train`, not a run")
    return found


def recorded_manifests(run: Path) -> dict[str, Any] | None:
    """The feature manifests an earlier run in ``run`` was trained on, if there is one."""
    path = run / CONFIG
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))["manifests"]
    except (OSError, ValueError, KeyError, TypeError) as problem:
        raise DataError(f"{path}: unreadable run configuration ({problem})") from None


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


def _check_config(path: Path, run_config: Any) -> None:
    """What loading needs of config.json: classes, train settings, the inputs of the network, and
    a manifest for every input (predict rebuilds the encoders from them, eval reads their sets)."""
    try:
        if not (isinstance(run_config["classes"], list) and isinstance(run_config["manifests"], dict)
                and isinstance(run_config["train"], dict)):
            raise TypeError("classes, manifests or train has the wrong type")
        inputs = [InputSpec(**spec) for spec in run_config["inputs"]]
    except (KeyError, TypeError) as problem:
        raise DataError(f"{path}: not a run configuration ({problem!r})") from None
    unrecorded = [spec.name for spec in inputs if spec.name not in run_config["manifests"]]
    if unrecorded:
        raise DataError(f"{path}: its inputs name feature set(s) {', '.join(unrecorded)} that its manifests do "
                        "not record")


def _run_documents(run: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A run's config.json and the fold records of its metrics.json, checked for what loading needs."""
    if not run.is_dir():
        raise DataError(f"{run}: no such run folder")
    incomplete = f"missing, so {run} is not a complete training run"
    run_config, metrics = read_json(run / CONFIG, incomplete), read_json(run / METRICS, incomplete)
    _check_config(run / CONFIG, run_config)
    folds = metrics.get("folds") if isinstance(metrics, dict) else None
    if not folds or not all(isinstance(f, dict) and {"fold", "weights", "val_clips"} <= set(f) for f in folds):
        raise DataError(f"{run / METRICS}: no fold records with fold, weights and val_clips")
    return run_config, folds


def _load_fold(run: Path, run_config: dict[str, Any], record: dict[str, Any]) -> TrainedFold:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    weights = run / str(record["weights"])
    if weights.parent != run or not weights.is_file():
        raise DataError(f"{weights}: missing, so fold {record['fold']} of the run has no weights")
    temperature = record.get("temperature", 1.0)  # runs written before calibration: T = 1
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < math.inf:
        raise DataError(f"{run / METRICS}: fold {record['fold']} has temperature {temperature!r}, "
                        "not a positive number")
    try:
        state = load_file(weights)
    except (SafetensorError, OSError, ValueError) as problem:
        raise DataError(f"{weights}: not readable safetensors weights ({problem})") from None
    try:
        model = FusionNetwork([InputSpec(**spec) for spec in run_config["inputs"]], len(run_config["classes"]),
                              TrainSettings.from_record(run_config["train"]))
        model.load_state_dict(state)
    except (RuntimeError, ValueError, TypeError, ConfigError) as problem:
        first_line = str(problem).strip().splitlines()[0]
        raise DataError(f"{weights}: does not fit the network {run / CONFIG} describes ({first_line})") from None
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

"""Behaviour check: the same clips through an older mer and this one, then the workspaces compared.

Copies ``--clips N`` clips (spread over the sorted folder) of each ``--data`` folder (default:
``../shared/data/crema-d`` and ``mead``) with their labels, then, once per version, in a fresh
workspace at the same path (so that paths written into files agree) and with the same arguments:

    mer extract DIR --labels DIR/labels.csv          (each folder; default encoders)
    mer reason DIR --model local                      (each folder)
    mer -s train.epochs=3 train --labels FIRST/labels.csv --folds 2 --loss ce --deterministic --name behaviour
    mer eval --checkpoint behaviour

Each version runs as ``python -m mercli`` with its checkout as PYTHONPATH and the scratch folder as
the working directory (outside any checkout, so the right ``mercli`` is imported). The two
workspaces are then compared file by file, by kind:

- feature arrays (``features/**.npy``), transcripts and everything else not named below: bytes;
- feature manifests and absence records (``features/**.json``), reasoning traces
  (``reasoning/**.json``) and run configs (``runs/*/config.json``): equal JSON;
- run metrics, run history and eval metrics (``runs/*/metrics.json``, ``history.json``,
  ``eval/metrics.json``): equal JSON, numbers within ``--tolerance`` (default 1e-6);
- eval predictions (``eval/predictions.csv``): equal cells, numbers within the tolerance plus one
  unit of their last printed digit; weights (``*.safetensors``): same tensors, values within
  ``--weights-tolerance`` (default: the tolerance).

What is ignored, and nothing else: the JSON key ``created`` (a timestamp, in feature manifests,
trace provenance and the manifests a run config copies), the key ``seconds`` in run history (an
epoch's wall time), and plots (``*.png``: drawn from the history and eval metrics, which are
compared). The stages' exit statuses are compared too. Prints a table per kind and exits 1,
listing each differing path, when anything differs beyond the tolerance or exists in one only.

    .venv/bin/python benchmarks/behaviour.py --before CHECKOUT [--data DIR ...] [--clips 6] [--keep DIR]
        [--tolerance 1e-6] [--weights-tolerance T] [--train-set KEY=VALUE ...]
    .venv/bin/python benchmarks/behaviour.py --compare BEFORE_WORKSPACE AFTER_WORKSPACE
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data"
CLASSES = ["neutral", "angry", "happy", "sad", "fear", "disgust"]  # CREMA-D's six, mer's spelling
RUN = "behaviour"
IGNORED_EVERYWHERE = frozenset({"created"})
IGNORED_IN_HISTORY = frozenset({"created", "seconds"})
PRINTED_DECIMALS = 6  # eval/predictions.csv writes probabilities with six decimals


# --- comparing two workspaces ---------------------------------------------------------------------

@dataclass
class Outcome:
    """One file's comparison: ``None`` problem means equal; ``gap`` the largest numeric difference."""
    problem: str | None = None
    gap: float = 0.0


@dataclass
class Tally:
    compared: int = 0
    skipped: int = 0  # a kind not compared
    identical: int = 0
    equivalent: int = 0  # not bit for bit, but equal by the kind's rule (ignored keys, tolerance)
    differing: list[str] = field(default_factory=list)
    only_before: list[str] = field(default_factory=list)
    only_after: list[str] = field(default_factory=list)
    gap: float = 0.0


def strip(value: Any, ignored: frozenset[str]) -> Any:
    """The JSON value without the ignored keys, at any depth."""
    if isinstance(value, dict):
        return {key: strip(item, ignored) for key, item in value.items() if key not in ignored}
    if isinstance(value, list):
        return [strip(item, ignored) for item in value]
    return value


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def numeric_gap(before: float, after: float) -> float:
    """|before - after|; 0 for equal values (infinities, or NaN against NaN); inf for NaN against a number."""
    if before == after or (math.isnan(before) and math.isnan(after)):
        return 0.0
    gap = abs(before - after)
    return math.inf if math.isnan(gap) else gap


def json_difference(before: Any, after: Any, tolerance: float, where: str = "") -> Outcome:
    """The first place two JSON values differ (numbers within ``tolerance``), and the largest gap."""
    place = where or "."
    if is_number(before) and is_number(after):
        gap = numeric_gap(before, after)
        return Outcome(None if gap <= tolerance else f"{place}: {before!r} != {after!r}", gap)
    if type(before) is not type(after):
        return Outcome(f"{place}: {before!r} != {after!r}")
    if isinstance(before, dict):
        if before.keys() != after.keys():
            return Outcome(f"{place}: keys {sorted(before.keys() ^ after.keys())} in one only")
        pairs = [(f"{where}.{key}", before[key], after[key]) for key in before]
    elif isinstance(before, list):
        if len(before) != len(after):
            return Outcome(f"{place}: {len(before)} != {len(after)} items")
        pairs = [(f"{where}[{index}]", b, a) for index, (b, a) in enumerate(zip(before, after))]
    else:
        return Outcome(None if before == after else f"{place}: {before!r} != {after!r}")
    worst = Outcome()
    for inner, b, a in pairs:
        outcome = json_difference(b, a, tolerance, inner)
        worst.gap = max(worst.gap, outcome.gap)
        if outcome.problem:
            return Outcome(outcome.problem, worst.gap)
    return worst


def compare_json(ignored: frozenset[str], numeric: bool) -> Callable[[Path, Path, float], Outcome]:
    def compare(before: Path, after: Path, tolerance: float) -> Outcome:
        values = [strip(json.loads(path.read_text(encoding="utf-8")), ignored) for path in (before, after)]
        return json_difference(*values, tolerance if numeric else 0.0)
    return compare


def compare_bytes(before: Path, after: Path, tolerance: float) -> Outcome:
    return Outcome(None if before.read_bytes() == after.read_bytes() else "bytes differ")


def compare_csv(before: Path, after: Path, tolerance: float) -> Outcome:
    """Cells equal, numbers within the tolerance plus one unit of the last printed digit."""
    rows = [list(csv.reader(path.open(newline="", encoding="utf-8"))) for path in (before, after)]
    return json_difference(*[[[number(cell) for cell in row] for row in table] for table in rows],
                           tolerance + 10.0 ** -PRINTED_DECIMALS)


def number(cell: str) -> str | float:
    try:
        return float(cell)
    except ValueError:
        return cell


def compare_weights(before: Path, after: Path, tolerance: float) -> Outcome:
    from safetensors.numpy import load_file

    tensors = [load_file(str(path)) for path in (before, after)]
    if tensors[0].keys() != tensors[1].keys():
        return Outcome(f"tensors {sorted(tensors[0].keys() ^ tensors[1].keys())} in one only")
    worst = Outcome()
    for name, b in sorted(tensors[0].items()):
        a = tensors[1][name]
        if b.shape != a.shape or b.dtype != a.dtype:
            return Outcome(f"{name}: {b.dtype}{list(b.shape)} != {a.dtype}{list(a.shape)}")
        gap = float(np.max(np.abs(b.astype(np.float64) - a.astype(np.float64)), initial=0.0))
        worst.gap = max(worst.gap, gap)
        if not gap <= tolerance and worst.problem is None:
            worst.problem = f"{name}: values differ by up to {gap:.3g}"
    return worst


#: (kind, does a path belong to it, how two such files compare); the first matching kind wins.
KINDS: list[tuple[str, Callable[[tuple[str, ...]], bool], Callable[[Path, Path, float], Outcome] | None]] = [
    ("feature arrays", lambda p: p[0] == "features" and p[-1].endswith(".npy"), compare_bytes),
    ("feature manifests", lambda p: p[0] == "features" and p[-1].endswith(".json"),
     compare_json(IGNORED_EVERYWHERE, numeric=False)),
    ("transcripts", lambda p: p[0] == "transcripts", compare_bytes),
    ("traces", lambda p: p[0] == "reasoning" and p[-1].endswith(".json"), compare_json(IGNORED_EVERYWHERE, numeric=False)),
    ("run configs", lambda p: p[0] == "runs" and p[-1] == "config.json", compare_json(IGNORED_EVERYWHERE, numeric=False)),
    ("eval metrics", lambda p: p[0] == "runs" and p[-2:] == ("eval", "metrics.json"),
     compare_json(IGNORED_EVERYWHERE, numeric=True)),
    ("eval predictions", lambda p: p[0] == "runs" and p[-1] == "predictions.csv", compare_csv),
    ("run metrics", lambda p: p[0] == "runs" and p[-1] == "metrics.json", compare_json(IGNORED_EVERYWHERE, numeric=True)),
    ("run history", lambda p: p[0] == "runs" and p[-1] == "history.json", compare_json(IGNORED_IN_HISTORY, numeric=True)),
    ("weights", lambda p: p[-1].endswith(".safetensors"), compare_weights),
    ("plots (not compared)", lambda p: p[-1].endswith(".png"), None),
    ("other files", lambda p: True, compare_bytes),
]


def kind_of(relative: str) -> tuple[str, Callable[[Path, Path, float], Outcome] | None]:
    parts = tuple(relative.split("/"))
    return next((name, compare) for name, belongs, compare in KINDS if belongs(parts))


def files(workspace: Path) -> set[str]:
    return {path.relative_to(workspace).as_posix() for path in workspace.rglob("*") if path.is_file()}


def compare_workspaces(before: Path, after: Path, tolerance: float,
                       weights_tolerance: float | None = None) -> dict[str, Tally]:
    """Every file of either workspace, tallied under its kind; weights within ``weights_tolerance``
    (default ``tolerance``): Adam turns float-level gradient differences into larger weight ones."""
    tallies = {name: Tally() for name, _, _ in KINDS}
    left, right = files(before), files(after)
    for relative in sorted(left | right):
        name, compare = kind_of(relative)
        tally = tallies[name]
        if relative not in right:
            tally.only_before.append(relative)
        elif relative not in left:
            tally.only_after.append(relative)
        elif compare is None:
            tally.skipped += 1
        else:
            tally.compared += 1
            a, b = before / relative, after / relative
            if a.read_bytes() == b.read_bytes():
                tally.identical += 1
                continue
            outcome = compare(a, b, tolerance if name != "weights" or weights_tolerance is None else weights_tolerance)
            tally.gap = max(tally.gap, outcome.gap)
            if outcome.problem:
                tally.differing.append(f"{relative}: {outcome.problem}")
            else:
                tally.equivalent += 1
    return {name: tally for name, tally in tallies.items()
            if tally.compared or tally.skipped or tally.only_before or tally.only_after}


def print_table(tallies: dict[str, Tally], tolerance: float, weights_tolerance: float | None = None) -> bool:
    """The table and the differing paths; whether everything agreed."""
    print(f"{'kind':<22} {'in both':>7} {'compared':>8} {'identical':>9} {'equivalent':>10} {'differing':>9} "
          f"{'only before':>11} {'only after':>10} {'max |diff|':>10}")
    for name, t in tallies.items():
        print(f"{name:<22} {t.compared + t.skipped:>7} {t.compared:>8} {t.identical:>9} {t.equivalent:>10} {len(t.differing):>9} "
              f"{len(t.only_before):>11} {len(t.only_after):>10} {t.gap:>10.3g}")
    problems = [(label, path) for t in tallies.values()
                for label, paths in (("differs", t.differing), ("only before", t.only_before),
                                     ("only after", t.only_after)) for path in paths]
    print(f"(tolerance {tolerance:g}, weights {tolerance if weights_tolerance is None else weights_tolerance:g}; ignored: JSON key 'created', 'seconds' in run history, *.png)")
    for label, path in problems:
        print(f"{label}: {path}")
    return not problems


# --- running both versions -------------------------------------------------------------------------

def spread(items: list[Path], count: int) -> list[Path]:
    """``count`` items spread evenly over the sorted list (e.g. video and audio-only clips alike)."""
    if count >= len(items):
        return items
    return [items[index * len(items) // count] for index in range(count)]


def copy_clips(source: Path, target: Path, count: int) -> None:
    """``count`` clips of ``source`` and the labels of those clips into ``target``."""
    target.mkdir(parents=True)
    clips = spread(sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() not in {".csv", ".md"}), count)
    for clip in clips:
        shutil.copy2(clip, target / clip.name)
    labels = source / "labels.csv"
    if labels.is_file():
        keep = {clip.stem for clip in clips}
        with labels.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
        with (target / "labels.csv").open("w", newline="", encoding="utf-8") as handle:
            csv.writer(handle).writerows([rows[0], *(row for row in rows[1:] if row and row[0] in keep)])


def stage_commands(folders: list[Path], train_settings: list[str]) -> list[list[str]]:
    """The mer commands (after ``mer -w WORKSPACE``) both versions run, in order."""
    commands = []
    for folder in folders:
        labels = ["--labels", str(folder / "labels.csv")] if (folder / "labels.csv").is_file() else []
        commands.append(["extract", str(folder), *labels])
    commands += [["reason", str(folder), "--model", "local"] for folder in folders]
    overrides = [part for setting in ["train.epochs=3", *train_settings] for part in ("-s", setting)]
    commands.append([*overrides, "train", "--labels", str(folders[0] / "labels.csv"),
                     "--folds", "2", "--loss", "ce", "--deterministic", "--name", RUN])
    commands.append(["eval", "--checkpoint", RUN])
    return commands


def run_version(pythonpath: Path, scratch: Path, commands: list[list[str]]) -> tuple[list[int], float]:
    """The commands in a fresh ``scratch/workspace``; their exit statuses and the wall seconds."""
    workspace = scratch / "workspace"
    workspace.mkdir()
    (workspace / "mer.toml").write_text(f"[data]\nclasses = {json.dumps(CLASSES)}\n", encoding="utf-8")
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MER_")}
    environment["PYTHONPATH"] = str(pythonpath)
    statuses, started = [], time.perf_counter()
    for command in commands:
        full = [sys.executable, "-m", "mercli", "-w", str(workspace), *command]
        done = subprocess.run(full, cwd=scratch, env=environment, capture_output=True, text=True)
        if done.returncode not in (0, 1):  # 1: finished with some clips failed, compared below
            sys.exit(f"{pythonpath}: mer {' '.join(command)}: exit status {done.returncode}\n{done.stderr[-2000:]}")
        statuses.append(done.returncode)
    return statuses, time.perf_counter() - started


def run_both(arguments: argparse.Namespace, scratch: Path) -> bool:
    folders = []
    for source in arguments.data:
        copy_clips(source, scratch / "clips" / source.name, arguments.clips)
        folders.append(scratch / "clips" / source.name)
    commands = stage_commands(folders, arguments.train_set)
    statuses, wall = {}, {}
    for name, pythonpath in (("before", arguments.before.resolve()), ("after", ROOT)):
        statuses[name], wall[name] = run_version(pythonpath, scratch, commands)
        (scratch / "workspace").rename(scratch / name)
    counts = ", ".join(f"{folder.name} {sum(1 for p in folder.iterdir() if p.name != 'labels.csv')}" for folder in folders)
    print(f"clips: {counts}; wall s: before {wall['before']:.1f}, after {wall['after']:.1f}")
    agreed = statuses["before"] == statuses["after"]
    for command, b, a in zip(commands, statuses["before"], statuses["after"]):
        if b != a:
            print(f"exit status differs: mer {' '.join(command)}: before {b}, after {a}")
    return report(scratch / "before", scratch / "after", arguments) and agreed


def report(before: Path, after: Path, arguments: argparse.Namespace) -> bool:
    tolerances = arguments.tolerance, arguments.weights_tolerance
    return print_table(compare_workspaces(before, after, *tolerances), *tolerances)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--before", type=Path, help="checkout of the older mer (its PYTHONPATH)")
    what.add_argument("--compare", type=Path, nargs=2, metavar=("BEFORE", "AFTER"),
                      help="only compare two existing workspaces")
    parser.add_argument("--data", type=Path, nargs="+", default=[DATA / "crema-d", DATA / "mead"],
                        help="clip folders; the first one's labels train the run")
    parser.add_argument("--clips", type=int, default=6, help="clips per folder")
    parser.add_argument("--tolerance", type=float, default=1e-6)
    parser.add_argument("--weights-tolerance", type=float, help="for *.safetensors [default: --tolerance]")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="another -s setting for mer train in both versions, e.g. train.dropout=0")
    parser.add_argument("--keep", type=Path, help="folder for the clips and both workspaces (kept)")
    arguments = parser.parse_args(argv)
    if arguments.compare:
        return 0 if report(*arguments.compare, arguments) else 1
    if arguments.keep:
        arguments.keep.mkdir(parents=True)
        return 0 if run_both(arguments, arguments.keep.resolve()) else 1
    with tempfile.TemporaryDirectory(prefix="mer-behaviour-") as scratch:
        return 0 if run_both(arguments, Path(scratch)) else 1


if __name__ == "__main__":
    sys.exit(main())

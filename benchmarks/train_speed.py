"""Training speed: ``mer train`` against the MER2024 baseline's recipe, whole processes, one table.

Writes synthetic clips at MER2024 feature sizes (audio 1024, visual 768, text 5120, utterance level;
six classes in unequal shares, each class shifting the mean of every modality a little, so that the
WAF means something) as MERTools-layout folders of a workspace, then times, interleaved and
repeated, whole processes from start to exit:

- ``mer train --folds K --epochs E --loss L`` at mer's defaults otherwise, one line per loss;
- the reference, ``benchmarks/baseline_attention.py``: the baseline's attention network and training
  recipe (per-clip DataLoader, batch 32, Adam), on the same folds (``--reference-hidden`` sets its
  width: 256 as the baseline's default, 128 its smaller setting).

Prints, per contender, the median seconds, training samples per second (train clips x epochs x
folds over the median seconds), the mean validation WAF, the largest resident memory of one
process, and the ratio of the reference's median time to each. On CUDA (``--device cuda``) both
use mixed precision.

    .venv/bin/python benchmarks/train_speed.py [--clips 5000] [--folds 5] [--epochs 10] [--repeat 3]
        [--losses ce,bdcl] [--reference-hidden 256] [--device cpu] [--workspace DIR] [--also NAME=PYTHONPATH]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mercli.settings import MER2024_CLASSES

SETS = {"audio": ("chinese-hubert-large-UTT", 1024), "visual": ("clip-vit-large-patch14-UTT", 768),
        "text": ("Baichuan-13B-Base-UTT", 5120)}
CLASS_SHARES = [0.30, 0.22, 0.18, 0.14, 0.10, 0.06]
BENCHMARKS = Path(__file__).resolve().parent


def write_table(root: Path, clips: int, seed: int = 0) -> Path:
    """A workspace of ``clips`` synthetic clips in MERTools folders; returns its labels file."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(MER2024_CLASSES), size=clips, p=CLASS_SHARES)
    for modality, (folder, dim) in SETS.items():
        target = root / "features" / folder
        target.mkdir(parents=True, exist_ok=True)
        (target / "modality.txt").write_text(modality, encoding="utf-8")
        class_means = rng.normal(scale=0.03, size=(len(MER2024_CLASSES), dim)).astype(np.float32)
        for clip in range(clips):
            values = rng.normal(size=dim).astype(np.float32) + class_means[labels[clip]]
            np.save(target / f"clip{clip:06d}.npy", values)
    (root / "mer.toml").write_text(f"[data]\nclasses = {json.dumps(MER2024_CLASSES)}\n", encoding="utf-8")
    path = root / "labels.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "discrete"])
        writer.writerows((f"clip{clip:06d}", MER2024_CLASSES[label]) for clip, label in enumerate(labels))
    return path


@dataclass
class Contender:
    name: str
    command: list[str]
    run: str | None = None  # mer's run folder, where its WAF is read; None: the JSON line it prints
    pythonpath: str | None = None
    seconds: list[float] = field(default_factory=list)
    waf: list[float] = field(default_factory=list)
    peak_mib: list[float] = field(default_factory=list)


def run_once(contender: Contender, workspace: Path) -> None:
    """Time one whole process; read its WAF from its run folder (mer) or its JSON line (reference).
    It runs in the workspace, so that ``python -m mercli`` imports the mer its PYTHONPATH names, not
    a checkout that happens to be the current folder."""
    started = time.perf_counter()
    environment = {**os.environ, **({"PYTHONPATH": contender.pythonpath} if contender.pythonpath else {})}
    process = subprocess.Popen(contender.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=environment, cwd=workspace)
    output = process.stdout.read() if process.stdout else ""
    _pid, status, usage = os.wait4(process.pid, 0)
    contender.seconds.append(time.perf_counter() - started)
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"error: {' '.join(contender.command)} failed (exit {os.waitstatus_to_exitcode(status)})")
    contender.peak_mib.append(usage.ru_maxrss / 1024)
    if contender.run is not None:
        metrics = json.loads((workspace / "runs" / contender.run / "metrics.json").read_text(encoding="utf-8"))
        contender.waf.append(metrics["best"]["waf"])
    else:
        contender.waf.append(json.loads(output.strip().splitlines()[-1])["waf"])


def contenders(arguments: argparse.Namespace, workspace: Path, labels: Path) -> list[Contender]:
    common = ["--folds", str(arguments.folds), "--epochs", str(arguments.epochs)]
    reference = Contender(f"reference h{arguments.reference_hidden}",
                          [sys.executable, str(BENCHMARKS / "baseline_attention.py"), str(workspace), str(labels),
                           *common, "--hidden", str(arguments.reference_hidden), "--device", arguments.device])
    versions = [("mer", None), *(tuple(pair.split("=", 1)) for pair in arguments.also)]
    mer = [Contender(f"{version} {loss}", [sys.executable, "-m", "mercli", "-w", str(workspace), "train", "--labels",
                                           str(labels), "--loss", loss, "--name", f"speed-{version}-{loss}", *common],
                     f"speed-{version}-{loss}", pythonpath)
           for version, pythonpath in versions for loss in arguments.losses.split(",")]
    return [reference, *mer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=5000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--losses", default="ce,bdcl")
    parser.add_argument("--reference-hidden", type=int, default=256)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (mer: MER_TRAIN_DEVICE)")
    parser.add_argument("--workspace", type=Path, help="Where to write the table [default: a temporary folder].")
    parser.add_argument("--also", action="append", default=[], metavar="NAME=PYTHONPATH",
                        help="Time another mer checkout too (e.g. before=../old), in the same interleaved runs.")
    arguments = parser.parse_args()
    os.environ["MER_TRAIN_DEVICE"] = arguments.device
    with tempfile.TemporaryDirectory(prefix="mer-train-speed-") as scratch:
        workspace = arguments.workspace or Path(scratch)
        labels = write_table(workspace, arguments.clips)
        racers = contenders(arguments, workspace, labels)
        for _ in range(arguments.repeat):
            for contender in racers:
                run_once(contender, workspace)
    samples = arguments.clips * (arguments.folds - 1) / arguments.folds * arguments.epochs * arguments.folds
    reference = statistics.median(racers[0].seconds)
    print(f"{arguments.clips} clips, {arguments.folds} folds x {arguments.epochs} epochs on {arguments.device}, "
          f"{arguments.repeat} interleaved runs each (whole processes, start to exit)")
    print(f"{'contender':<16} {'median s':>9} {'runs s':>22} {'samples/s':>10} {'val WAF':>8} {'peak MiB':>9} "
          f"{'speed-up':>9}")
    for contender in racers:
        median = statistics.median(contender.seconds)
        runs = " ".join(f"{s:.0f}" for s in contender.seconds)
        print(f"{contender.name:<16} {median:>9.1f} {runs:>22} {samples / median:>10.0f} "
              f"{np.mean(contender.waf):>8.3f} {max(contender.peak_mib):>9.0f} {reference / median:>8.2f}x")


if __name__ == "__main__":
    main()

"""``mer predict`` latency: one clip from a cold start, and per clip when predicting a folder.

Trains a small run first (extract with the default encoders, local priors, bdcl, 2 folds) on a
labelled folder, then times, in separate processes: ``mer predict ONE_CLIP`` (cold: interpreter
start, imports, model loading, one clip) and ``mer predict FOLDER --json`` (the per-clip
``seconds`` of every clip after the first, models already loaded). With ``--reference PYTHONPATH``
the same commands also run on another version of mer (a checkout of an older commit, first on
the path, e.g. ``git worktree add --detach ../before fcbb5b8``), interleaved with this one, so
that both are measured under the same load; the machine's load average is printed with the
table, since a shared machine's figures move with it.

    .venv/bin/python benchmarks/predict.py [--clips ../shared/data/crema-d] [--repeat 3] [--reference DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av

ROOT = Path(__file__).resolve().parents[1]
VIDEO = {".mp4", ".flv", ".avi", ".mkv", ".mov", ".webm"}


def mer(workspace: Path, *args: str, pythonpath: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mercli", "-w", str(workspace), *args]
    environment = dict(os.environ, PYTHONPATH=pythonpath) if pythonpath else None
    return subprocess.run(command, capture_output=True, text=True, check=True, env=environment)


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure(workspace: Path, one: Path, videos: list[Path], pythonpath: str | None
            ) -> tuple[float, float, list[float], float]:
    """(cold whole-process seconds of one clip, its CPU seconds (user + system: less moved by other
    processes' load than the wall clock), warm per-clip seconds, folder wall seconds)."""
    started, cpu = time.perf_counter(), children_cpu()
    mer(workspace, "predict", str(one), pythonpath=pythonpath)
    cold, cold_cpu = time.perf_counter() - started, children_cpu() - cpu
    started = time.perf_counter()
    output = mer(workspace, "predict", *map(str, videos), "--json", pythonpath=pythonpath).stdout
    folder_wall = time.perf_counter() - started
    return cold, cold_cpu, [json.loads(line)["seconds"] for line in output.splitlines()[1:]], folder_wall


def duration(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(container.duration or 0) / av.time_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "data" / "crema-d")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reference", help="PYTHONPATH of another mer version to time in the same run")
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workspace = Path(folder) / "ws"
        clips = Path(folder) / "clips"
        shutil.copytree(arguments.clips, clips)
        workspace.mkdir()
        (workspace / "mer.toml").write_text('[data]\nclasses = ["neutral", "angry", "happy", "sad", "fear", "disgust"]\n')
        mer(workspace, "extract", str(clips))
        mer(workspace, "reason", str(clips))
        mer(workspace, "train", "--labels", str(clips), "--folds", "2", "--epochs", "5", "--name", "bench")
        videos = sorted(p for p in clips.iterdir() if p.suffix.lower() in VIDEO)
        one = videos[0]
        versions = {"this": None, **({"reference": arguments.reference} if arguments.reference else {})}
        results: dict[str, tuple[list[float], list[float], list[float], float]] = {
            name: ([], [], [], 0.0) for name in versions}
        for _ in range(arguments.repeat):  # interleaved: both versions see the same load
            for name, pythonpath in versions.items():
                cold, cpu, warm, wall = measure(workspace, one, videos, pythonpath)
                colds, cpus, warms, slowest = results[name]
                results[name] = (colds + [cold], cpus + [cpu], warms + warm, max(slowest, wall))
        one_seconds, others_seconds = duration(one), statistics.mean(map(duration, videos[1:]))
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} CPUs")
    print(f"{'version':<10} {'measure':<34} {'clips':>5} {'clip s':>7} {'seconds':>8}")
    for name, (cold, cpu, warm, wall) in results.items():
        print(f"{name:<10} {'cold: one clip, whole process':<34} {1:>5} {one_seconds:>7.2f} {statistics.median(cold):>8.2f}"
              f"   (median of {len(cold)}: {', '.join(f'{c:.2f}' for c in cold)})")
        print(f"{name:<10} {'cold: its CPU seconds (user+sys)':<34} {1:>5} {one_seconds:>7.2f} {statistics.median(cpu):>8.2f}"
              f"   (median of {len(cpu)}: {', '.join(f'{c:.2f}' for c in cpu)})")
        print(f"{name:<10} {'warm: per clip in a folder':<34} {len(warm):>5} {others_seconds:>7.2f} "
              f"{statistics.median(warm):>8.2f}   (max {max(warm):.2f})")
        print(f"{name:<10} {'folder: whole process (slowest)':<34} {len(videos):>5} {'':>7} {wall:>8.2f}")


if __name__ == "__main__":
    main()

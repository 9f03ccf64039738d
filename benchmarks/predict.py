"""``mer predict`` latency: one clip from a cold start, and per clip when predicting a folder.

Trains a small run first (extract with the default encoders, local priors, bdcl, 2 folds) on a
labelled folder, then times, in separate processes: ``mer predict ONE_CLIP`` (cold: interpreter
start, imports, model loading, one clip) and ``mer predict FOLDER --json`` (the per-clip
``seconds`` of every clip after the first, models already loaded).

    .venv/bin/python benchmarks/predict.py [--clips ../shared/data/crema-d] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
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


def mer(workspace: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mercli", "-w", str(workspace), *args]
    return subprocess.run(command, capture_output=True, text=True, check=True)


def duration(path: Path) -> float:
    with av.open(str(path)) as container:
        return float(container.duration or 0) / av.time_base


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=Path, default=ROOT.parent / "shared" / "data" / "crema-d")
    parser.add_argument("--repeat", type=int, default=3)
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
        cold = []
        for _ in range(arguments.repeat):
            started = time.perf_counter()
            mer(workspace, "predict", str(one))
            cold.append(time.perf_counter() - started)
        started = time.perf_counter()
        lines = [json.loads(line) for line in mer(workspace, "predict", *map(str, videos), "--json").stdout.splitlines()]
        folder_wall = time.perf_counter() - started
        one_seconds, others_seconds = duration(one), statistics.mean(map(duration, videos[1:]))
    warm = [line["seconds"] for line in lines[1:]]
    print(f"{'measure':<34} {'clips':>5} {'clip s':>7} {'seconds':>8}")
    print(f"{'cold: one clip, whole process':<34} {1:>5} {one_seconds:>7.2f} {statistics.median(cold):>8.2f}"
          f"   (median of {arguments.repeat}: {', '.join(f'{c:.2f}' for c in cold)})")
    print(f"{'warm: per clip in a folder':<34} {len(warm):>5} {others_seconds:>7.2f} "
          f"{statistics.median(warm):>8.2f}   (max {max(warm):.2f})")
    print(f"{'folder: whole process':<34} {len(videos):>5} {'':>7} {folder_wall:>8.2f}")


if __name__ == "__main__":
    main()

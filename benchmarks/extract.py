"""Speed and memory of ``mer extract`` with the default encoders, against the issue's floor of
2 s of video per wall second per worker; with ``--hf``, the speed of the transformers encoders.

    .venv/bin/python benchmarks/extract.py [--repeat N] [--workers 1 2] [--threads N] [--clips DIR ...]
    .venv/bin/python benchmarks/extract.py --hf [--full] [--batch-size N ...] [--clips DIR ...]

Datasets: ../shared/data/crema-d and ../shared/data/mer2023, or the folders given with ``--clips``
(repeatable; ``DIR/labels.csv`` is passed as ``--labels`` when it exists). For each dataset and
worker count the script runs, as a user would and in a fresh temporary workspace each time (so
nothing is skipped):

    mer -w WORKSPACE extract DIR --labels DIR/labels.csv --workers N --json

and reads the done and failed counts from the JSON document. Every number comes from this run,
on this machine:

* **Media** is measured with ``mercli.media.probe``: seconds of video (clips with a video stream)
  and seconds of all media (audio-only clips included) are reported apart.
* **Peak memory.** "max RSS" is ``ru_maxrss`` from ``os.wait4`` on the ``mer`` process: the
  largest *single* process of the tree (the main process or one worker), not their sum. "tree
  PSS" adds the proportional set size of every process of the tree (shared library pages split
  between the processes that map them), sampled every 0.5 s from /proc: with several workers it
  is the figure to size a machine by, and a sample can miss a short spike.
* **Start-up.** Interpreter start, imports and model loading are paid once per process. A second
  run extracts a folder holding one copy of the dataset's shortest video clip per worker; its
  wall time is the "start-up run" (start-up plus one short clip per worker), and the rate "after
  start-up" is (media of the full run - media of the start-up run) / (wall of the full run - wall
  of the start-up run).
* **Where the time goes.** In this process (with ``--threads N`` threads, as one of several
  workers would run), one worker's steps are timed apart over the same clips, in the order
  ``mer extract`` runs them: decoding (``mercli.media.decode`` with the extract defaults), the
  transcript (labels, else Whisper ASR), then each encoder's ``encode``. The first
  clip loads the models and is reported on its own; the steady figures come from a second pass
  over every clip. Work shared between components is charged to the one that runs first: the
  transcriber computes the Whisper encoder states the ``whisper`` encoder reuses, and
  ``face-landmarks`` tracks the face that ``fer-expression`` reuses. The Whisper encoder passes
  are counted and timed apart (one per clip with audio means nothing is computed twice). Like
  ``mer extract``, this process lets idle OpenMP threads sleep (``OMP_WAIT_POLICY=PASSIVE``).
* **What start-up imports.** The untimed run below is made with ``PYTHONPROFILEIMPORTTIME=1``:
  the import time of each top-level package in that ``mer extract`` process (one worker, in-process),
  lazy imports included, summed by package.

Before timing, one untimed run warms the page cache, so the first measured run does not pay for
reading the model files from disk. With ``--repeat N`` every run is made N times; wall times are
the median, memory the largest.

**Transformers encoders (``--hf``).** ``hf-audio`` and ``hf-vision`` (``input = "frame"``) run on
model folders this script writes with random weights (speed does not depend on the values): a small
configuration of each kind, and with ``--full`` the full-size HuBERT-large (1024-d, 24 layers,
16 heads, 4096 wide, layer-normalised convolutions) and CLIP ViT-L/14 vision tower (1024-d, 24
layers, 14-pixel patches, 224-pixel images). Every clip is decoded once, timed (one process, as
one ``mer extract`` worker decodes); then the clips go through ``encode_batch`` at each batch size
of a doubling ladder until the rate stops rising by 5% (or memory runs out), and the best is kept.
Rates are seconds of media per second of model time, and clips per second; on CUDA (half precision)
the peak GPU memory is reported. The bottleneck is whichever of one decoding worker and the model
handles fewer seconds of media per second. With ``--batch-size N ...`` the clips then go through the
extraction chain itself in groups of N (``mer extract --workers 1 --batch-size N``: each group
through ``encode_batch`` while a background thread decodes the next), and decoding (in the
thread), encoding and the time the encoders waited for a decoded group after the first are timed
apart: decoding keeps up when that wait is under 5% of the wall time. ``input = "face"`` adds the face tracking, which the
default encoders' breakdown times as ``face-landmarks``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from rich.console import Console
from rich.table import Table

from mercli import config as configuration, plugins
from mercli.clips import Clip, discover
from mercli.chain import ClipEncoder, absence
from mercli.extract import grouped, groups_ahead, manifest_for, select_encoders
from mercli.labels import read_labels
from mercli.media import decode, probe

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_DATASETS = [SHARED_DATA / "crema-d", SHARED_DATA / "mer2023"]
FLOOR = 2.0  # seconds of video per wall second per worker (issue 3)
SAMPLE_SECONDS = 0.5
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


@dataclass(frozen=True)
class Media:
    clips: int
    video_seconds: float
    media_seconds: float


@dataclass(frozen=True)
class Run:
    wall: float
    max_rss_mib: float
    tree_pss_mib: float
    done: int
    failed: int


@dataclass(frozen=True)
class Row:
    dataset: str
    workers: int
    media: Media
    full: Run
    startup_media: Media
    startup: Run


def measure_media(clips: list[Path]) -> Media:
    infos = [probe(clip) for clip in clips]
    return Media(len(infos), sum(i.duration for i in infos if i.has_video), sum(i.duration for i in infos))


def mer_command() -> list[str]:
    """The console script beside this interpreter (what a user runs), else ``python -m mercli``."""
    script = Path(sys.executable).with_name("mer")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "mercli"]


def children_by_parent() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = defaultdict(list)
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # the process ended while we looked
                continue
            parent = int(stat.rpartition(")")[2].split()[1])
            tree[parent].append(int(entry.name))
    return tree


def tree_pss_kib(root: int) -> int:
    """Sum of the proportional set size of ``root`` and its descendants, now."""
    tree = children_by_parent()
    pending, total = [root], 0
    while pending:
        pid = pending.pop()
        pending.extend(tree.get(pid, []))
        try:
            rollup = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        total += next((int(line.split()[1]) for line in rollup.splitlines() if line.startswith("Pss:")), 0)
    return total


def run_extract(folder: Path, labels: Path | None, workers: int,
                extra_environment: dict[str, str] | None = None) -> tuple[Run, str]:
    """One ``mer extract --json`` in a fresh workspace: its wall time and memory, and its stderr."""
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MER_")}
    environment.update(extra_environment or {})
    with tempfile.TemporaryDirectory(prefix="mer-bench-") as scratch:
        command = [*mer_command(), "-w", str(Path(scratch, "workspace")), "extract", str(folder),
                   *(["--labels", str(labels)] if labels else []), "--workers", str(workers), "--json"]
        output, errors = Path(scratch, "stdout"), Path(scratch, "stderr")
        peak_pss = 0
        with output.open("wb") as out, errors.open("wb") as err:
            start = time.perf_counter()
            process = subprocess.Popen(command, cwd=scratch, env=environment, stdout=out, stderr=err)
            while True:
                pid, status, usage = os.wait4(process.pid, os.WNOHANG)
                if pid:
                    break
                peak_pss = max(peak_pss, tree_pss_kib(process.pid))
                time.sleep(SAMPLE_SECONDS)
            wall = time.perf_counter() - start
        process.returncode = os.waitstatus_to_exitcode(status)
        if process.returncode not in (0, 1):  # 1: finished with failed clips, which are counted
            last = errors.read_text(errors="replace").strip().splitlines()[-1:]
            sys.exit(f"{' '.join(command)}: exit status {process.returncode}: {' '.join(last)}")
        summary = json.loads(output.read_text())
        log = errors.read_text(errors="replace")
    return Run(wall, usage.ru_maxrss / 1024, peak_pss / 1024, summary["done"], len(summary["failed"])), log


def repeated(repeat: int, folder: Path, labels: Path | None, workers: int) -> Run:
    runs = [run_extract(folder, labels, workers)[0] for _ in range(repeat)]
    return Run(statistics.median(r.wall for r in runs), max(r.max_rss_mib for r in runs),
               max(r.tree_pss_mib for r in runs), runs[0].done, runs[0].failed)


def startup_folder(folder: Path, labels: Path | None, clips: list[Path], copies: int,
                   into: Path) -> tuple[Path, Path | None]:
    """A folder holding ``copies`` copies of the shortest video clip (the shortest clip when none
    has video), with a labels file whose rows are the original's row under the copies' names."""
    videos = [c for c in clips if probe(c).has_video] or clips
    shortest = min(videos, key=lambda c: probe(c).duration)
    names = [shortest.stem] + [f"{shortest.stem}-copy{n}" for n in range(2, copies + 1)]
    for name in names:
        shutil.copyfile(shortest, into / f"{name}{shortest.suffix}")
    if labels is None:
        return into, None
    with labels.open(newline="", encoding="utf-8") as source:
        reader = csv.DictReader(source)
        row = next((r for r in reader if r.get("name") == shortest.stem), None)
        fields = reader.fieldnames or []
    if row is None:
        return into, None
    copied_labels = into / "labels.csv"
    with copied_labels.open("w", newline="", encoding="utf-8") as target:
        writer = csv.DictWriter(target, fieldnames=fields)
        writer.writeheader()
        writer.writerows({**row, "name": name} for name in names)
    return into, copied_labels


def import_seconds(log: str) -> dict[str, float]:
    """Seconds spent importing each top-level package, from a ``PYTHONPROFILEIMPORTTIME`` log
    (a line per module: ``import time: self | cumulative | name``, nesting shown by indentation)."""
    spent: dict[str, float] = defaultdict(float)
    for line in log.splitlines():
        fields = line.split("|")
        if not line.startswith("import time:") or len(fields) != 3 or fields[2].startswith("  "):
            continue  # not a profile line, or a module imported by another one
        if fields[1].strip().isdigit():  # else the header line
            spent[fields[2].strip().split(".")[0]] += int(fields[1]) / 1e6
    return dict(sorted(spent.items(), key=lambda item: -item[1]))


def imports_table(spent: dict[str, float], console: Console, shown: float = 0.05) -> None:
    table = Table(title="start-up: what one mer extract process imports (untimed run)", min_width=64)
    for column in ("top-level package", "import s"):
        table.add_column(column, justify="left" if column == "top-level package" else "right")
    for package, seconds in spent.items():
        if seconds >= shown:
            table.add_row(package, f"{seconds:.2f}")
    table.add_row(f"[bold]all {len(spent)} packages[/]", f"{sum(spent.values()):.2f}")
    console.print(table)


def per_worker_video_rate(video_seconds: float, wall: float, workers: int) -> float:
    return video_seconds / wall / workers


def floor_verdict(media: Media, rate: float) -> str:
    if not media.video_seconds:
        return "n/a (no video)"
    return "[green]yes[/]" if rate >= FLOOR else "[red]no[/]"


# --- where the time goes (in this process) ------------------------------------------------------


def time_steps(clips: list[Clip], config: configuration.Config, transcripts: dict[str, str],
               encoders: list, transcriber) -> dict[str, float]:
    """Seconds spent in each step, summed over ``clips``, in the order ``mer extract`` runs them."""
    spent: dict[str, float] = defaultdict(float)

    def timed(step: str, action):
        start = time.perf_counter()
        result = action()
        spent[step] += time.perf_counter() - start
        return result

    for clip in clips:
        decoded = timed("decode", lambda: decode(clip.path, clip.clip_id, fps=config.extract.fps,
                                                 sample_rate=config.extract.sample_rate))
        if clip.clip_id in transcripts:
            decoded.transcript = transcripts[clip.clip_id]
        elif "audio" not in decoded.absent:
            decoded.transcript = timed(f"transcribe ({transcriber.name})", lambda: transcriber.transcribe(decoded))
        for encoder in encoders:
            if absence(encoder, decoded) is None:
                timed(encoder.name, lambda: encoder.encode(decoded))
    return spent


@contextmanager
def whisper_passes() -> Iterator[list[float]]:
    """The seconds of every Whisper encoder pass made while the block runs."""
    from mer_plugins.encoders import whisper_models

    original = whisper_models.WhisperModel.encode
    passes: list[float] = []

    def timed(model, audio):
        start = time.perf_counter()
        try:
            return original(model, audio)
        finally:
            passes.append(time.perf_counter() - start)

    whisper_models.WhisperModel.encode = timed
    try:
        yield passes
    finally:
        whisper_models.WhisperModel.encode = original


def breakdown(folder: Path, labels: Path | None, media: Media, console: Console) -> None:
    config = configuration.load(None, environ={})
    clips = discover(folder)
    transcripts = {r.clip_id: r.transcript for r in read_labels(labels, config) if r.transcript} if labels else {}
    encoders = select_encoders(config)
    transcriber = plugins.build("transcribers", config.extract.transcriber, config)
    by_path = {c.path: c for c in clips}
    videos = [c for c in clips if probe(c.path).has_video] or clips
    first = min(videos, key=lambda c: probe(c.path).duration)
    loading = time_steps([by_path[first.path]], config, transcripts, encoders, transcriber)
    with whisper_passes() as passes:
        steady = time_steps(clips, config, transcripts, encoders, transcriber)
    total = sum(steady.values())

    table = Table(title=f"{folder.name}: where one worker's time goes (in-process, {media.clips} clips, "
                        f"{media.video_seconds:.1f} s video, {media.media_seconds:.1f} s media)")
    for column in ("step", "first clip s (loads models)", "all clips s", "share", "s per s of media"):
        table.add_column(column, justify="left" if column == "step" else "right")
    for step, seconds in steady.items():
        table.add_row(step, f"{loading.get(step, 0.0):.2f}", f"{seconds:.2f}", f"{seconds / total:.0%}",
                      f"{seconds / media.media_seconds:.3f}")
    table.add_row("[bold]total[/]", f"{sum(loading.values()):.2f}", f"{total:.2f}", "100%",
                  f"{total / media.media_seconds:.3f}")
    if passes:
        table.caption = (f"Whisper encoder: {len(passes)} passes for {len(clips)} clips, {sum(passes):.2f} s "
                         f"(counted in the first Whisper row)")
    console.print(table)


# --- the transformers encoders (--hf) -------------------------------------------------------------

GROWTH = 1.05  # a larger batch is kept only when it is this much faster


def hf_folders(root: Path, full: bool) -> list[tuple[str, str, Path]]:
    """(encoder, label, folder) of random-weight model folders written under ``root``."""
    import torch
    from transformers import (CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel, HubertConfig, HubertModel,
                              Wav2Vec2FeatureExtractor)

    torch.manual_seed(0)
    speech = {"small HuBERT (256-d, 4 layers)": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                                                      intermediate_size=1024)}
    vision = {"small ViT (256-d, 4 layers, patch 16)": dict(hidden_size=256, num_hidden_layers=4,
                                                            num_attention_heads=4, intermediate_size=1024,
                                                            patch_size=16)}
    if full:
        speech["HuBERT-large (1024-d, 24 layers)"] = dict(hidden_size=1024, num_hidden_layers=24,
                                                           num_attention_heads=16, intermediate_size=4096)
        vision["CLIP ViT-L/14 vision (1024-d, 24 layers)"] = dict(hidden_size=1024, num_hidden_layers=24,
                                                                   num_attention_heads=16, intermediate_size=4096,
                                                                   patch_size=14)
    folders = []
    for number, (label, size) in enumerate(speech.items()):
        folder = root / f"speech{number}"
        HubertModel(HubertConfig(**size, feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True)
                    ).save_pretrained(folder)
        Wav2Vec2FeatureExtractor(return_attention_mask=True).save_pretrained(folder)
        folders.append(("hf-audio", label, folder))
    for number, (label, size) in enumerate(vision.items()):
        folder = root / f"vision{number}"
        CLIPVisionModel(CLIPVisionConfig(**size, image_size=224)).save_pretrained(folder)
        CLIPImageProcessor().save_pretrained(folder)
        folders.append(("hf-vision", label, folder))
    return folders


def decoded_clips(datasets: list[Path], modality: str, config: configuration.Config) -> tuple[list, float]:
    """Every clip of ``datasets`` with the ``modality`` stream ``hf-*`` reads, and the decoding seconds."""
    clips = [clip for folder in datasets for clip in discover(folder)]
    start = time.perf_counter()
    decoded = [decode(c.path, c.clip_id, fps=config.extract.fps, sample_rate=config.extract.sample_rate,
                      video=modality == "visual", audio=modality == "audio") for c in clips]
    seconds = time.perf_counter() - start
    return [d for d in decoded if modality not in d.absent], seconds


def model_seconds(encoder, clips: list) -> float:
    """Seconds of model time for ``clips`` through ``encode_batch`` (CUDA work waited for)."""
    import torch

    start = time.perf_counter()
    encoder.encode_batch(clips)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def best_batch(encoder_class, folder: Path, device: str, clips: list, ladder: list[int]) -> tuple[int, float]:
    """The batch size of ``ladder`` with the shortest model time over ``clips``, and that time."""
    import torch

    best: tuple[int, float] | None = None
    for size in ladder:
        encoder = encoder_class(model=str(folder), device=device, half=device == "cuda", batch_size=size,
                                **({"input": "frame"} if encoder_class.name == "hf-vision" else {}))
        try:
            encoder.encode_batch(clips[:1])  # loads the model, warms the kernels
            seconds = model_seconds(encoder, clips)
        except torch.cuda.OutOfMemoryError:
            break
        if best is not None and best[1] / seconds < GROWTH:
            break
        best = (size, seconds) if best is None or seconds < best[1] else best
    if best is None:
        sys.exit(f"{folder}: even a batch of {ladder[0]} does not fit in GPU memory")
    return best


@dataclass(frozen=True)
class GroupTimes:
    groups: int
    decode: float  # in the decoding thread, summed over clips
    encode: float  # encode_batch and the per-clip rules, summed over groups
    wait: float  # the encoders waiting for a decoded group, after the first group
    wall: float


def chain_in_groups(encoder, clips: list[Clip], size: int, config: configuration.Config) -> GroupTimes:
    """``clips`` through :meth:`ClipEncoder.groups` as ``mer extract --workers 1 --batch-size
    SIZE`` runs them (with SIZE > 1 the next group decoded in a background thread), with decoding,
    encoding and the encoders' waits for decoded groups timed apart."""
    import torch

    chain = ClipEncoder([encoder], {encoder.name: manifest_for(encoder, config, None)}, config.extract,
                        transcript=lambda clip: None, transcriber=None)
    spent: dict[str, list[float]] = defaultdict(list)

    def timed(step: str, action):
        def run(*arguments):
            start = time.perf_counter()
            try:
                return action(*arguments)
            finally:
                if step == "encode" and torch.cuda.is_available():
                    torch.cuda.synchronize()
                spent[step].append(time.perf_counter() - start)
        return run

    chain.decode = timed("decode", chain.decode)
    chain.encode_decoded = timed("encode", chain.encode_decoded)
    start = previous = time.perf_counter()
    requests = ([(clip, None) for clip in group] for group in grouped(clips, size))
    for _ in chain.groups(requests, groups_ahead(size)):
        now = time.perf_counter()
        spent["iteration"].append(now - previous)
        previous = now
    waits = [whole - encoding for whole, encoding in zip(spent["iteration"], spent["encode"])]
    return GroupTimes(len(waits), sum(spent["decode"]), sum(spent["encode"]), sum(waits[1:]),
                      time.perf_counter() - start)


def groups_table(rows: list[tuple[str, int, int, float, GroupTimes]], device: str) -> Table:
    table = Table(title=f"the extraction chain in groups on {device} (mer extract --workers 1 --batch-size N: "
                        "with N > 1 one decoding thread a group ahead)")
    for column in ("encoder", "model batch", "group (--batch-size)", "groups", "media s", "decode s (thread)",
                   "encode s", "encoders waited s (after group 1)", "wall s", "media s/wall s", "decoding keeps up"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    for name, model_batch, size, media, times in rows:
        if not groups_ahead(size):
            verdict = "n/a (decoded in turn)"
        else:
            verdict = "yes" if times.wait <= 0.05 * times.wall else "no (decoding is the bottleneck)"
        table.add_row(name, str(model_batch), str(size), str(times.groups), f"{media:.1f}", f"{times.decode:.2f}",
                      f"{times.encode:.2f}", f"{times.wait:.2f}", f"{times.wall:.2f}", f"{media / times.wall:.1f}",
                      verdict)
    return table


def hf_benchmark(datasets: list[Path], full: bool, group_sizes: list[int], console: Console) -> None:
    import torch

    from mer_plugins.encoders.hf_audio import HfAudioEncoder
    from mer_plugins.encoders.hf_vision import HfVisionEncoder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    config = configuration.load(None, environ={})
    ladder = [1, 2, 4, 8, 16, 32, 64, 128] if device == "cuda" else [1, 2, 4, 8]
    table = Table(title=f"transformers encoders on {device}"
                        f"{' (' + torch.cuda.get_device_name() + ', float16)' if device == 'cuda' else ', float32'}"
                        f", {os.cpu_count()} CPUs; clips of {', '.join(d.name for d in datasets)}")
    for column in ("encoder", "model (random weights)", "batch", "clips", "media s", "decode s (1 worker)",
                   "model s", "clips/s (model)", "media s/s (model)", "media s/s (decode)", "bottleneck",
                   "GPU peak MiB"):
        table.add_column(column, justify="left" if column in ("encoder", "model (random weights)", "bottleneck")
                         else "right")
    decoded = {}
    grouped: list[tuple[str, int, int, float, GroupTimes]] = []
    every_clip = [clip for folder in datasets for clip in discover(folder)]
    with tempfile.TemporaryDirectory(prefix="mer-bench-hf-") as scratch:
        for name, label, folder in hf_folders(Path(scratch), full):
            encoder_class = HfAudioEncoder if name == "hf-audio" else HfVisionEncoder
            modality = encoder_class.modality
            if modality not in decoded:
                decoded[modality] = decoded_clips(datasets, modality, config)
            clips, decode_seconds = decoded[modality]
            media = sum(clip.duration for clip in clips)
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            size, seconds = best_batch(encoder_class, folder, device, clips, ladder)
            model_rate, decode_rate = media / seconds, media / decode_seconds
            memory = f"{torch.cuda.max_memory_allocated() / 2**20:.0f}" if device == "cuda" else "n/a"
            table.add_row(name, label, str(size), str(len(clips)), f"{media:.1f}", f"{decode_seconds:.2f}",
                          f"{seconds:.2f}", f"{len(clips) / seconds:.2f}", f"{model_rate:.1f}", f"{decode_rate:.1f}",
                          "model" if model_rate < decode_rate else "decoding", memory)
            console.print(f"measured {name} {label}: batch {size}, {model_rate:.1f} s of media per s")
            encoder = encoder_class(model=str(folder), device=device, half=device == "cuda", batch_size=size,
                                    **({"input": "frame"} if name == "hf-vision" else {}))
            for group in group_sizes:
                grouped.append((f"{name} {label}", size, group, media,
                                chain_in_groups(encoder, every_clip, group, config)))
    console.print(table)
    if grouped:
        console.print(groups_table(grouped, device))


# --- the report ---------------------------------------------------------------------------------


def datasets_of(arguments: argparse.Namespace) -> list[Path]:
    chosen = arguments.clips or [d for d in DEFAULT_DATASETS if d.is_dir()]
    if not chosen:
        sys.exit(f"{SHARED_DATA}: missing; give clip folders with --clips DIR")
    missing = [d for d in chosen if not d.is_dir()]
    if missing:
        sys.exit(f"{missing[0]}: no such folder")
    return chosen


def main() -> None:
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--clips", type=Path, action="append", metavar="DIR",
                        help="a clips folder to measure (repeatable) [default: crema-d and mer2023 in ../shared/data]")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts [default: 1 2]")
    parser.add_argument("--repeat", type=int, default=1, help="runs per measurement; the median counts [default: 1]")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads of the in-process breakdown (1: as each of 2 workers on 2 CPUs) "
                             "[default: torch's, as 1 worker]")
    parser.add_argument("--hf", action="store_true",
                        help="measure hf-audio and hf-vision on random-weight models instead of the default encoders")
    parser.add_argument("--full", action="store_true",
                        help="with --hf: also the full-size HuBERT-large and CLIP ViT-L/14 configurations")
    parser.add_argument("--batch-size", type=int, nargs="+", default=[], metavar="N",
                        help="with --hf: also run the extraction chain in groups of N clips (mer extract "
                             "--batch-size N), timing decoding against encoding per group")
    arguments = parser.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as mer extract does, before torch or CTranslate2 load
    if arguments.threads:
        import torch  # CTranslate2 models take their thread count from torch's

        torch.set_num_threads(arguments.threads)
    datasets = datasets_of(arguments)
    console = Console() if Console().is_terminal else Console(width=200)
    if arguments.hf:
        hf_benchmark(datasets, arguments.full, arguments.batch_size, console)
        return
    encoders = configuration.load(None, environ={}).extract.encoders
    console.print(f"mer extract, default encoders ({', '.join(encoders)}); {os.cpu_count()} CPUs, "
                  f"Python {sys.version.split()[0]}, repeat {arguments.repeat}, breakdown threads "
                  f"{arguments.threads or 'default'}")

    rows = []
    for folder in datasets:
        labels = folder / "labels.csv" if (folder / "labels.csv").is_file() else None
        clips = [c.path for c in discover(folder)]
        media = measure_media(clips)
        for workers in arguments.workers:
            with tempfile.TemporaryDirectory(prefix="mer-bench-startup-") as scratch:
                small, small_labels = startup_folder(folder, labels, clips, workers, Path(scratch))
                if not rows:  # untimed: warms the page cache, and shows what start-up imports
                    _, log = run_extract(small, small_labels, workers, {"PYTHONPROFILEIMPORTTIME": "1"})
                    imports_table(import_seconds(log), console)
                startup = repeated(arguments.repeat, small, small_labels, workers)
                startup_media = measure_media([c.path for c in discover(small)])
            full = repeated(arguments.repeat, folder, labels, workers)
            rows.append(Row(folder.name, workers, media, full, startup_media, startup))
            console.print(f"measured {folder.name} with {workers} worker(s): {full.wall:.1f} s")
        breakdown(folder, labels, media, console)

    whole = Table(title="mer extract, whole run (start-up included)")
    for column in ("dataset", "workers", "clips (done/failed)", "video s", "media s", "wall s", "clips/s",
                   "media s/wall s", "video s/wall s/worker", f"≥ {FLOOR:g} (floor)", "max RSS MiB (1 process)",
                   "tree PSS MiB (sum)"):
        whole.add_column(column, justify="left" if column == "dataset" else "right")
    for row in rows:
        rate = per_worker_video_rate(row.media.video_seconds, row.full.wall, row.workers)
        whole.add_row(row.dataset, str(row.workers), f"{row.media.clips} ({row.full.done}/{row.full.failed})",
                      f"{row.media.video_seconds:.1f}", f"{row.media.media_seconds:.1f}", f"{row.full.wall:.1f}",
                      f"{row.media.clips / row.full.wall:.2f}", f"{row.media.media_seconds / row.full.wall:.2f}",
                      f"{rate:.2f}", floor_verdict(row.media, rate), f"{row.full.max_rss_mib:.0f}",
                      f"{row.full.tree_pss_mib:.0f}")
    console.print(whole)

    steady = Table(title="start-up run (one copy of the shortest video clip per worker) and the rate after it")
    for column in ("dataset", "workers", "start-up run: clips", "start-up run: wall s",
                   "after start-up: clips/s", "after start-up: media s/wall s",
                   "after start-up: media s/wall s/worker", "after start-up: video s/wall s/worker",
                   f"≥ {FLOOR:g} (floor)"):
        steady.add_column(column, justify="left" if column == "dataset" else "right")
    for row in rows:
        wall = row.full.wall - row.startup.wall
        startup = (row.dataset, str(row.workers), str(row.startup_media.clips), f"{row.startup.wall:.1f}")
        if row.media.clips <= row.startup_media.clips or wall <= 0:  # else noise exceeds the clips' cost
            reason = "no clips beyond it" if wall > 0 else "start-up run ≥ full run"
            steady.add_row(*startup, "n/a", "n/a", "n/a", "n/a", f"n/a ({reason})")
            continue
        video = row.media.video_seconds - row.startup_media.video_seconds
        media_rate = (row.media.media_seconds - row.startup_media.media_seconds) / wall
        rate = per_worker_video_rate(video, wall, row.workers)
        steady.add_row(*startup, f"{(row.media.clips - row.startup_media.clips) / wall:.2f}",
                       f"{media_rate:.2f}", f"{media_rate / row.workers:.2f}", f"{rate:.2f}",
                       floor_verdict(row.media, rate))
    console.print(steady)


if __name__ == "__main__":
    main()

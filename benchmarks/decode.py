"""Decoding speed: seconds of media decoded per wall-clock second, per dataset, in one process.

Decoding has to stay a small part of ``mer extract`` (whose floor is 2 s of video per wall second
per worker including every encoder), so this measures :func:`mercli.media.decode` alone, with the
extract defaults (2 fps, 16 kHz mono, frames at most 1280 px on the longer side).

    .venv/bin/python benchmarks/decode.py [--repeat 3] [FOLDER_OR_FILE ...]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mercli.clips import clip_kind
from mercli.media import decode, probe

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
DEFAULT_SOURCES = [SHARED_DATA / "crema-d", SHARED_DATA / "mer2023", SHARED_DATA / "mead" / "M030_sad_3_001.mp4"]


def clips_of(source: Path, video_only: bool) -> list[Path]:
    if source.is_file():
        files = [source]
    else:
        files = sorted(p for p in source.iterdir() if clip_kind(p))
    return [f for f in files if probe(f).has_video] if video_only else files


def measure(clips: list[Path], repeat: int, **options) -> tuple[float, float]:
    """(seconds of media, best wall seconds over ``repeat`` passes) for decoding every clip."""
    media = sum(probe(clip).duration for clip in clips)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for clip in clips:
            decode(clip, clip.stem, **options)
        best = min(best, time.perf_counter() - start)
    return media, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sources", nargs="*", type=Path, default=DEFAULT_SOURCES)
    parser.add_argument("--repeat", type=int, default=3, help="passes per row; the fastest counts")
    arguments = parser.parse_args()
    modes = {"video+audio": {}, "video only": {"audio": False}, "audio only": {"video": False}}
    print(f"{'source':<22} {'mode':<12} {'clips':>5} {'media s':>8} {'wall s':>7} {'media s / wall s':>17}")
    for source in arguments.sources:
        for mode, options in modes.items():
            clips = clips_of(source, video_only=mode != "audio only")
            if not clips:
                continue
            media, wall = measure(clips, arguments.repeat, **options)
            print(f"{source.name:<22} {mode:<12} {len(clips):>5} {media:>8.1f} {wall:>7.2f} {media / wall:>17.1f}")


if __name__ == "__main__":
    main()

"""Reason-stage throughput against a fake OpenAI-compatible server that takes 300 ms per call.

Runs ``mer reason``'s engine with the real ``openai`` client over N clips, first sequentially
(concurrency 1), then with concurrency 8 into a fresh workspace, then again into that workspace
(every trace cached: no call). Rate limits are off so that only concurrency is measured.

    .venv/bin/python benchmarks/reason.py [--clips 100] [--latency 0.3] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_openai import FakeOpenAI  # noqa: E402  (the test suite's fake server)

from mercli.config import load  # noqa: E402
from mercli.reason import reason_folder  # noqa: E402
from mercli.workspace import Workspace  # noqa: E402


def timed_run(clips: Path, workspace: Path, base_url: str, concurrency: int) -> tuple[float, int, int]:
    """(wall seconds, calls, clips done or cached)."""
    config = load(None, environ={}, overrides={
        "reason.reasoner": "openai", "reason.concurrency": concurrency, "reason.requests_per_minute": 0,
        "reasoner.openai.base_url": base_url, "reasoner.openai.frames": 0})
    started = time.perf_counter()
    summary = reason_folder(config, Workspace(workspace), clips, embed=False)
    return time.perf_counter() - started, summary.calls, len(summary.done) + len(summary.cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--concurrency", type=int, default=8)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, FakeOpenAI(latency=arguments.latency) as server:
        root = Path(folder)
        clips = root / "clips"
        clips.mkdir()
        for index in range(arguments.clips):
            (clips / f"clip{index:04d}.wav").write_bytes(f"clip {index}".encode())
        rows = [("sequential", 1, *timed_run(clips, root / "sequential", server.base_url, 1)),
                ("concurrent", arguments.concurrency,
                 *timed_run(clips, root / "concurrent", server.base_url, arguments.concurrency)),
                ("re-run (cached)", arguments.concurrency,
                 *timed_run(clips, root / "concurrent", server.base_url, arguments.concurrency))]
    sequential = rows[0][2]
    print(f"{'run':<16} {'concurrency':>11} {'clips':>6} {'calls':>6} {'wall s':>8} {'x sequential':>13}")
    for name, concurrency, seconds, calls, clips_done in rows:
        print(f"{name:<16} {concurrency:>11} {clips_done:>6} {calls:>6} {seconds:>8.2f} {seconds / sequential:>13.3f}")


if __name__ == "__main__":
    main()

"""``mer reason --batch`` for N clips against the fake Gemini Batch API (tests/support/fake_gemini.py),
with the real google-genai client and a fake job latency.

For each way of sending (clips inline in a JSONL file; every clip uploaded through the Files API;
jobs of at most 250 clips), it prints the plan (jobs, tokens, cost at the online and at the batch
price, from ``--dry-run``), then submits, waits and collects, and counts the HTTP requests made,
the files uploaded and deleted, and the seconds from submit to collected. The clips are copies of
one real 4 s clip (MER2024's typical length), so the token estimate is that of real media.

    .venv/bin/python benchmarks/reason_batch.py [--clips 1000] [--job-latency 2] [--poll 0.2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.fake_gemini import FakeGemini  # noqa: E402  (the test suite's fake server)
from support.media import write_clip  # noqa: E402

from mercli.batch_reason import reason_batch  # noqa: E402
from mercli.config import load  # noqa: E402
from mercli.workspace import Workspace  # noqa: E402

MODES = {
    "inline media, JSONL": {},
    "uploaded media": {"reasoner.gemini.inline_limit_mb": 0.0},
    "250 clips a job": {"reasoner.gemini.batch_max_requests": 250},
}


def run_mode(clips: Path, workspace: Path, settings: dict, job_latency: float, poll: float) -> dict:
    config = load(None, environ={}, overrides={"reason.reasoner": "gemini", "reason.batch_poll": poll, **settings})
    plan = reason_batch(config, Workspace(workspace), clips, dry_run=True, embed=False)
    with FakeGemini(job_latency=job_latency) as server:
        os.environ["GOOGLE_GEMINI_BASE_URL"] = server.base_url
        started = time.perf_counter()
        done = reason_batch(config, Workspace(workspace), clips, wait=True, embed=False)
        seconds = time.perf_counter() - started
        calls = dict(server.calls)
        return {"jobs": plan.jobs_planned, "tokens": plan.usage.input_tokens + plan.usage.output_tokens,
                "online": plan.cost_online_usd, "batch": plan.cost_usd, "done": len(done.done),
                "requests": len(server.requests), "uploads": calls.get("upload_start", 0),
                "deleted": calls.get("file_delete", 0), "left": len(server.live_files()), "seconds": seconds,
                "cost": done.cost_usd}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", type=int, default=1000)
    parser.add_argument("--job-latency", type=float, default=2.0, help="Seconds a fake job takes, pending then running.")
    parser.add_argument("--poll", type=float, default=0.2, help="reason.batch_poll: seconds between polls.")
    arguments = parser.parse_args()
    os.environ["GEMINI_API_KEY"] = "fake-benchmark-key"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        clips = root / "clips"
        clips.mkdir()
        first = write_clip(clips / "clip0000.mp4", seconds=4.0)
        for index in range(1, arguments.clips):
            shutil.copy(first, clips / f"clip{index:04d}.mp4")
        rows = [(name, run_mode(clips, root / f"ws{i}", settings, arguments.job_latency, arguments.poll))
                for i, (name, settings) in enumerate(MODES.items())]
    print(f"{arguments.clips} clips of 4 s, fake job latency {arguments.job_latency:g} s, poll every {arguments.poll:g} s")
    print(f"{'mode':<20} {'jobs':>4} {'est. tokens':>11} {'online USD':>10} {'batch USD':>9} {'done':>5} "
          f"{'HTTP req':>8} {'uploads':>7} {'deleted':>7} {'left':>4} {'submit->collected s':>19} {'billed USD':>10}")
    for name, r in rows:
        print(f"{name:<20} {r['jobs']:>4} {r['tokens']:>11,} {r['online']:>10.4f} {r['batch']:>9.4f} {r['done']:>5} "
              f"{r['requests']:>8} {r['uploads']:>7} {r['deleted']:>7} {r['left']:>4} {r['seconds']:>19.2f} "
              f"{r['cost']:>10.4f}")


if __name__ == "__main__":
    main()

"""The reason stage's engine: caching, retries, stops, budget, concurrency, label handling, dry runs.

A scripted reasoner stands in for a remote model, so that every path of the engine is exercised
without a network; the real clients are tested against fake servers in their own files.
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from mercli import prompts
from mercli.clips import discover
from mercli.config import load
from mercli.settings import MER2024_CLASSES
from mercli.contracts import (AnswerRejected, Option, Reasoner, ReasoningAnswer, ReasoningRequest, RetryableError,
                              StopRun, Usage)
from mercli.errors import ConfigError
from mercli.labels import LabelledClip
from mercli.pacing import RateLimiter, backoff_delay
from mercli.costs import Budget, Price, price_for
from mercli.reason import ClipInputs, Pacing, ReasonRun, estimate, parse_model
from mercli.traces import TraceSource, TraceStore
from mercli.workspace import Workspace
from support.answers import with_scores

CLASSES = tuple(MER2024_CLASSES)


def answer(emotion: str = "happy", scores: bool = True) -> dict[str, Any]:
    """An answer of the newest prompt (with class scores), or of version 1 without ``scores``."""
    part = {"cues": ["smiles at 0.5 s"], "emotion": emotion, "confidence": 0.8, "absent": None}
    first = {"visual": part, "acoustic": part, "textual": {"cues": [], "emotion": None, "confidence": None,
                                                           "absent": "no speech"},
             "overall": {"emotion": emotion, "confidence": 0.7, "summary": "Face and voice agree."}}
    return with_scores(first, CLASSES) if scores else first


class Scripted(Reasoner):
    """Replies from a per-clip script: each item is an answer dict or an exception to raise."""

    name = "scripted"
    needs_network = True
    options = (Option("model", str, "scripted-1", "model name"),)

    def __init__(self, script: dict[str, list[Any]] | None = None, latency: float = 0.0, **settings: Any) -> None:
        super().__init__(**settings)
        self.script = script or {}
        self.latency = latency
        self.requests: list[ReasoningRequest] = []
        self.in_flight = 0
        self.most_in_flight = 0
        self._lock = threading.Lock()

    def estimate_usage(self, request: ReasoningRequest) -> Usage:
        return Usage(1000, 100)

    def reason(self, request: ReasoningRequest) -> ReasoningAnswer:
        with self._lock:
            self.requests.append(request)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            steps = self.script.get(request.clip_id, [])
            step = steps.pop(0) if steps else answer()
        try:
            time.sleep(self.latency)
            if isinstance(step, Exception):
                raise step
            return ReasoningAnswer(step, Usage(1000, 100))
        finally:
            with self._lock:
                self.in_flight -= 1


@pytest.fixture
def clips_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "clips"
    folder.mkdir()
    for index in range(6):
        (folder / f"c{index}.mp4").write_bytes(f"clip {index}".encode())
    return folder


def make_run(tmp_path: Path, reasoner: Reasoner, *, label_conditioned: bool = False, limit: float | None = None,
             labelled: dict[str, LabelledClip] | None = None, concurrency: int = 2, retries: int = 3,
             rpm: float = 0, max_backoff: float = 0.05) -> ReasonRun:
    workspace = Workspace(tmp_path / "ws")
    source = TraceSource(reasoner.name, reasoner.model, prompts.PROMPT_VERSION, label_conditioned)
    store = TraceStore.open(workspace.reasoning, source)
    return ReasonRun(reasoner, store, ClipInputs(workspace, labelled or {}), CLASSES,
                     Pacing(concurrency, rpm, retries, 0.01, max_backoff), Price(0.30, 2.50), Budget(limit),
                     label_conditioned)


def run_all(run: ReasonRun, clips_dir: Path, retry_failed: bool = False) -> tuple[list[str], list[dict]]:
    tasks, cached, failed = run.plan(discover(clips_dir), retry_failed)
    run.run(tasks)
    return cached, failed


def test_traces_are_stored_with_provenance_and_a_second_run_makes_no_call(tmp_path, clips_dir):
    reasoner = Scripted()
    run = make_run(tmp_path, reasoner)
    run_all(run, clips_dir)
    assert sorted(run.summary.done) == [f"c{i}" for i in range(6)] and run.summary.calls == 6
    trace = run.store.read("c0")
    provenance = trace["provenance"]
    assert provenance["model"] == "scripted-1" and provenance["prompt_version"] == prompts.PROMPT_VERSION
    assert provenance["usage"] == {"input_tokens": 1000, "output_tokens": 100}
    assert provenance["cost_usd"] == pytest.approx((1000 * 0.30 + 100 * 2.50) / 1e6)
    assert run.summary.usage == Usage(6000, 600)
    assert run.budget.spent == pytest.approx(6 * (1000 * 0.30 + 100 * 2.50) / 1e6)

    again = Scripted()
    second = make_run(tmp_path, again)
    cached, failed = run_all(second, clips_dir)
    assert len(cached) == 6 and not failed and again.requests == [] and second.summary.calls == 0


def test_a_changed_clip_is_asked_again(tmp_path, clips_dir):
    run_all(make_run(tmp_path, Scripted()), clips_dir)
    (clips_dir / "c3.mp4").write_bytes(b"edited")
    reasoner = Scripted()
    cached, _ = run_all(make_run(tmp_path, reasoner), clips_dir)
    assert len(cached) == 5 and [r.clip_id for r in reasoner.requests] == ["c3"]


def test_transient_errors_are_retried_and_the_servers_hint_is_honoured(tmp_path, clips_dir):
    reasoner = Scripted({"c0": [RetryableError("429 rate limited", retry_after=0.3), RetryableError("503"), answer()]})
    run = make_run(tmp_path, reasoner, max_backoff=1.0)
    notices: list[str] = []
    run.say = notices.append
    started = time.monotonic()
    run_all(run, clips_dir)
    assert "c0" in run.summary.done and not run.summary.failed
    assert run.summary.calls == 8
    assert time.monotonic() - started >= 0.3
    assert len(notices) == 2
    assert notices[0] == "scripted: c0: 429 rate limited; waiting 0.3 s before retry 1 of 3"
    assert notices[1].startswith("scripted: c0: 503; waiting ") and notices[1].endswith(" s before retry 2 of 3")


def test_a_servers_hint_past_max_backoff_is_capped_and_said(tmp_path, clips_dir):
    reasoner = Scripted({"c0": [RetryableError("429 rate limited", retry_after=3600), answer()]})
    run = make_run(tmp_path, reasoner, max_backoff=0.2)
    notices: list[str] = []
    run.say = notices.append
    started = time.monotonic()
    run_all(run, clips_dir)
    assert "c0" in run.summary.done and time.monotonic() - started < 30
    assert notices == ["scripted: c0: 429 rate limited; waiting 0.2 s before retry 1 of 3 (the server asked for "
                       "3600 s; reason.max_backoff caps the wait at 0.2 s)"]


def test_a_clip_that_keeps_failing_is_recorded_and_retried_only_on_request(tmp_path, clips_dir):
    reasoner = Scripted({"c1": [RetryableError("500 internal")] * 10})
    run = make_run(tmp_path, reasoner, retries=2)
    run_all(run, clips_dir)
    assert run.summary.failed == [{"clip": "c1", "reason": "gave up after 3 attempts: 500 internal"}]
    assert run.store.failure("c1").details["attempts"] == 3
    assert "c1" not in run.store.clip_ids()

    quiet = Scripted()
    later = make_run(tmp_path, quiet)
    cached, failed = run_all(later, clips_dir)
    assert quiet.requests == [] and len(cached) == 5 and failed[0]["clip"] == "c1"
    assert "--retry-failed" in failed[0]["reason"]

    retrying = Scripted()
    final = make_run(tmp_path, retrying)
    run_all(final, clips_dir, retry_failed=True)
    assert [r.clip_id for r in retrying.requests] == ["c1"] and final.summary.done == ["c1"]
    assert final.store.failure("c1") is None


@pytest.mark.parametrize("reply, expected", [
    (AnswerRejected("blocked by safety filter: SAFETY"), "blocked by safety filter"),
    ({**answer(), "overall": {"emotion": "bored", "confidence": 0.5, "summary": "x"}}, "'bored' is not one of"),
    ({k: v for k, v in answer().items() if k != "visual"}, "missing 'visual'"),
    ({**answer(), "visual": {"cues": [], "emotion": None, "confidence": None, "absent": None, "scores": None}},
     "an observed modality needs an emotion"),
    (["not", "an", "object"], "not a JSON object"),
])
def test_rejected_and_invalid_answers_are_failures_never_traces(tmp_path, clips_dir, reply, expected):
    run = make_run(tmp_path, Scripted({"c2": [reply]}))
    run_all(run, clips_dir)
    assert [f["clip"] for f in run.summary.failed] == ["c2"] and expected in run.summary.failed[0]["reason"]
    assert "c2" not in run.store.clip_ids() and len(run.summary.done) == 5


def test_a_rejected_key_stops_the_run_and_keeps_what_was_done(tmp_path, clips_dir):
    reasoner = Scripted({"c2": [StopRun("the key was rejected (401)")]}, latency=0.05)
    run = make_run(tmp_path, reasoner, concurrency=1)
    run_all(run, clips_dir)
    assert run.summary.stopped == "the key was rejected (401)"
    assert run.summary.done == ["c0", "c1"] and sorted(run.store.clip_ids()) == ["c0", "c1"]
    assert len(reasoner.requests) == 3 and len(run.summary.skipped) == 4
    assert not run.summary.failed


def test_max_cost_stops_before_the_budget_is_passed(tmp_path, clips_dir):
    per_call = (1000 * 0.30 + 100 * 2.50) / 1e6
    reasoner = Scripted()
    run = make_run(tmp_path, reasoner, limit=per_call * 3.5, concurrency=3)
    run_all(run, clips_dir)
    assert len(run.summary.done) == 3 and len(run.summary.skipped) == 3
    assert run.budget.spent <= per_call * 3.5
    assert "--max-cost" in run.summary.skipped[0]["reason"]


def test_calls_in_flight_never_exceed_the_concurrency_limit(tmp_path, clips_dir):
    reasoner = Scripted(latency=0.1)
    run_all(make_run(tmp_path, reasoner, concurrency=3), clips_dir)
    assert reasoner.most_in_flight == 3


def test_labels_reach_the_reasoner_only_when_asked_and_such_traces_are_marked(tmp_path, clips_dir):
    labelled = {f"c{i}": LabelledClip(f"c{i}", label="sad", transcript="I lost it") for i in range(6)}
    plain = Scripted()
    run_all(make_run(tmp_path, plain, labelled=labelled), clips_dir)
    assert all(r.label is None and '"sad"' not in r.prompt and "labelled" not in r.prompt for r in plain.requests)
    assert all(r.transcript == "I lost it" and "I lost it" in r.prompt for r in plain.requests)

    shown = Scripted()
    run = make_run(tmp_path, shown, labelled=labelled, label_conditioned=True)
    run_all(run, clips_dir)
    assert all(r.label == "sad" and 'labelled this clip "sad"' in r.prompt for r in shown.requests) and len(shown.requests) == 6
    assert run.store.folder.name.endswith("+labels")
    assert run.store.read("c0")["provenance"]["label_conditioned"] is True


def test_a_label_conditioned_run_without_a_label_fails_that_clip(tmp_path, clips_dir):
    labelled = {"c0": LabelledClip("c0", label="happy")}
    run = make_run(tmp_path, Scripted(), labelled=labelled, label_conditioned=True)
    run_all(run, clips_dir)
    assert run.summary.done == ["c0"] and len(run.summary.failed) == 5
    assert "no label for this clip" in run.summary.failed[0]["reason"]


def test_a_dry_run_estimates_and_calls_nothing(tmp_path, clips_dir):
    reasoner = Scripted()
    run = make_run(tmp_path, reasoner)
    tasks, _, _ = run.plan(discover(clips_dir), False)
    summary = estimate(run, tasks)
    assert reasoner.requests == [] and summary.calls == 6 and summary.usage == Usage(6000, 600)
    assert summary.cost_usd == pytest.approx(6 * (1000 * 0.30 + 100 * 2.50) / 1e6)
    assert run.store.clip_ids() == []


def test_prices_come_from_the_configuration_and_a_remote_model_needs_one():
    assert price_for(Scripted(model="gemini-2.5-flash"), {}) == Price(0.30, 2.50)
    assert price_for(Scripted(model="mine"), {"mine": {"input": 1, "output": 2}}) == Price(1.0, 2.0)
    with pytest.raises(ConfigError, match="no price for model 'mine'"):
        price_for(Scripted(model="mine"), {})
    with pytest.raises(ConfigError, match="must be"):
        price_for(Scripted(model="mine"), {"mine": {"input": -1, "output": 2}})


def test_prices_are_read_from_mer_toml(tmp_path):
    path = tmp_path / "mer.toml"
    path.write_text('[reason.prices]\n"my-model" = { input = 0.5, output = 1.5 }\n')
    config = load(path, environ={})
    assert price_for(Scripted(model="my-model"), config.reason.prices) == Price(0.5, 1.5)


def test_model_specs_name_a_reasoner_and_optionally_its_model():
    assert parse_model("gemini") == ("gemini", None)
    assert parse_model("openai:qwen2.5-vl:7b") == ("openai", "qwen2.5-vl:7b")
    with pytest.raises(ConfigError):
        parse_model(":x")


def test_the_rate_limiter_spaces_starts_across_threads():
    limiter = RateLimiter(per_minute=600)  # one start per 0.1 s
    stop = threading.Event()
    starts: list[float] = []
    threads = [threading.Thread(target=lambda: limiter.wait(stop) and starts.append(time.monotonic()))
               for _ in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    starts.sort()
    assert len(starts) == 5 and all(b - a >= 0.09 for a, b in zip(starts, starts[1:]))


def test_a_stopping_run_wakes_threads_waiting_for_the_rate_limiter():
    limiter = RateLimiter(per_minute=1)
    stop = threading.Event()
    assert limiter.wait(stop)
    threading.Timer(0.1, stop.set).start()
    started = time.monotonic()
    assert limiter.wait(stop) is False and time.monotonic() - started < 5


def test_backoff_grows_exponentially_with_jitter_and_honours_the_hint():
    rng = random.Random(0)
    draws = [backoff_delay(attempt, 1.0, 8.0, rng=rng) for attempt in (1, 2, 3, 4, 5) for _ in range(200)]
    ceilings = [min(8.0, 2 ** (a - 1)) for a in (1, 2, 3, 4, 5) for _ in range(200)]
    assert all(0 <= d <= c for d, c in zip(draws, ceilings))
    assert max(draws[800:]) > 4  # reaches the cap's range
    assert len({round(d, 6) for d in draws[:200]}) > 150  # jittered
    assert backoff_delay(1, 1.0, 8.0, hint=5.0, rng=rng) == 5.0
    assert backoff_delay(1, 1.0, 8.0, hint=30.0, rng=rng) == 8.0  # the cap holds whatever the server asks


class ReadsFeatures(Scripted):
    uses_features = True


def test_a_reasoner_that_reads_features_is_asked_again_when_they_change(tmp_path, clips_dir):
    import numpy as np

    from mercli.contracts import Features
    from mercli.features import FeatureSet, Manifest

    first = make_run(tmp_path, ReadsFeatures({"c1": [AnswerRejected("no extracted features for this clip")]}))
    run_all(first, clips_dir)
    assert first.store.read("c0")["provenance"]["features"] == [] and first.summary.failed[0]["clip"] == "c1"
    unchanged = ReadsFeatures()
    cached, failed = run_all(make_run(tmp_path, unchanged), clips_dir)
    assert unchanged.requests == [] and len(cached) == 5 and len(failed) == 1

    egemaps = FeatureSet.open(tmp_path / "ws" / "features",
                              Manifest("egemaps", "1", "test", "0", "w", {}, "audio", 2, "utterance"))
    for clip in ("c0", "c1"):
        egemaps.write(clip, Features(np.ones(2, dtype=np.float32)))
    extracted = ReadsFeatures()
    run = make_run(tmp_path, extracted)
    cached, failed = run_all(run, clips_dir)
    assert sorted(r.clip_id for r in extracted.requests) == ["c0", "c1"] and len(cached) == 4 and not failed
    assert all(list(r.features) == ["egemaps"] for r in extracted.requests)
    assert run.store.read("c1")["provenance"]["features"] == [egemaps.name]

    plain = Scripted()  # a reasoner that reads no features records none
    run_all(make_run(tmp_path / "other", plain), clips_dir)
    assert "features" not in make_run(tmp_path / "other", Scripted()).store.read("c0")["provenance"]

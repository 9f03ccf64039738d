"""``mer reason --model gemini --batch``: the real google-genai client against the fake Batch API
(tests/support/fake_gemini.py) on 127.0.0.1. Jobs inline and from JSONL files, their states,
failed requests, expired and cancelled jobs, a run killed between create and the state write,
never paying twice, uploads deleted after collection; and Gemini's media controls."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Sequence

import pytest
from click.testing import CliRunner

from support.fake_gemini import FakeGemini, answer, api_error, blocked
from support.media import write_clip
from mer_plugins.reasoners.gemini import FRAME_TOKENS, GeminiReasoner
from mercli import batch_reason, prompts
from mercli.batch_reason import JobBook, split_jobs
from mercli.cli import cli
from mercli.contracts import BatchJob, ReasoningRequest
from mercli.trace_model import answer_schema
from mercli.traces import validate_trace

FAKE_KEY = "fake-batch-key-0123456789"
CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
FAST = ["-s", "reason.batch_poll=0.05"]
FILES = ["-s", "reasoner.gemini.batch_inline_mb=0", "-s", "reasoner.gemini.inline_limit_mb=0"]  # JSONL, uploads


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    for index in range(3):
        write_clip(folder / f"clip{index}.mp4", seconds=1.0)
    return folder


@pytest.fixture
def start(monkeypatch):
    servers = []

    def start(**options) -> FakeGemini:
        server = FakeGemini(**options).start()
        servers.append(server)
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        return server

    yield start
    for server in servers:
        server.close()


def mer(workspace: Path, clips: Path, *args: str, settings: Sequence[str] = ()):
    """``mer reason --model gemini --batch --json --no-embed`` with ``args``, under ``settings``."""
    return CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["-w", str(workspace), *FAST, *settings, "reason", str(clips), "--model", "gemini", "--batch", "--json",
              "--no-embed", *args])


def summary(outcome) -> dict:
    assert outcome.stdout, outcome.output
    return json.loads(outcome.stdout)


def traces(workspace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workspace / "reasoning").rglob("*.trace.json"))]


def records(workspace: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((workspace / "reasoning" / "_batches").glob("*.json"))]


# --- a job's life ----------------------------------------------------------------------------


def test_a_job_is_submitted_then_collected_on_the_next_run_at_half_price(start, clip_folder, tmp_path):
    server = start(job_latency=60)
    first = mer(tmp_path, clip_folder)
    assert first.exit_code == 0, first.output
    sent = summary(first)
    assert [job["clips"] for job in sent["submitted"]] == [3] and sent["pending"][0]["state"] == "pending"
    assert sent["done"] == 0 and server.calls["batch_create"] == 1 and server.calls["generate"] == 0
    record, = records(tmp_path)
    assert record["name"] == "batches/fake1" and set(record["clips"]) == {"clip0", "clip1", "clip2"}
    assert all(len(entry["hash"]) == 64 for entry in record["clips"].values()) and record["submitted"]

    again = summary(mer(tmp_path, clip_folder))
    assert again["submitted"] == [] and len(again["pending"]) == 1 and server.calls["batch_create"] == 1

    server.end_job("batches/fake1", "SUCCEEDED")
    collected = mer(tmp_path, clip_folder)
    assert collected.exit_code == 0, collected.output
    done = summary(collected)
    assert done["done"] == 3 and done["pending"] == [] and done["collected"][0]["done"] == 3
    stored = traces(tmp_path)
    assert len(stored) == 3 and all(validate_trace(t) == [] for t in stored)
    # the fake bills 1200 input and 150 output tokens a request: gemini-2.5-flash at half of 0.30 and 2.50 USD/Mtok
    assert done["usage"] == {"input_tokens": 3600, "output_tokens": 450}
    assert done["cost_usd"] == pytest.approx((3600 * 0.15 + 450 * 1.25) / 1e6, abs=1e-6)  # rounded to 6 places
    assert stored[0]["provenance"]["cost_usd"] == pytest.approx((1200 * 0.15 + 150 * 1.25) / 1e6)
    assert records(tmp_path)[0]["state"] == "collected"

    last = summary(mer(tmp_path, clip_folder))
    assert last["cached"] == 3 and last["submitted"] == [] and server.calls["batch_create"] == 1


def test_wait_polls_through_pending_and_running_to_collected(start, clip_folder, tmp_path):
    server = start(job_latency=0.6)
    outcome = mer(tmp_path, clip_folder, "--wait")
    assert outcome.exit_code == 0, outcome.output
    assert summary(outcome)["done"] == 3 and server.calls["batch_get"] >= 3
    assert "batch jobs" in outcome.stderr


def test_states_pass_from_pending_to_running_to_succeeded(start, clip_folder, tmp_path):
    server = start(job_latency=1.6)
    assert summary(mer(tmp_path, clip_folder))["pending"][0]["state"] == "pending"
    time.sleep(0.9)
    assert summary(mer(tmp_path, clip_folder))["pending"][0]["state"] == "running"
    assert records(tmp_path)[0]["state"] == "running"
    time.sleep(0.9)
    assert summary(mer(tmp_path, clip_folder))["done"] == 3 and server.calls["batch_create"] == 1


def test_a_file_job_uploads_media_and_jsonl_and_deletes_them_and_the_results_after_collecting(
        start, clip_folder, tmp_path):
    server = start(job_latency=0.2)
    outcome = mer(tmp_path, clip_folder, "--wait", settings=FILES)
    assert outcome.exit_code == 0, outcome.output
    assert summary(outcome)["done"] == 3
    assert server.calls["upload_start"] == 4 and server.calls["file_download"] == 1  # 3 clips + the JSONL
    assert server.live_files() == []
    assert len(records(tmp_path)[0]["files"]) == 4


def test_an_inline_job_and_a_jsonl_job_send_the_same_requests_as_an_online_call(start, clip_folder, tmp_path):
    server = start()
    GeminiReasoner().reason(request_for(clip_folder / "clip0.mp4"))
    online = server.generate_requests()[0].json
    summary(mer(tmp_path / "inline", clip_folder, "--wait"))
    summary(mer(tmp_path / "jsonl", clip_folder, "--wait", settings=["-s", "reasoner.gemini.batch_inline_mb=0"]))
    inline, jsonl = (dict(job["requests"]) for job in server.jobs.values())
    assert server.calls["upload_start"] == 1  # the second job's JSONL, nothing else
    assert inline == jsonl and set(inline) == {"clip0", "clip1", "clip2"}
    assert inline["clip0"]["contents"] == online["contents"]
    assert inline["clip0"]["generationConfig"] == online["generationConfig"]


def test_failed_requests_become_recorded_failures_or_return_to_be_asked_again(start, clip_folder, tmp_path):
    server = start()
    server.script(api_error(503, "UNAVAILABLE", "overloaded"), blocked("SAFETY"), answer({"visual": "nope"}))
    outcome = mer(tmp_path, clip_folder, "--wait")
    assert outcome.exit_code == 1
    result = summary(outcome)
    assert result["done"] == 0
    returned, = result["returned"]
    assert returned["reason"].startswith("Gemini server error (503") and returned["reason"].endswith("overloaded")
    reasons = sorted(f["reason"] for f in result["failed"])
    assert reasons[0].startswith("answer does not match the trace schema") and "safety" in reasons[1]
    retry = summary(mer(tmp_path, clip_folder, "--wait"))
    assert retry["done"] == 1 and retry["submitted"][0]["clips"] == 1 and server.calls["batch_create"] == 2
    assert len(retry["failed"]) == 2 and all(f["reason"].startswith("failed before") for f in retry["failed"])


@pytest.mark.parametrize("outcome", ["EXPIRED", "FAILED"])
def test_an_expired_or_failed_job_returns_its_clips_with_the_reason(start, clip_folder, tmp_path, outcome):
    server = start(job_outcome=outcome)
    ended = mer(tmp_path, clip_folder, "--wait", settings=FILES)
    assert ended.exit_code == 1
    returned = summary(ended)["returned"]
    assert len(returned) == 3 and all(outcome.lower() in r["reason"] for r in returned)
    assert records(tmp_path)[0]["state"] == outcome.lower() and outcome.lower() in records(tmp_path)[0]["reason"]
    assert server.live_files() == []
    server.job_outcome = "SUCCEEDED"
    assert summary(mer(tmp_path, clip_folder, "--wait"))["done"] == 3 and server.calls["batch_create"] == 2


def test_a_cancelled_job_returns_its_clips(start, clip_folder, tmp_path):
    server = start(job_latency=60)
    summary(mer(tmp_path, clip_folder))
    GeminiReasoner().cancel_batch(BatchJob("batches/fake1"))
    result = summary(mer(tmp_path, clip_folder))
    assert {r["reason"] for r in result["returned"]} == {"Gemini reports the job cancelled"}
    assert [job["clips"] for job in result["submitted"]] == [3]  # returned, then sent again in the same run
    assert server.calls["batch_cancel"] == 1 and server.calls["batch_create"] == 2
    assert sorted(r["state"] for r in records(tmp_path)) == ["cancelled", "pending"]


def test_a_job_whose_uploads_would_expire_first_is_cancelled_and_its_clips_sent_again(start, clip_folder, tmp_path):
    server = start(job_latency=60)
    assert summary(mer(tmp_path, clip_folder, settings=FILES))["submitted"][0]["clips"] == 3
    state = next((tmp_path / "reasoning" / "_batches").glob("*.json"))
    record = json.loads(state.read_text())
    old = datetime.now(timezone.utc) - timedelta(hours=47.5)  # Gemini deletes uploads after 48 h
    state.write_text(json.dumps({**record, "first_upload": old.isoformat()}))
    result = summary(mer(tmp_path, clip_folder, settings=FILES))
    assert {r["reason"] for r in result["returned"]} == {"cancelled: its uploaded files would expire before it ends"}
    assert server.calls["batch_cancel"] == 1 and [job["clips"] for job in result["submitted"]] == [3]
    assert len(server.live_files()) == 4  # only the new job's three clips and its JSONL


# --- never paying twice ------------------------------------------------------------------------


def test_a_run_killed_after_create_but_before_the_state_write_finds_its_job(start, clip_folder, tmp_path, monkeypatch):
    server = start(job_latency=60)
    save = JobBook.save

    def killed_after_create(self, record):
        if record.name is not None:
            raise KeyboardInterrupt  # the state write after create never happens
        save(self, record)

    monkeypatch.setattr(JobBook, "save", killed_after_create)
    assert mer(tmp_path, clip_folder).exit_code == 130
    monkeypatch.setattr(JobBook, "save", save)
    assert records(tmp_path)[0]["state"] == "submitting" and server.calls["batch_create"] == 1

    found = summary(mer(tmp_path, clip_folder))
    assert found["submitted"] == [] and found["pending"][0]["name"] == "batches/fake1"
    assert server.calls["batch_create"] == 1 and server.calls["batch_list"] == 1
    server.end_job("batches/fake1", "SUCCEEDED")
    assert summary(mer(tmp_path, clip_folder))["done"] == 3 and server.calls["batch_create"] == 1


def test_a_run_stopped_before_create_returns_its_clips_and_deletes_its_uploads(start, clip_folder, tmp_path,
                                                                               monkeypatch):
    server = start()
    with monkeypatch.context() as patch:
        patch.setattr(GeminiReasoner, "submit_batch", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
        assert mer(tmp_path, clip_folder, settings=FILES).exit_code == 130
    record, = records(tmp_path)
    assert record["state"] == "submitting" and len(record["files"]) == 3 and len(server.live_files()) == 3
    result = summary(mer(tmp_path, clip_folder, "--wait", settings=FILES))
    assert result["done"] == 3 and server.calls["batch_create"] == 1 and server.calls["batch_list"] == 1
    assert sorted(r["state"] for r in records(tmp_path)) == ["collected", "not created"] and server.live_files() == []


@pytest.mark.slow
def test_kill_9_between_submit_and_collect_loses_nothing(start, clip_folder, tmp_path):
    server = start(job_latency=60)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    process = subprocess.Popen([sys.executable, "-m", "mercli", "-w", str(tmp_path), "-s", "reason.batch_poll=0.05",
                                "reason", str(clip_folder), "--model", "gemini", "--batch", "--wait", "--no-embed"],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not any(r["state"] == "pending" for r in _safe_records(tmp_path)):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert server.calls["batch_create"] == 1
    server.end_job("batches/fake1", "SUCCEEDED")
    assert summary(mer(tmp_path, clip_folder))["done"] == 3 and server.calls["batch_create"] == 1


def _safe_records(workspace: Path) -> list[dict]:
    try:
        return records(workspace)
    except (OSError, ValueError):
        return []


# --- plan, split, price ------------------------------------------------------------------------


def test_a_dry_run_plans_jobs_at_online_and_batch_prices_and_calls_nothing(start, clip_folder, tmp_path):
    server = start()
    outcome = mer(tmp_path, clip_folder, "--dry-run", settings=["-s", "reasoner.gemini.batch_max_requests=2"])
    assert outcome.exit_code == 0, outcome.output
    plan = summary(outcome)
    assert plan["dry_run"] and plan["calls"] == 3 and plan["jobs"] == 2
    assert plan["cost_batch_usd"] == pytest.approx(plan["cost_online_usd"] / 2, rel=1e-3) and plan["cost_online_usd"] > 0
    assert sum(server.calls.values()) == 0 and not (tmp_path / "reasoning" / "_batches").exists()


def test_jobs_are_split_by_the_request_limit(start, clip_folder, tmp_path):
    server = start()
    result = summary(mer(tmp_path, clip_folder, "--wait", settings=["-s", "reasoner.gemini.batch_max_requests=2"]))
    assert [job["clips"] for job in result["submitted"]] == [2, 1] and result["done"] == 3
    assert server.calls["batch_create"] == 2


def test_split_jobs_keeps_each_job_within_requests_and_bytes():
    assert split_jobs([5, 5, 5, 5, 5], max_requests=2, max_bytes=100) == [[0, 1], [2, 3], [4]]
    assert split_jobs([60, 30, 20, 150, 1], max_requests=10, max_bytes=100) == [[0, 1], [2], [3], [4]]
    assert split_jobs([], 3, 10) == []


def test_the_batch_price_can_be_set_in_reason_prices(start, clip_folder, tmp_path):
    start()
    (tmp_path / "mer.toml").write_text('[reason.prices]\n"gemini-2.5-flash" = { input = 0.30, output = 2.50, '
                                       'batch_input = 0.20, batch_output = 2.00 }\n')
    plan = summary(mer(tmp_path, clip_folder, "--dry-run"))
    assert plan["cost_batch_usd"] == pytest.approx(
        (plan["usage"]["input_tokens"] * 0.20 + plan["usage"]["output_tokens"] * 2.00) / 1e6, abs=1e-6)


# --- media controls --------------------------------------------------------------------------------


def request_for(path: Path) -> ReasoningRequest:
    return ReasoningRequest(clip_id=path.stem, path=path, prompt=prompts.instruction(CLASSES),
                            answer_schema=answer_schema(CLASSES), classes=CLASSES)


def test_media_resolution_and_fps_reach_online_and_batch_requests(start, clip_folder, tmp_path):
    server = start()
    reasoner = GeminiReasoner(media_resolution="low", fps=2.0)
    reasoner.reason(request_for(clip_folder / "clip0.mp4"))
    online = server.generate_requests()[0].json
    controls = ["-s", 'reasoner.gemini.media_resolution="low"', "-s", "reasoner.gemini.fps=2.0"]
    assert summary(mer(tmp_path, clip_folder, "--wait", settings=FILES + controls))["done"] == 3
    sent = server.jobs["batches/fake5"]["requests"][0][1]
    for request in (online, sent):
        assert request["generationConfig"]["mediaResolution"] == "MEDIA_RESOLUTION_LOW"
        assert request["contents"][0]["parts"][0]["videoMetadata"] == {"fps": 2.0}


def test_the_token_estimate_follows_resolution_and_fps(clip_folder):
    request = request_for(clip_folder / "clip0.mp4")
    default = GeminiReasoner().estimate_usage(request).input_tokens
    low = GeminiReasoner(media_resolution="low").estimate_usage(request).input_tokens
    low_fast = GeminiReasoner(media_resolution="low", fps=2.0).estimate_usage(request).input_tokens
    assert default - low == pytest.approx(FRAME_TOKENS["medium"] - FRAME_TOKENS["low"], abs=2)  # a 1 s clip
    assert low_fast - low == pytest.approx(FRAME_TOKENS["low"], abs=2)


def test_out_of_range_media_controls_are_usage_errors(clip_folder, tmp_path):
    for setting in ('reasoner.gemini.media_resolution="ultra"', "reasoner.gemini.fps=0", "reasoner.gemini.fps=30"):
        outcome = CliRunner().invoke(cli, ["-w", str(tmp_path), "-s", setting, "reason", str(clip_folder),
                                           "--model", "gemini", "--dry-run"])
        assert outcome.exit_code == 2 and "Traceback" not in outcome.output
        assert setting.split("=")[0].rsplit(".", 1)[1] in outcome.stderr


def test_job_ids_sort_by_time_and_differ():
    ids = [batch_reason.new_job_id() for _ in range(20)]
    assert ids == sorted(ids) and len(set(ids)) == 20 and ids[0].startswith("mer-")


# --- hostile inputs ---------------------------------------------------------------------------------


def one_error_line(outcome) -> str:
    lines = [line for line in outcome.stderr.splitlines() if line.strip()]
    assert outcome.exit_code == 2 and len(lines) == 1 and "Traceback" not in outcome.output, outcome.output
    return lines[0]


def test_batch_with_a_reasoner_that_has_none_is_a_usage_error(clip_folder, tmp_path):
    outcome = CliRunner().invoke(cli, ["-w", str(tmp_path), "reason", str(clip_folder), "--model", "local", "--batch"])
    assert one_error_line(outcome) == "error: --batch: reasoner 'local' has no batch mode"
    assert not (tmp_path / "reasoning").exists()


@pytest.mark.parametrize("content", ["{not json", '{"id": "x"}', '{"id": "x", "source": {}, "clips": {}, '
                                     '"state": "pending", "name": "b", "first_upload": "2026-01-01T00:00:00"}', '{"id": "x", "source": {}, "clips": [], "bogus": 1}',
                                     '["a list"]'])
def test_a_corrupt_state_file_is_named_and_nothing_is_sent(start, clip_folder, tmp_path, content):
    server = start()
    folder = tmp_path / "reasoning" / "_batches"
    folder.mkdir(parents=True)
    (folder / "mer-broken.json").write_text(content)
    line = one_error_line(mer(tmp_path, clip_folder))
    assert line.startswith(f"error: {folder / 'mer-broken.json'}: ") and sum(server.calls.values()) == 0


@pytest.mark.parametrize("args, named", [(["--batch", "--rpm", "10"], "--rpm"), (["--wait"], "--wait")])
def test_options_that_mean_nothing_with_batch_are_usage_errors(clip_folder, tmp_path, args, named):
    outcome = CliRunner().invoke(cli, ["-w", str(tmp_path), "reason", str(clip_folder), "--model", "gemini", *args])
    assert outcome.exit_code == 2 and named in outcome.stderr and "Traceback" not in outcome.output


def test_a_missing_key_stops_the_submission_cleanly_and_a_later_run_sends_the_clips(start, clip_folder, tmp_path,
                                                                                     monkeypatch):
    server = start()
    with monkeypatch.context() as patch:
        patch.delenv("GEMINI_API_KEY")
        outcome = mer(tmp_path, clip_folder)
    assert outcome.exit_code == 1 and "no Gemini API key" in summary(outcome)["stopped"]
    assert sum(server.calls.values()) == 0 and records(tmp_path)[0]["state"] == "not created"
    assert summary(mer(tmp_path, clip_folder, "--wait"))["done"] == 3


def test_max_cost_keeps_jobs_that_could_pass_it_from_being_submitted(start, clip_folder, tmp_path):
    server = start()
    outcome = mer(tmp_path, clip_folder, "--max-cost", "0.0001")
    assert outcome.exit_code == 1
    skipped = summary(outcome)["skipped"]
    assert len(skipped) == 3 and all("--max-cost 0.00" in s["reason"] for s in skipped)
    assert server.calls["batch_create"] == 0


def test_the_human_report_lists_the_jobs(start, clip_folder, tmp_path):
    start(job_latency=60)
    outcome = CliRunner(env={"COLUMNS": "200"}).invoke(
        cli, ["-w", str(tmp_path), "reason", str(clip_folder), "--model", "gemini", "--batch", "--no-embed"])
    assert outcome.exit_code == 0 and outcome.stdout == ""
    assert "job submitted" in outcome.stderr and "job pending" in outcome.stderr and "clips 3" in outcome.stderr


def test_a_service_that_cannot_be_reached_stops_the_run_with_one_line_and_keeps_every_job(start, clip_folder, tmp_path,
                                                                                           monkeypatch):
    server = start(job_latency=60)
    summary(mer(tmp_path, clip_folder))
    before = records(tmp_path)
    server.close()
    outcome = mer(tmp_path, clip_folder)
    assert outcome.exit_code == 1 and "cannot reach Gemini" in summary(outcome)["stopped"]
    assert records(tmp_path) == before and "Traceback" not in outcome.output


def test_result_lines_map_onto_answers_and_error_kinds():
    from mer_plugins.reasoners import gemini_batch
    from mercli.contracts import AnswerRejected, ReasoningAnswer, RetryableError

    good = {"candidates": [{"content": {"parts": [{"text": json.dumps({"overall": {}})}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5}}
    lines = [{"key": "a", "response": good}, {"key": "b", "error": {"code": 8, "message": "quota"}},
             {"key": "c", "error": {"code": 3, "message": "bad video", "status": "INVALID_ARGUMENT"}},
             {"key": "d", "response": {"candidates": [{"finishReason": "SAFETY"}]}}]
    data = ("\n".join(json.dumps(line) for line in lines) + "\n{broken\n").encode()
    reasoner = GeminiReasoner()
    results = {key: reasoner._result(found) for key, found in gemini_batch._file_results(data).items()}
    assert set(results) == {"a", "b", "c", "d"}  # the broken line is left out: its clip is asked again
    assert isinstance(results["a"], ReasoningAnswer) and results["a"].usage.input_tokens == 10
    assert isinstance(results["b"], RetryableError) and "429" in str(results["b"])
    assert isinstance(results["c"], AnswerRejected) and "bad video" in str(results["c"])
    assert isinstance(results["d"], AnswerRejected) and "safety" in str(results["d"])

"""``mer reason`` from the command line on real clips: the local reasoner over extracted features,
and the real google-genai client against the fake Gemini server (cache, dry run, a rejected key,
a dead API, label-conditioned traces refused by train)."""

from __future__ import annotations

import json
import shutil
import socket
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from support.fake_gemini import FakeGemini, api_error, key_invalid, rate_limited, stalled
from mercli.cli import cli
from mercli.traces import validate_trace

pytestmark = pytest.mark.slow  # real mer processes or models: run by the full suite, not the quick loop

CREMA_CLASSES = '["neutral", "angry", "happy", "sad", "fear", "disgust"]'
FAKE_KEY = "fake-key-never-stored-0123456789"


def mer(workspace: Path, *args: str):
    return CliRunner(env={"COLUMNS": "200"}).invoke(cli, ["-w", str(workspace), *args])


@pytest.fixture(scope="module")
def extracted(shared_data: Path, tmp_path_factory) -> tuple[Path, Path]:
    """Four CREMA-D clips (two videos, two mp3) and a workspace with their visual and acoustic features."""
    root = tmp_path_factory.mktemp("reason")
    clips = root / "clips"
    clips.mkdir()
    source = shared_data / "crema-d"
    chosen = sorted(source.glob("*.flv"))[:2] + sorted(source.glob("*.mp3"))[:2]
    for path in chosen:
        shutil.copy(path, clips / path.name)
    workspace = root / "ws"
    workspace.mkdir()
    (workspace / "mer.toml").write_text(f"[data]\nclasses = {CREMA_CLASSES}\n")
    outcome = mer(workspace, "extract", str(clips), "--encoders", "face-landmarks,fer-expression,egemaps")
    assert outcome.exit_code == 0, outcome.output
    return clips, workspace


@pytest.fixture
def workspace(extracted, tmp_path) -> Path:
    """A copy of the extracted workspace, so that each test starts without traces."""
    copy = tmp_path / "ws"
    shutil.copytree(extracted[1], copy)
    return copy


@pytest.fixture
def gemini(monkeypatch):
    with FakeGemini(classes=json.loads(CREMA_CLASSES)) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
        monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
        yield server


def summary_of(outcome) -> dict:
    return json.loads(outcome.stdout)


def test_local_reasoning_writes_valid_traces_and_prior_feature_sets(extracted, workspace):
    clips, _ = extracted
    outcome = mer(workspace, "reason", str(clips), "--json")
    assert outcome.exit_code == 0, outcome.output
    summary = summary_of(outcome)
    assert {"clips", "done", "cached", "failed", "calls", "usage", "cost_usd"} <= set(summary)
    assert summary["clips"] == 4 and summary["done"] == 4 and summary["failed"] == [] and summary["cost_usd"] == 0
    traces = sorted((workspace / "reasoning").rglob("*.trace.json"))
    assert len(traces) == 4 and all(validate_trace(json.loads(t.read_text())) == [] for t in traces)
    audio_only = [json.loads(t.read_text()) for t in traces if t.name.startswith(tuple(p.stem for p in clips.glob("*.mp3")))]
    assert all(trace["visual"]["absent"] for trace in audio_only)
    priors = {p["name"].rsplit("-", 1)[0]: p for p in summary["priors"]}
    assert {name: p["modality"] for name, p in priors.items()} == {
        "prior-visual": "visual", "prior-acoustic": "audio", "prior-textual": "text", "prior-overall": "unknown",
        "prior-scores-visual": "visual", "prior-scores-acoustic": "audio", "prior-scores-textual": "text",
        "prior-scores-overall": "unknown"}
    numeric = json.loads((Path(priors["prior-scores-visual"]["path"]) / "manifest.json").read_text())
    assert numeric["dim"] == 7 and numeric["settings"]["classes"] == json.loads(CREMA_CLASSES)
    assert numeric["settings"]["source"] == summary["source"]
    assert len(list(Path(priors["prior-scores-visual"]["path"]).glob("*.absent.json"))) == 2
    manifest = json.loads((Path(priors["prior-visual"]["path"]) / "manifest.json").read_text())
    assert manifest["settings"]["source"]["reasoner"] == "local" and manifest["dim"] == 384
    visual_prior = Path(priors["prior-visual"]["path"])
    assert len(list(visual_prior.glob("*.npy"))) == 2 and len(list(visual_prior.glob("*.absent.json"))) == 2

    again = summary_of(mer(workspace, "reason", str(clips), "--json"))
    assert again["cached"] == 4 and again["done"] == 0 and again["calls"] == 0


def test_version_1_traces_are_not_asked_again_until_version_2_is_named(extracted, workspace):
    """``reason.prompt_version = auto`` keeps the version the workspace's traces answered; naming
    version 2 asks again, with class scores, and only then do numeric prior sets appear."""
    clips, _ = extracted
    first = summary_of(mer(workspace, "-s", "reason.prompt_version=mer-trace-v1", "reason", str(clips), "--json"))
    assert first["source"]["prompt_version"] == "rules-1" and first["done"] == 4
    assert not any(p["name"].startswith("prior-scores-") for p in first["priors"]) and len(first["priors"]) == 4
    kept = summary_of(mer(workspace, "reason", str(clips), "--json"))
    assert kept["source"]["prompt_version"] == "rules-1" and kept["cached"] == 4 and kept["done"] == 0
    scored = summary_of(mer(workspace, "-s", "reason.prompt_version=mer-trace-v2", "reason", str(clips), "--json"))
    assert scored["source"]["prompt_version"] == "rules-1-mer-trace-v2" and scored["done"] == 4
    assert sum(p["name"].startswith("prior-scores-") for p in scored["priors"]) == 4
    assert len(list((workspace / "reasoning" / "local" / "evidence-rules" / "rules-1").glob("*.trace.json"))) == 4


def test_reasoning_before_extraction_fails_each_clip_with_a_hint(extracted, tmp_path):
    clips, _ = extracted
    outcome = mer(tmp_path / "empty", "reason", str(clips), "--json")
    assert outcome.exit_code == 1
    failed = summary_of(outcome)["failed"]
    assert len(failed) == 4 and all("run mer extract first" in f["reason"] for f in failed)


def test_a_folder_entry_that_cannot_be_a_clip_is_listed_as_failed_and_the_others_go_on(extracted, tmp_path):
    clips, _ = extracted
    folder = tmp_path / "clips"
    shutil.copytree(clips, folder)
    (folder / "loop.mp3").symlink_to("loop.mp3")
    outcome = mer(tmp_path / "empty", "reason", str(folder), "--json")
    assert outcome.exit_code == 1
    summary = summary_of(outcome)
    assert summary["clips"] == 5 and summary["failed"][0] == {
        "clip": str(folder / "loop.mp3"), "reason": f"{folder / 'loop.mp3'}: 'loop.mp3' is a loop of symbolic links"}
    assert len(summary["failed"]) == 5 and all("run mer extract first" in f["reason"] for f in summary["failed"][1:])


def test_gemini_traces_come_from_the_real_client_and_a_rerun_costs_nothing(extracted, workspace, gemini):
    clips, _ = extracted
    outcome = mer(workspace, "reason", str(clips), "--model", "gemini", "--json", "--no-embed")
    assert outcome.exit_code == 0, outcome.output
    summary = summary_of(outcome)
    assert summary["done"] == 4 and summary["calls"] == 4 and gemini.calls["generate"] == 4
    assert summary["usage"]["input_tokens"] > 0 and summary["cost_usd"] > 0
    trace = json.loads(next((workspace / "reasoning" / "gemini").rglob("*.trace.json")).read_text())
    assert trace["provenance"]["model"] == "gemini-2.5-flash" and trace["provenance"]["label_conditioned"] is False
    assert not any("labelled this clip" in json.dumps(r.json) for r in gemini.generate_requests())

    again = summary_of(mer(workspace, "reason", str(clips), "--model", "gemini:gemini-2.5-flash", "--json", "--no-embed"))
    assert again["cached"] == 4 and again["calls"] == 0 and gemini.calls["generate"] == 4
    written = "".join(p.read_text(errors="ignore") for p in workspace.rglob("*") if p.is_file() and p.suffix != ".npy")
    assert FAKE_KEY not in written


def test_rate_limits_server_errors_and_timeouts_are_retried_until_an_answer(extracted, workspace, gemini):
    clips, _ = extracted
    gemini.script(rate_limited(retry_delay="0.3s"), api_error(500, "INTERNAL", "boom"), stalled(5, json.loads(CREMA_CLASSES)))
    args = ["-s", "reason.backoff=0.01", "-s", "reasoner.gemini.timeout=1", "reason", str(clips), "--model", "gemini",
            "--concurrency", "1", "--json", "--no-embed"]
    outcome = mer(workspace, *args)
    assert outcome.exit_code == 0, outcome.output
    summary = summary_of(outcome)
    assert summary["done"] == 4 and summary["failed"] == [] and summary["calls"] == 7


def test_a_retry_after_of_an_hour_is_capped_by_max_backoff_and_said(extracted, workspace, gemini):
    clips, _ = extracted
    gemini.script(rate_limited(retry_delay=None, retry_after="3600"))
    args = ["-s", "reason.max_backoff=0.5", "reason", str(clips), "--model", "gemini", "--concurrency", "1",
            "--json", "--no-embed"]
    started = time.monotonic()
    outcome = mer(workspace, *args)
    assert outcome.exit_code == 0, outcome.output
    assert time.monotonic() - started < 60
    assert summary_of(outcome)["done"] == 4 and gemini.calls["generate"] == 5
    (notice,) = [line for line in outcome.stderr.splitlines() if "waiting" in line]
    assert notice.startswith("gemini: ") and "rate limited (429 RESOURCE_EXHAUSTED)" in notice
    assert notice.endswith("waiting 0.5 s before retry 1 of 5 (the server asked for 3600 s; reason.max_backoff "
                           "caps the wait at 0.5 s)")


def test_a_dry_run_estimates_and_calls_nothing(extracted, workspace, gemini):
    clips, _ = extracted
    outcome = mer(workspace, "reason", str(clips), "--model", "gemini", "--dry-run", "--json")
    assert outcome.exit_code == 0, outcome.output
    summary = summary_of(outcome)
    assert summary["dry_run"] is True and summary["calls"] == 4 and summary["cost_usd"] > 0
    assert sum(gemini.calls.values()) == 0 and not list((workspace / "reasoning").rglob("*.trace.json"))
    human = mer(workspace, "reason", str(clips), "--model", "gemini", "--dry-run")
    assert human.exit_code == 0 and human.stdout == "" and sum(gemini.calls.values()) == 0
    assert "plan (nothing called)" in human.stderr and "remote calls" in human.stderr and "USD" in human.stderr


def test_a_rejected_key_stops_the_run_with_one_line(extracted, workspace, gemini):
    clips, _ = extracted
    gemini.script(key_invalid())
    outcome = mer(workspace, "reason", str(clips), "--model", "gemini", "--concurrency", "1", "--json")
    assert outcome.exit_code == 1
    summary = summary_of(outcome)
    assert "rejected" in summary["stopped"] and summary["done"] == 0 and gemini.calls["generate"] == 1
    assert [line for line in outcome.stderr.splitlines() if line.startswith("error:")] == [f"error: {summary['stopped']}"]
    assert FAKE_KEY not in outcome.output


def test_a_dead_api_fails_each_clip_after_its_retries_and_retry_failed_asks_again(extracted, workspace, gemini,
                                                                                   monkeypatch):
    clips, _ = extracted
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", dead)
    args = ["-s", "reason.max_retries=1", "-s", "reason.backoff=0.01", "reason", str(clips), "--model", "gemini",
            "--json", "--no-embed"]
    outcome = mer(workspace, *args)
    assert outcome.exit_code == 1
    failed = summary_of(outcome)["failed"]
    assert len(failed) == 4 and all(f["reason"].startswith("gave up after 2 attempts") for f in failed)

    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", gemini.base_url)
    unchanged = summary_of(mer(workspace, *args))
    assert unchanged["calls"] == 0 and all("--retry-failed" in f["reason"] for f in unchanged["failed"])
    retried = summary_of(mer(workspace, *args, "--retry-failed"))
    assert retried["done"] == 4 and retried["failed"] == []


def test_max_cost_leaves_clips_unasked_and_says_so(extracted, workspace, gemini):
    clips, _ = extracted
    outcome = mer(workspace, "reason", str(clips), "--model", "gemini", "--max-cost", "0.0000001", "--json")
    assert outcome.exit_code == 1
    summary = summary_of(outcome)
    assert summary["calls"] == 0 and len(summary["skipped"]) == 4 and "--max-cost" in summary["skipped"][0]["reason"]


def test_label_conditioned_traces_are_marked_and_train_refuses_them_for_validation(extracted, workspace, gemini):
    clips, _ = extracted
    outcome = mer(workspace, "reason", str(clips), "--model", "gemini", "--label-conditioned", "--json")
    assert outcome.exit_code == 0, outcome.output
    prompts_sent = [json.dumps(r.json) for r in gemini.generate_requests()]
    assert len(prompts_sent) == 4 and all("labelled this clip" in p for p in prompts_sent)
    assert list((workspace / "reasoning" / "gemini").glob("*/*+labels"))
    train = mer(workspace, "train", "--labels", str(clips), "--folds", "2", "--epochs", "2")
    assert train.exit_code == 2 and "label-conditioned" in train.stderr and "validation" in train.stderr

"""The gemini reasoner, driving the real google-genai client against the local fake Gemini server
(tests/fake_gemini.py): what is sent, how answers are read, and how every failure maps onto the
contract's error kinds. Nothing here touches the internet."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import pytest

from support.fake_gemini import (FakeGemini, Reply, answer, answer_text, api_error, blocked, key_invalid, prompt_blocked,
                         rate_limited, sample_answer, stalled)
from mer_plugins.reasoners import gemini
from mer_plugins.reasoners.gemini import GeminiReasoner
from mercli import plugins, prompts
from mercli.contracts import AnswerRejected, ReasoningRequest, RetryableError, StopRun, Usage
from mercli.errors import ConfigError
from mercli.trace_model import answer_schema
from mercli.media import probe

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
FAKE_KEY = "fake-gemini-key-0123456789"
REPO = Path(__file__).resolve().parents[1]


def synthesize(path: Path, seconds: float, video: bool = True) -> Path:
    """A tiny real clip made by ffmpeg's own test sources: 64x48 colour bars and a 440 Hz tone."""
    if shutil.which("ffmpeg") is None:
        pytest.skip("ffmpeg is not installed (Debian/Ubuntu: apt-get install ffmpeg)")
    sources = ["-f", "lavfi", "-i", f"testsrc=size=64x48:rate=10:duration={seconds}"] if video else []
    sources += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate=16000:duration={seconds}"]
    audio_codec = "pcm_s16le" if path.suffix == ".wav" else "aac"
    codecs = (["-c:v", "libx264", "-pix_fmt", "yuv420p"] if video else []) + ["-c:a", audio_codec]
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", *sources, *codecs, "-shortest", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("clips")
    return {
        "mp4": synthesize(folder / "one.mp4", 1.0),
        "long_mp4": synthesize(folder / "three.mp4", 3.0),
        "mkv": synthesize(folder / "matroska.mkv", 1.0),
        "m4a": synthesize(folder / "voice.m4a", 1.0, video=False),
        "wav": synthesize(folder / "voice.wav", 2.0, video=False),
    }


def request_for(path: Path, label: str | None = None) -> ReasoningRequest:
    return ReasoningRequest(clip_id=path.stem, path=path, prompt=prompts.instruction(CLASSES, label=label),
                            answer_schema=answer_schema(CLASSES), classes=CLASSES, label=label)


@pytest.fixture
def start_server(monkeypatch):
    """Starts a fake with the given options, points the SDK at it and puts a fake key in the
    environment; the fake stops after the test."""
    with ExitStack() as running:
        def start(**options) -> FakeGemini:
            fake = running.enter_context(FakeGemini(**options))
            monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
            monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
            monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
            return fake

        yield start


@pytest.fixture
def server(start_server) -> FakeGemini:
    return start_server()


def failure_of(reasoner: GeminiReasoner, request: ReasoningRequest, kind: type[Exception]) -> Exception:
    with pytest.raises(kind) as caught:
        reasoner.reason(request)
    message = str(caught.value)
    assert "\n" not in message and FAKE_KEY not in message
    return caught.value


# --- what is sent and what comes back -------------------------------------------------------


def test_a_small_clip_travels_inline_with_the_prompt_schema_and_key(server, clips):
    request = request_for(clips["mp4"])
    result = GeminiReasoner().reason(request)

    assert result.answer == sample_answer()
    assert result.usage == Usage(input_tokens=1200, output_tokens=150)
    (sent,) = server.generate_requests()
    assert sent.path.endswith("/models/gemini-2.5-flash:generateContent")
    assert sent.headers["x-goog-api-key"] == FAKE_KEY
    media, text = sent.parts()
    assert (media.kind, media.mime_type, media.data) == ("inline", "video/mp4", clips["mp4"].read_bytes())
    assert text.text == request.prompt and "labelled" not in text.text
    config = sent.json["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    assert config["responseJsonSchema"] == request.answer_schema
    assert config["temperature"] == 0.0
    assert server.calls["upload_start"] == 0


def test_the_label_is_sent_only_when_the_request_carries_it(server, clips):
    GeminiReasoner().reason(request_for(clips["mp4"], label="angry"))
    text = server.generate_requests()[0].parts()[1].text
    assert 'labelled this clip "angry"' in text


def test_options_reach_the_request(server, clips):
    GeminiReasoner(model="gemini-2.5-pro", temperature=0.4, max_output_tokens=2048).reason(request_for(clips["mp4"]))
    (sent,) = server.generate_requests()
    assert sent.path.endswith("/models/gemini-2.5-pro:generateContent")
    assert sent.json["generationConfig"]["temperature"] == 0.4
    assert sent.json["generationConfig"]["maxOutputTokens"] == 2048


def test_thinking_counts_as_output_and_thought_text_is_not_the_answer(server, clips):
    server.script(answer(sample_answer(emotion="sad"), prompt_tokens=2000, output_tokens=300,
                         thoughts_tokens=700, thought="The voice is low and slow..."))
    result = GeminiReasoner().reason(request_for(clips["mp4"]))
    assert result.answer["overall"]["emotion"] == "sad"
    assert result.usage == Usage(input_tokens=2000, output_tokens=1000)


def test_a_real_crema_d_flash_video_is_sent_as_it_is(server, shared_data):
    clip = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    GeminiReasoner().reason(request_for(clip))
    media = server.generate_requests()[0].parts()[0]
    assert (media.mime_type, media.data) == ("video/x-flv", clip.read_bytes())


def test_a_schema_invalid_object_is_returned_for_the_core_to_reject(server, clips):
    server.script(answer({"overall": {"emotion": "bored"}}))
    assert GeminiReasoner().reason(request_for(clips["mp4"])).answer == {"overall": {"emotion": "bored"}}


# --- the Files API ----------------------------------------------------------------------------


def test_a_large_clip_is_uploaded_polled_until_active_used_and_deleted(start_server, clips):
    fake = start_server(processing_polls=2)
    result = GeminiReasoner(inline_limit_mb=0.001, poll_interval=0.01).reason(request_for(clips["mp4"]))

    assert result.answer == sample_answer()
    assert fake.calls == {"upload_start": 1, "upload": 1, "file_get": 3, "generate": 1, "file_delete": 1}
    (stored,) = fake.files.values()
    assert stored["data"] == clips["mp4"].read_bytes() and stored["mimeType"] == "video/mp4"
    assert stored["displayName"] == "one" and stored["deleted"]
    media, _ = fake.generate_requests()[0].parts()
    assert (media.kind, media.uri, media.mime_type) == ("file", stored["uri"], "video/mp4")


def test_a_file_gemini_cannot_process_rejects_the_clip_and_is_deleted(start_server, clips):
    fake = start_server(processing_polls=1, file_outcome="FAILED")
    error = failure_of(GeminiReasoner(inline_limit_mb=0, poll_interval=0.01), request_for(clips["mp4"]), AnswerRejected)
    assert "could not process the uploaded file files/" in str(error)
    assert fake.calls["generate"] == 0 and fake.calls["file_delete"] == 1


def test_processing_longer_than_the_timeout_is_retryable_and_the_file_deleted(start_server, clips):
    fake = start_server(processing_polls=10_000)
    reasoner = GeminiReasoner(inline_limit_mb=0, poll_interval=0.05, timeout=0.3)
    started = time.monotonic()
    error = failure_of(reasoner, request_for(clips["mp4"]), RetryableError)
    assert time.monotonic() - started < 2
    assert "still processing after 0.3 s" in str(error)
    assert fake.calls["generate"] == 0 and fake.calls["file_delete"] == 1


# --- containers Gemini does not accept --------------------------------------------------------


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """Where conversions go, so a test can check that nothing is left behind."""
    folder = tmp_path / "scratch"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def sent_media(server: FakeGemini, folder: Path) -> Path:
    media = server.generate_requests()[0].parts()[0]
    copy = folder / f"sent.{media.mime_type.split('/')[1]}"
    copy.write_bytes(media.data)
    return copy


def test_matroska_video_is_converted_to_mp4_with_its_sound(server, clips, scratch, tmp_path):
    GeminiReasoner().reason(request_for(clips["mkv"]))
    assert list(scratch.iterdir()) == []
    sent = probe(sent_media(server, tmp_path))
    assert sent.path.suffix == ".mp4" and sent.has_video and sent.has_audio
    assert sent.duration == pytest.approx(1.0, abs=0.2)


def test_m4a_audio_is_converted_to_16k_mono_wav(server, clips, scratch, tmp_path):
    GeminiReasoner().reason(request_for(clips["m4a"]))
    assert list(scratch.iterdir()) == []
    sent = probe(sent_media(server, tmp_path))
    assert sent.path.suffix == ".wav" and not sent.has_video and sent.sample_rate == 16000


def test_a_file_that_cannot_be_converted_rejects_the_clip(server, tmp_path):
    broken = tmp_path / "broken.mkv"
    broken.write_bytes(b"not a matroska file at all")
    error = failure_of(GeminiReasoner(), request_for(broken), AnswerRejected)
    assert "broken.mkv" in str(error)
    assert server.calls["generate"] == 0


def test_a_missing_clip_rejects_the_clip(server, tmp_path):
    error = failure_of(GeminiReasoner(), request_for(tmp_path / "gone.mp4"), AnswerRejected)
    assert "gone.mp4: cannot read the clip" in str(error)


# --- failures ----------------------------------------------------------------------------------


@pytest.mark.parametrize("reply, wait", [
    (rate_limited(retry_delay="7s"), 7.0),
    (rate_limited(retry_delay="1.5s"), 1.5),
    (rate_limited(retry_delay=None, retry_after="12"), 12.0),
    (rate_limited(retry_delay=None), None),
], ids=["retry-info", "fractional", "retry-after-header", "no-hint"])
def test_a_per_minute_rate_limit_is_retryable_with_the_servers_hint(server, clips, reply, wait):
    server.script(reply)
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), RetryableError)
    assert error.retry_after == wait and "rate limited (429 RESOURCE_EXHAUSTED)" in str(error)
    assert server.calls["generate"] == 1  # the SDK's own retries are off: the core owns retrying


@pytest.mark.parametrize("reply, reason", [
    (rate_limited(quota_id="GenerateRequestsPerDayPerProjectPerModel-FreeTier", quota_value="250"), "daily limit"),
    (rate_limited(quota_id="GenerateContentInputTokensPerModelPerMinute-FreeTier", quota_value="0"), "limit of 0"),
], ids=["per-day", "zero-quota"])
def test_a_quota_that_cannot_recover_in_this_run_stops_it(server, clips, reply, reason):
    server.script(reply)
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), StopRun)
    assert reason in str(error)


@pytest.mark.parametrize("reply", [
    api_error(500, "INTERNAL", "An internal error has occurred."),
    api_error(503, "UNAVAILABLE", "The model is overloaded. Please try again later."),
], ids=["500", "503"])
def test_server_errors_are_retryable(server, clips, reply):
    server.script(reply)
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), RetryableError)
    assert str(reply.status) in str(error)
    assert server.calls["generate"] == 1


def test_no_answer_within_the_timeout_is_retryable(server, clips):
    server.script(stalled(10))
    started = time.monotonic()
    error = failure_of(GeminiReasoner(timeout=0.3), request_for(clips["mp4"]), RetryableError)
    assert time.monotonic() - started < 3
    assert "no answer within 0.3 s" in str(error)


def test_a_retry_after_date_becomes_seconds(server, clips):
    when = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    server.script(rate_limited(retry_delay=None, retry_after=when))
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), RetryableError)
    assert error.retry_after == pytest.approx(30, abs=2)


def test_a_non_json_page_from_a_proxy_is_retryable(server, clips):
    server.script(Reply(body="<html>502 upstream hiccup</html>"))
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), RetryableError)
    assert "not JSON" in str(error)


def test_an_upload_the_server_does_not_start_is_retryable(server, clips, monkeypatch):
    monkeypatch.setattr(server, "_start_upload", lambda *request: Reply(body={}))  # no upload URL
    error = failure_of(GeminiReasoner(inline_limit_mb=0), request_for(clips["mp4"]), RetryableError)
    assert "upload of one.mp4 did not complete" in str(error)
    assert server.calls["generate"] == 0


def test_a_404_means_an_unknown_model_only_on_a_model_path():
    from google.genai import errors

    missing_file = errors.APIError(404, {"error": {"code": 404, "message": "File files/x does not exist", "status": "NOT_FOUND"}})
    assert isinstance(gemini._api_failure(missing_file, "gemini-2.5-flash"), RetryableError)


def test_a_server_that_is_down_is_retryable(monkeypatch, clips):
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    error = failure_of(GeminiReasoner(timeout=5), request_for(clips["mp4"]), RetryableError)
    assert "cannot reach Gemini" in str(error)


@pytest.mark.parametrize("reply", [
    key_invalid(),
    api_error(401, "UNAUTHENTICATED", f"Request had invalid authentication credentials: {FAKE_KEY}"),
    api_error(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."),
], ids=["400-api-key-invalid", "401", "403"])
def test_a_rejected_key_stops_the_run_without_showing_the_key(server, clips, reply):
    server.script(reply)
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), StopRun)
    assert str(error).startswith("the key was rejected")


@pytest.mark.parametrize("reply, start", [
    (api_error(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), "Gemini refuses this project"),
    (blocked("PUP_LIMITED_DISABLED"), "Gemini stopped answering"),
], ids=["region", "account-disabled"])
def test_a_refused_project_or_account_stops_the_run(server, clips, reply, start):
    server.script(reply)
    assert str(failure_of(GeminiReasoner(), request_for(clips["mp4"]), StopRun)).startswith(start)


def test_the_key_is_taken_in_the_sdks_order(server, clips, monkeypatch):
    monkeypatch.setenv("GOOGLE_API_KEY", "google-api-key")
    GeminiReasoner().reason(request_for(clips["mp4"]))
    assert server.requests[0].headers["x-goog-api-key"] == "google-api-key"


def test_a_missing_key_stops_the_run_before_any_request(server, clips, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY")
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), StopRun)
    assert "GEMINI_API_KEY" in str(error)
    assert server.requests == []


def test_an_unknown_model_stops_the_run(server, clips):
    server.script(api_error(404, "NOT_FOUND", "models/gemini-9-ultra is not found for API version v1"))
    error = failure_of(GeminiReasoner(model="gemini-9-ultra"), request_for(clips["mp4"]), StopRun)
    assert "model 'gemini-9-ultra' not found" in str(error)


def test_a_request_gemini_refuses_for_this_clip_rejects_the_clip(server, clips):
    server.script(api_error(400, "INVALID_ARGUMENT", "Request payload size exceeds the limit."))
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), AnswerRejected)
    assert "payload size" in str(error)


@pytest.mark.parametrize("reply, reason", [
    (blocked("SAFETY"), "SAFETY"),
    (blocked("PROHIBITED_CONTENT"), "PROHIBITED_CONTENT"),
    (prompt_blocked("PROHIBITED_CONTENT"), "prompt PROHIBITED_CONTENT"),
], ids=["answer-safety", "answer-prohibited", "prompt-blocked"])
def test_a_safety_block_rejects_the_clip(server, clips, reply, reason):
    server.script(reply)
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), AnswerRejected)
    assert str(error) == f"blocked by safety filter: {reason}"


@pytest.mark.parametrize("reply, problem", [
    (answer_text(""), "empty answer"),
    (answer_text('{"visual": {"cues": ['), "malformed JSON"),
    (answer_text("The speaker looks angry."), "malformed JSON"),
    (answer(["happy", "sad"]), "a JSON list, not an object"),
    (answer_text('{"visual": ', finish_reason="MAX_TOKENS"), "cut off at the output token limit"),
], ids=["empty", "truncated", "prose", "not-an-object", "max-tokens"])
def test_an_unusable_answer_rejects_the_clip(server, clips, reply, problem):
    server.script(reply)
    error = failure_of(GeminiReasoner(), request_for(clips["mp4"]), AnswerRejected)
    assert problem in str(error)


# --- planning, doctor, options, registration ---------------------------------------------------


def test_estimated_usage_follows_the_clip_duration_and_the_prompt(clips):
    reasoner = GeminiReasoner()
    one, three = (reasoner.estimate_usage(request_for(clips[name])) for name in ("mp4", "long_mp4"))
    per_second = gemini.VIDEO_TOKENS_PER_SECOND + gemini.AUDIO_TOKENS_PER_SECOND
    assert three.input_tokens - one.input_tokens == pytest.approx(2 * per_second, rel=0.1)
    prompt_tokens = len(request_for(clips["mp4"]).prompt) / 4
    assert one.input_tokens == pytest.approx(per_second + prompt_tokens, rel=0.1)
    assert one.output_tokens == three.output_tokens == gemini.ANSWER_TOKENS_ESTIMATE
    sound = reasoner.estimate_usage(request_for(clips["wav"]))
    assert sound.input_tokens == pytest.approx(2 * gemini.AUDIO_TOKENS_PER_SECOND + prompt_tokens, rel=0.1)


def test_doctor_reports_the_key_without_printing_it(monkeypatch):
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GEMINI_API_KEY", FAKE_KEY)
    (check,) = GeminiReasoner().checks()
    assert check.ok and not check.required and FAKE_KEY not in check.detail
    monkeypatch.delenv("GEMINI_API_KEY")
    (check,) = GeminiReasoner().checks()
    assert not check.ok and "GEMINI_API_KEY" in check.detail


@pytest.mark.parametrize("settings", [{"timeout": 0}, {"poll_interval": -1}, {"inline_limit_mb": -5},
                                      {"max_output_tokens": 0}])
def test_invalid_options_are_configuration_errors(settings):
    with pytest.raises(ConfigError, match=f"^gemini: '{next(iter(settings))}' must be "):
        GeminiReasoner(**settings)


def test_the_plugin_registers_a_valid_reasoner_without_importing_the_sdk():
    found = []
    gemini.register_reasoners(found.append)
    assert found == [GeminiReasoner] and plugins.contract_problem(GeminiReasoner) is None
    assert GeminiReasoner.needs_network
    code = ("import sys, mer_plugins.reasoners.gemini; "
            "print(sorted(m for m in sys.modules if m.startswith(('google', 'av', 'httpx'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert loaded.stdout.strip() == "[]"

"""The openai reasoner, with the real ``openai`` client against the fake server on 127.0.0.1."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import sys
import time
import wave
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from support.fake_openai import (FakeOpenAI, Reply, answer, completion, content_filter, error, hang,
                         quota_exhausted, rate_limited, refusal, sample_answer, server_error, unauthorized)
from mer_plugins.reasoners import openai_compatible
from mer_plugins.reasoners.evidence import Evidence, measure
from mer_plugins.reasoners.openai_compatible import (LOCAL_PLACEHOLDER_KEY, OpenAIReasoner, image_tokens,
                                                     retry_after)
from mercli.contracts import AnswerRejected, Features, ReasoningRequest, RetryableError, StopRun, Usage
from mercli.errors import ConfigError
from mercli.prompts import instruction
from mercli.trace_model import answer_schema

CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
KEY_ENV = "MER_TEST_OPENAI_KEY"
KEY = "sk-test-0123456789abcdef"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No real key, base URL or proxy leaks into a test."""
    for variable in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY",
                     "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(KEY_ENV, KEY)


@pytest.fixture
def server():
    with FakeOpenAI() as running:
        yield running


def reasoner(server: FakeOpenAI, **settings) -> OpenAIReasoner:
    return OpenAIReasoner(base_url=server.base_url, api_key_env=KEY_ENV, **settings)


def make_request(path: Path, *, transcript: str | None = None, features=None) -> ReasoningRequest:
    return ReasoningRequest(clip_id=path.stem, path=path, prompt=instruction(CLASSES, transcript=transcript),
                            answer_schema=answer_schema(CLASSES), classes=CLASSES, transcript=transcript,
                            features=features or {})


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """2 s of 320x240 video at 10 fps with a tone, named like a CREMA-D clip whose name gives its label away."""
    path = tmp_path_factory.mktemp("clips") / "1001_DFA_ANG_XX.mp4"
    with av.open(str(path), "w") as container:
        picture = container.add_stream("mpeg4", rate=10)
        picture.width, picture.height, picture.pix_fmt = 320, 240, "yuv420p"
        sound = container.add_stream("aac", rate=16000)
        for index in range(20):
            image = np.full((240, 320, 3), index * 12, dtype=np.uint8)
            for packet in picture.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        tone = (0.3 * np.sin(2 * np.pi * 220 * np.arange(32000) / 16000)).astype(np.float32)[None, :]
        frame = av.AudioFrame.from_ndarray(tone, format="fltp", layout="mono")
        frame.sample_rate = 16000
        for packet in [*sound.encode(frame), *sound.encode(None), *picture.encode(None)]:
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def speech_only(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("clips") / "voice.wav"
    samples = (8000 * np.sin(2 * np.pi * 200 * np.arange(16000) / 16000)).astype("<i2")
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes(samples.tobytes())
    return path


def decoded_image(data_url: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert data_url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(data_url[len(prefix):])))


# --- a good answer --------------------------------------------------------------------------------


def test_success_sends_prompt_frames_and_schema_and_parses_the_answer(server, video):
    document = sample_answer(CLASSES)
    server.script(answer(document, prompt_tokens=1234, completion_tokens=321))
    request = make_request(video, transcript="Don't forget a jacket.")

    result = reasoner(server, model="served-model").reason(request)

    assert result.answer == document
    assert result.usage == Usage(1234, 321)
    [call] = server.chat_requests()
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {KEY}"
    assert call.json["model"] == "served-model"
    assert [m["role"] for m in call.json["messages"]] == ["user"]
    texts = call.texts()
    assert texts[0] == request.prompt
    assert any('Transcript of the speech: "Don\'t forget a jacket."' in t for t in texts)
    assert any("Acoustic summary" in t for t in texts)
    urls = call.image_urls()
    assert len(urls) == 8
    assert {decoded_image(url).size for url in urls} == {(320, 240)}  # smaller than 512: never upscaled
    assert call.json["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "mer_trace", "schema": request.answer_schema, "strict": True}}
    assert "temperature" not in call.json and "max_completion_tokens" not in call.json


def test_the_label_is_not_sent_not_even_through_the_clip_name(server, video):
    reasoner(server).reason(make_request(video))
    sent = json.dumps([t for t in server.chat_requests()[0].texts()])
    assert "ANG" not in sent and video.stem not in sent and "annotators labelled" not in sent


@pytest.mark.parametrize("frames, frame_size, size", [(3, 96, (96, 72)), (5, 160, (160, 120))])
def test_frames_count_and_size_follow_the_options(server, video, frames, frame_size, size):
    reasoner(server, frames=frames, frame_size=frame_size).reason(make_request(video))
    urls = server.chat_requests()[0].image_urls()
    assert len(urls) == frames
    assert {decoded_image(url).size for url in urls} == {size}
    assert f"{frames} stills sampled evenly over the clip, at 0.0," in " ".join(server.chat_requests()[0].texts())


def test_frames_spread_over_the_whole_clip(server, video):
    reasoner(server, frames=4).reason(make_request(video))
    shades = [int(np.asarray(decoded_image(url)).mean()) for url in server.chat_requests()[0].image_urls()]
    assert shades == sorted(shades) and shades[0] < 30 and shades[-1] > 170  # first and last seconds


def test_a_real_clip_is_sampled_and_sent(server, shared_data):
    clip = shared_data / "crema-d" / "1001_DFA_ANG_XX.flv"
    reasoner(server, frame_size=256).reason(make_request(clip))
    urls = server.chat_requests()[0].image_urls()
    assert len(urls) == 8
    assert {decoded_image(url).size for url in urls} == {(256, 192)}


def test_an_audio_only_clip_sends_no_images_and_says_so(server, speech_only):
    result = reasoner(server).reason(make_request(speech_only))
    assert result.answer == sample_answer()
    call = server.chat_requests()[0]
    assert call.image_urls() == []
    assert any("No video frames: the file is audio-only" in text for text in call.texts())


def test_frames_zero_asks_with_text_only(server, video):
    reasoner(server, frames=0).reason(make_request(video))
    assert server.chat_requests()[0].image_urls() == []
    assert any("No video frames are sent" in text for text in server.chat_requests()[0].texts())


def test_a_clip_without_transcript_or_features_says_so(server, speech_only):
    reasoner(server).reason(make_request(speech_only))
    texts = server.chat_requests()[0].texts()
    assert any("Transcript of the speech: none available" in text for text in texts)
    assert any("which you cannot hear): not available: features not extracted (egemaps)" in text for text in texts)


def test_real_acoustic_features_are_summarised(server, speech_only):
    egemaps = np.zeros(88, dtype=np.float32)
    egemaps[10] = 1.4  # loudness_sma3_amean: loud
    features = {"egemaps": Features(egemaps)}
    cues = measure(features, None, CLASSES)["acoustic"].cues
    reasoner(server).reason(make_request(speech_only, features=features))
    texts = server.chat_requests()[0].texts()
    assert cues and any(f"which you cannot hear): {'; '.join(cues)}\n" in text + "\n" for text in texts)


def test_features_of_the_wrong_layout_reject_the_clip(server, speech_only):
    wrong = {"egemaps": Features(np.zeros(5, dtype=np.float32))}
    with pytest.raises(AnswerRejected, match="cannot summarise the clip's features: egemaps features have shape"):
        reasoner(server).reason(make_request(speech_only, features=wrong))
    assert server.calls["chat"] == 0


def test_the_acoustic_summary_comes_from_the_evidence_module(server, speech_only, monkeypatch):
    measured = {"visual": Evidence([], {}, "no face"), "textual": Evidence([], {}, "no transcript"),
                "acoustic": Evidence(["pitch high and rising", "loud"], {"angry": 0.8})}
    monkeypatch.setattr("mer_plugins.reasoners.evidence.measure", lambda features, transcript, classes: measured)
    reasoner(server).reason(make_request(speech_only))
    assert any("which you cannot hear): pitch high and rising; loud" in t for t in server.chat_requests()[0].texts())

    measured["acoustic"] = Evidence([], {}, "no audio track")
    reasoner(server).reason(make_request(speech_only))
    texts = server.chat_requests()[1].texts()
    assert any("which you cannot hear): not available: no audio track; judge the acoustic" in t for t in texts)


def test_sampling_options_are_sent_only_when_set(server, speech_only):
    reasoner(server, temperature=0.2, max_output_tokens=900).reason(make_request(speech_only))
    body = server.chat_requests()[0].json
    assert body["temperature"] == 0.2 and body["max_completion_tokens"] == 900


def test_unstructured_mode_asks_for_a_json_object_with_the_schema_in_the_prompt(server, speech_only):
    request = make_request(speech_only)
    reasoner(server, structured=False).reason(request)
    call = server.chat_requests()[0]
    assert call.json["response_format"] == {"type": "json_object"}
    assert call.texts()[0] == request.prompt + "\nJSON schema of the answer:\n" + json.dumps(request.answer_schema)


def test_a_schema_invalid_answer_is_returned_for_the_core_to_check(server, speech_only):
    invalid = {"overall": {"emotion": "bored"}, "extra": [1, 2]}
    server.script(answer(invalid))
    assert reasoner(server).reason(make_request(speech_only)).answer == invalid


def test_a_json_answer_in_a_markdown_fence_is_read(server, speech_only):
    server.script(completion("```json\n" + json.dumps(sample_answer()) + "\n```"))
    assert reasoner(server).reason(make_request(speech_only)).answer == sample_answer()


def test_a_reply_without_usage_counts_zero_tokens(server, speech_only):
    reply = completion(json.dumps(sample_answer()))
    del reply.body["usage"]
    server.script(reply)
    assert reasoner(server).reason(make_request(speech_only)).usage == Usage()


# --- answers that are no answer -------------------------------------------------------------------


@pytest.mark.parametrize("reply, message", [
    (refusal("I can't help with that."), "refused: I can't help with that."),
    (content_filter(), "refused: the server's content filter"),
    (completion("the face looks angry {"), "malformed JSON: Expecting value at character 0"),
    (completion('{"visual": '), "malformed JSON"),
    (completion('{"visual": ', finish_reason="length"), "cut off at the token limit"),
    (completion(""), "empty answer"),
    (completion(None), "empty answer"),
    (completion("[1, 2]"), "the answer is a JSON list, not an object"),
    (error(400, "This model's maximum context length is 8192 tokens."), "request refused (400): This model's maximum"),
    (Reply(200, "<html>It works!</html>"), "answered with something other than JSON"),
    (Reply(200, '{"object": "list", "data": []}'), "returned no choices"),
    (Reply(200, "[]"), "returned no choices"),
])
def test_unusable_answers_are_rejected(server, speech_only, reply, message):
    server.script(reply)
    with pytest.raises(AnswerRejected, match=message.replace("(", r"\(").replace(")", r"\)")) as raised:
        reasoner(server).reason(make_request(speech_only))
    assert "\n" not in str(raised.value)
    assert server.calls["chat"] == 1


def test_an_undecodable_clip_is_rejected_with_its_path(server, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    with pytest.raises(AnswerRejected, match="broken.mp4: cannot decode"):
        reasoner(server).reason(make_request(broken))
    assert server.calls["chat"] == 0


# --- errors: retry, stop ----------------------------------------------------------------------------


@pytest.mark.parametrize("reply, wait", [
    (rate_limited(retry_after=7), 7.0),
    (rate_limited(retry_after_ms=1500), 1.5),
    (rate_limited(retry_after=7, retry_after_ms=250), 0.25),
    (rate_limited(), None),
])
def test_rate_limits_are_retryable_with_the_servers_hint(server, speech_only, reply, wait):
    server.script(reply)
    with pytest.raises(RetryableError, match=r"rate limited \(429\)") as raised:
        reasoner(server).reason(make_request(speech_only))
    assert raised.value.retry_after == wait
    assert server.calls["chat"] == 1  # the client itself never retries: the core does


def test_an_exhausted_quota_stops_the_run(server, speech_only):
    server.script(quota_exhausted())
    with pytest.raises(StopRun, match="quota exhausted"):
        reasoner(server).reason(make_request(speech_only))


@pytest.mark.parametrize("status", [500, 502, 503])
def test_server_errors_are_retryable(server, speech_only, status):
    server.script(server_error(status))
    with pytest.raises(RetryableError, match=rf"server error \({status}\)") as raised:
        reasoner(server).reason(make_request(speech_only))
    assert raised.value.retry_after is None
    assert server.calls["chat"] == 1


def test_a_slow_server_times_out_as_retryable(server, speech_only):
    server.script(hang(5))
    started = time.monotonic()
    with pytest.raises(RetryableError, match="within 0.3 s"):
        reasoner(server, timeout=0.3).reason(make_request(speech_only))
    assert time.monotonic() - started < 2.5
    assert server.calls["chat"] == 1


def test_a_server_that_is_down_is_retryable(speech_only):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    down = OpenAIReasoner(base_url=f"http://127.0.0.1:{port}/v1", api_key_env=KEY_ENV, timeout=2)
    with pytest.raises(RetryableError, match=f"cannot reach http://127.0.0.1:{port}/v1"):
        down.reason(make_request(speech_only))


@pytest.mark.parametrize("status", [401, 403])
def test_a_rejected_key_stops_the_run_without_showing_the_key(server, speech_only, status):
    server.script(unauthorized(echo_key=KEY) if status == 401 else error(403, f"Key {KEY} lacks access."))
    with pytest.raises(StopRun, match=rf"the key was rejected .*\({status}\).*check {KEY_ENV}") as raised:
        reasoner(server).reason(make_request(speech_only))
    assert KEY not in str(raised.value) and "<key>" in str(raised.value)


def test_a_model_the_server_does_not_serve_stops_the_run(server, speech_only):
    server.script(error(404, "The model `nope` does not exist.", code="model_not_found"))
    with pytest.raises(StopRun, match="model 'nope' not found at .*The model `nope` does not exist"):
        reasoner(server, model="nope").reason(make_request(speech_only))


def test_a_server_without_json_schema_support_is_told_to_use_structured_false(server, speech_only):
    server.script(error(400, "response_format json_schema is not supported", param="response_format"))
    with pytest.raises(StopRun, match="set structured = false"):
        reasoner(server).reason(make_request(speech_only))


# --- the key ----------------------------------------------------------------------------------------


def test_a_missing_key_for_a_remote_server_stops_the_run_naming_the_variable(monkeypatch, speech_only):
    monkeypatch.delenv(KEY_ENV)
    remote = OpenAIReasoner(base_url="https://api.example.com/v1", api_key_env=KEY_ENV)
    with pytest.raises(StopRun, match=f"set the environment variable {KEY_ENV}"):
        remote.reason(make_request(speech_only))
    with pytest.raises(StopRun, match="OPENAI_API_KEY .*api.openai.com"):
        OpenAIReasoner().reason(make_request(speech_only))


def test_a_local_server_gets_a_placeholder_key(monkeypatch, server, speech_only):
    monkeypatch.delenv(KEY_ENV)
    reasoner(server).reason(make_request(speech_only))
    assert server.chat_requests()[0].headers["authorization"] == f"Bearer {LOCAL_PLACEHOLDER_KEY}"


def test_the_base_url_falls_back_to_the_environment(monkeypatch, server, speech_only):
    monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
    OpenAIReasoner(api_key_env=KEY_ENV).reason(make_request(speech_only))
    assert server.calls["chat"] == 1


def test_doctor_checks_report_the_key_variable_never_its_value(monkeypatch):
    [present] = OpenAIReasoner(api_key_env=KEY_ENV).checks()
    assert present.ok and not present.required and KEY_ENV in present.detail and KEY not in present.detail
    monkeypatch.delenv(KEY_ENV)
    [missing] = OpenAIReasoner(api_key_env=KEY_ENV).checks()
    assert not missing.ok and "is not set" in missing.detail
    [local] = OpenAIReasoner(api_key_env=KEY_ENV, base_url="http://localhost:11434/v1").checks()
    assert local.ok and "not needed" in local.detail


# --- planning, options, registration ---------------------------------------------------------------


def test_image_tokens_follow_openais_tiling():
    assert image_tokens(512, 384) == 255
    assert image_tokens(1024, 1024) == 765
    assert image_tokens(2048, 4096) == 1105
    assert image_tokens(16, 16) == 255


def test_estimate_counts_frames_text_and_output(video, speech_only):
    request = make_request(video, transcript="Don't forget a jacket.")
    estimate = OpenAIReasoner(frames=8).estimate_usage(request)
    text_only = OpenAIReasoner(frames=0).estimate_usage(request)
    assert estimate.output_tokens == text_only.output_tokens == 600
    assert estimate.input_tokens - text_only.input_tokens == 8 * image_tokens(320, 240)
    text = request.prompt + request.transcript + json.dumps(request.answer_schema)
    assert text_only.input_tokens == len(text) // 4 + openai_compatible.CONTEXT_TOKENS
    audio = make_request(speech_only, transcript="Don't forget a jacket.")
    assert OpenAIReasoner(frames=8).estimate_usage(audio).input_tokens == text_only.input_tokens


@pytest.mark.parametrize("setting", [{"frames": -1}, {"frame_size": 8}, {"timeout": 0.0}])
def test_bad_options_are_refused(setting):
    with pytest.raises(ConfigError, match=f"^openai: '{next(iter(setting))}' must be "):
        OpenAIReasoner(**setting)


def test_retry_after_reads_http_dates():
    later = format_datetime(datetime.now(timezone.utc) + timedelta(seconds=30), usegmt=True)
    assert 25 < retry_after({"retry-after": later}) <= 30
    assert retry_after({"retry-after": "soon"}) is None


def test_the_plugin_registers_the_reasoner():
    registered = []
    openai_compatible.register_reasoners(registered.append)
    assert registered == [OpenAIReasoner]
    assert OpenAIReasoner.name == "openai" and OpenAIReasoner.needs_network


def test_importing_the_module_loads_no_heavy_package():
    code = ("import sys, mer_plugins.reasoners.openai_compatible; "
            "print(sorted(m for m in ('openai', 'av', 'PIL', 'numpy') if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"


def test_one_reasoner_serves_concurrent_calls_against_a_slow_server(speech_only):
    """What a benchmark does: several workers share one reasoner; the fake server's latency overlaps."""
    with FakeOpenAI(latency=0.3) as slow:
        shared = reasoner(slow)
        started = time.monotonic()
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(shared.reason, [make_request(speech_only)] * 6))
        elapsed = time.monotonic() - started
        assert slow.calls["chat"] == 6
    assert all(result.answer == sample_answer() for result in results)
    assert 0.3 <= elapsed < 1.5

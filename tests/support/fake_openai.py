"""A scriptable stand-in for an OpenAI-compatible server, on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` the way OpenAI does (bodies, status codes, headers), so
the real ``openai`` client runs against it unchanged. Each test scripts what the next calls get::

    with FakeOpenAI(latency=0.3) as server:
        server.script(rate_limited(retry_after=2), answer(document))
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        ...
        assert server.calls["chat"] == 2 and server.chat_requests()[0].headers["authorization"] == "Bearer k"

When the script is used up, every call gets ``default`` (a valid trace answer for the six MER2024
classes unless given), which is what a benchmark wants.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any, Mapping, Sequence

from support.answers import with_scores
from support.fake_http import FakeServer, Recorded, Reply

MER2024_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
CHAT_PATH = "/v1/chat/completions"


class ChatRequest(Recorded):
    """A recorded request that can list what a chat completion call sent."""

    def texts(self) -> list[str]:
        """The text parts of every message, in order."""
        return [part["text"] for part in self._parts() if part.get("type") == "text"]

    def image_urls(self) -> list[str]:
        return [part["image_url"]["url"] for part in self._parts() if part.get("type") == "image_url"]

    def _parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for message in self.json["messages"]:
            content = message["content"]
            parts += [{"type": "text", "text": content}] if isinstance(content, str) else content
        return parts


def sample_answer(classes: Sequence[str] = MER2024_CLASSES) -> dict[str, Any]:
    """An answer that satisfies :func:`mercli.trace_model.answer_schema` (class scores included) and the trace rules."""
    first = classes[0]
    observed = {"cues": ["a cue"], "emotion": first, "confidence": 0.7, "absent": None}
    return with_scores({"visual": observed, "acoustic": observed,
                        "textual": {"cues": [], "emotion": None, "confidence": None, "absent": "no speech"},
                        "overall": {"emotion": first, "confidence": 0.6, "summary": "Face and voice agree."}}, classes)


def completion(content: str | None, *, finish_reason: str = "stop", refusal: str | None = None,
               prompt_tokens: int = 1000, completion_tokens: int = 200) -> Reply:
    """A 200 reply whose message carries ``content`` as it is (valid JSON or not)."""
    return Reply(body={
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def answer(document: Any, *, prompt_tokens: int = 1000, completion_tokens: int = 200) -> Reply:
    """A 200 reply whose content is ``document`` as JSON."""
    return completion(json.dumps(document), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def refusal(text: str = "I can't help with that.") -> Reply:
    return completion(None, refusal=text)


def content_filter() -> Reply:
    return completion(None, finish_reason="content_filter")


def error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
          param: str | None = None, headers: Mapping[str, str] | None = None) -> Reply:
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return Reply(status=status, headers=dict(headers or {}),
                     body={"error": {"message": message, "type": kind, "param": param, "code": code}})


def rate_limited(retry_after: float | None = None, *, retry_after_ms: float | None = None) -> Reply:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return error(429, "Rate limit reached for requests per min.", kind="requests", code="rate_limit_exceeded",
                 headers=headers)


def quota_exhausted() -> Reply:
    return error(429, "You exceeded your current quota, please check your plan and billing details.",
                 kind="insufficient_quota", code="insufficient_quota")


def server_error(status: int = 500) -> Reply:
    return error(status, "The server had an error while processing your request.", kind="server_error")


def unauthorized(echo_key: str | None = None) -> Reply:
    """401; with ``echo_key`` the message repeats the key, as some servers do."""
    shown = f": {echo_key}" if echo_key else ""
    return error(401, f"Incorrect API key provided{shown}.", code="invalid_api_key")


def hang(seconds: float, then: Reply | None = None) -> Reply:
    """Wait ``seconds`` (longer than the client's timeout, say) before replying."""
    return replace(then or answer(sample_answer()), delay=seconds)


class FakeOpenAI(FakeServer):
    """The server. ``latency`` seconds are added to every reply (a benchmark uses 0.3); ``calls["chat"]``
    counts the chat completion calls."""

    request_type = ChatRequest

    def __init__(self, latency: float = 0.0, default: Reply | None = None) -> None:
        super().__init__(latency, default=default or answer(sample_answer()))

    @property
    def base_url(self) -> str:
        return super().base_url + "/v1"

    def chat_requests(self) -> list[ChatRequest]:
        return [r for r in self.requests if r.path == CHAT_PATH]

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if method != "POST" or path != CHAT_PATH:
            return error(404, f"no route {path}", code="unknown_url")
        return self.next_reply("chat")

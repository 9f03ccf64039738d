"""A scriptable stand-in for an OpenAI-compatible server, on 127.0.0.1, for tests and benchmarks.

It answers ``POST /v1/chat/completions`` the way OpenAI does (bodies, status codes, headers), so
the real ``openai`` client runs against it unchanged. Each test scripts what the next calls get::

    with FakeOpenAI(latency=0.3) as server:
        server.script(rate_limited(retry_after=2), answer(document))
        client = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
        ...
        assert len(server.calls) == 2 and server.calls[0].headers["authorization"] == "Bearer k"

When the script is used up, every call gets ``default`` (a valid trace answer for the six MER2024
classes unless given), which is what a benchmark wants.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, Sequence

MER2024_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")
CHAT_PATH = "/v1/chat/completions"


@dataclass(frozen=True)
class Behaviour:
    """One scripted reply: ``body`` is sent as JSON (a dict) or as it is (a str), after ``delay``
    seconds on top of the server's latency."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Call:
    """One request the server received; header names are lower case."""

    path: str
    headers: dict[str, str]
    body: Any

    def texts(self) -> list[str]:
        """The text parts of every message, in order."""
        return [part["text"] for part in self._parts() if part.get("type") == "text"]

    def image_urls(self) -> list[str]:
        return [part["image_url"]["url"] for part in self._parts() if part.get("type") == "image_url"]

    def _parts(self) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        for message in self.body["messages"]:
            content = message["content"]
            parts += [{"type": "text", "text": content}] if isinstance(content, str) else content
        return parts


def sample_answer(classes: Sequence[str] = MER2024_CLASSES) -> dict[str, Any]:
    """An answer that satisfies :func:`mercli.prompts.answer_schema` and the trace rules."""
    first = classes[0]
    observed = {"cues": ["a cue"], "emotion": first, "confidence": 0.7, "absent": None}
    return {"visual": observed, "acoustic": observed,
            "textual": {"cues": [], "emotion": None, "confidence": None, "absent": "no speech"},
            "overall": {"emotion": first, "confidence": 0.6, "summary": "Face and voice agree."}}


def completion(content: str | None, *, finish_reason: str = "stop", refusal: str | None = None,
               prompt_tokens: int = 1000, completion_tokens: int = 200) -> Behaviour:
    """A 200 reply whose message carries ``content`` as it is (valid JSON or not)."""
    return Behaviour(body={
        "id": "chatcmpl-fake", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": finish_reason, "logprobs": None,
                     "message": {"role": "assistant", "content": content, "refusal": refusal}}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })


def answer(document: Any, *, prompt_tokens: int = 1000, completion_tokens: int = 200) -> Behaviour:
    """A 200 reply whose content is ``document`` as JSON."""
    return completion(json.dumps(document), prompt_tokens=prompt_tokens, completion_tokens=completion_tokens)


def refusal(text: str = "I can't help with that.") -> Behaviour:
    return completion(None, refusal=text)


def content_filter() -> Behaviour:
    return completion(None, finish_reason="content_filter")


def error(status: int, message: str, *, kind: str = "invalid_request_error", code: str | None = None,
          param: str | None = None, headers: Mapping[str, str] | None = None) -> Behaviour:
    """An error reply in OpenAI's shape: ``{"error": {"message", "type", "param", "code"}}``."""
    return Behaviour(status=status, headers=dict(headers or {}),
                     body={"error": {"message": message, "type": kind, "param": param, "code": code}})


def rate_limited(retry_after: float | None = None, *, retry_after_ms: float | None = None) -> Behaviour:
    headers = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
    if retry_after_ms is not None:
        headers["retry-after-ms"] = f"{retry_after_ms:g}"
    return error(429, "Rate limit reached for requests per min.", kind="requests", code="rate_limit_exceeded",
                 headers=headers)


def quota_exhausted() -> Behaviour:
    return error(429, "You exceeded your current quota, please check your plan and billing details.",
                 kind="insufficient_quota", code="insufficient_quota")


def server_error(status: int = 500) -> Behaviour:
    return error(status, "The server had an error while processing your request.", kind="server_error")


def unauthorized(echo_key: str | None = None) -> Behaviour:
    """401; with ``echo_key`` the message repeats the key, as some servers do."""
    shown = f": {echo_key}" if echo_key else ""
    return error(401, f"Incorrect API key provided{shown}.", code="invalid_api_key")


def hang(seconds: float, then: Behaviour | None = None) -> Behaviour:
    """Wait ``seconds`` (longer than the client's timeout, say) before replying."""
    reply = then or answer(sample_answer())
    return Behaviour(reply.status, reply.body, reply.headers, delay=seconds)


class FakeOpenAI:
    """The server. ``latency`` seconds are added to every reply (a benchmark uses 0.3)."""

    def __init__(self, latency: float = 0.0, default: Behaviour | None = None) -> None:
        self.latency = latency
        self.default = default or answer(sample_answer())
        self._script: deque[Behaviour] = deque()
        self._calls: list[Call] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.02},
                                        name="fake-openai", daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def script(self, *behaviours: Behaviour) -> None:
        """Queue replies for the next calls, in order."""
        with self._lock:
            self._script.extend(behaviours)

    def start(self) -> "FakeOpenAI":
        self._thread.start()
        return self

    def close(self) -> None:
        self._stopping.set()  # wakes handlers that are sleeping through a scripted delay
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def __enter__(self) -> "FakeOpenAI":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _next(self, call: Call) -> Behaviour:
        with self._lock:
            self._calls.append(call)
            return self._script.popleft() if self._script else self.default

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self._stopping.wait(seconds)


def _handler_for(server: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real servers do

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("content-length") or 0))
            try:
                body = json.loads(raw or b"null")
            except json.JSONDecodeError:
                body = raw.decode("utf-8", "replace")
            call = Call(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
            if self.path != CHAT_PATH:
                self._send(error(404, f"no route {self.path}", code="unknown_url"))
                return
            behaviour = server._next(call)
            server._wait(server.latency + behaviour.delay)
            self._send(behaviour)

        def _send(self, behaviour: Behaviour) -> None:
            data = (behaviour.body if isinstance(behaviour.body, str) else json.dumps(behaviour.body)).encode()
            try:
                self.send_response(behaviour.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in behaviour.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (its timeout), which is what some tests script

        def log_message(self, format: str, *args: Any) -> None:
            pass  # keep test output clean

    return Handler

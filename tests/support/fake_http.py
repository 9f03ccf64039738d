"""What the fake API servers (tests/fake_gemini.py, tests/fake_openai.py) share: an HTTP server on
127.0.0.1 and a free port, run in a thread, that records every request and answers with replies a
test scripts, so that the real client libraries run against it without the internet.

A fake subclasses :class:`FakeServer` and implements :meth:`FakeServer.handle`; where it serves an
answer it takes the next scripted reply with :meth:`FakeServer.next_reply`, which also applies the
server's latency. When the script is used up every call gets ``default``::

    with FakeSomething(latency=0.3) as server:
        server.script(Reply(status=429, body={"error": {...}}), Reply(body={...}))
        ...
        server.calls["generate"], server.requests[0].json
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections import Counter, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar, Iterator, Mapping, TypeVar

_Fake = TypeVar("_Fake", bound="FakeServer")  # typing.Self needs Python 3.11; the project supports 3.10


@dataclass(frozen=True)
class Reply:
    """One scripted HTTP answer: ``body`` is sent as JSON, or as it is when a str, ``delay`` seconds
    after the server's latency (longer than a client timeout, it makes the client give up)."""

    status: int = 200
    body: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0


@dataclass(frozen=True)
class Recorded:
    """One request the server received; ``headers`` keys are lower case."""

    method: str
    path: str
    headers: Mapping[str, str]
    body: bytes

    @property
    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


class FakeServer(ABC):
    """A scripted HTTP server as a context manager. ``calls`` counts the answers each kind of call
    got (the kinds are the fake's own: "generate", "chat"...); ``requests`` holds every request in
    the order it came, as ``request_type``."""

    request_type: ClassVar[type[Recorded]] = Recorded

    def __init__(self, latency: float, default: Reply) -> None:
        self.latency = latency
        self.default = default
        self.calls: Counter[str] = Counter()
        self.lock = threading.Lock()  # guards calls, the script, the record and a fake's own state
        self._script: deque[Reply] = deque()
        self._requests: list[Recorded] = []
        self._closing = threading.Event()
        self._http: _QuietServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --

    def start(self: _Fake) -> _Fake:
        self._http = _QuietServer(("127.0.0.1", 0), _Handler)
        self._http.fake = self
        # A short poll interval: shutdown() waits up to one interval, and tests start many servers.
        self._thread = threading.Thread(target=self._http.serve_forever, kwargs={"poll_interval": 0.02},
                                        name=f"fake-http-{type(self).__name__}", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()  # wakes handlers that are sleeping through a latency or a scripted delay
        if self._http is not None and self._thread is not None:
            self._http.shutdown()
            self._http.server_close()
            self._thread.join()

    def __enter__(self: _Fake) -> _Fake:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        if self._http is None:
            raise RuntimeError(f"{type(self).__name__} is not running: use it as a context manager")
        host, port = self._http.server_address[:2]
        return f"http://{host}:{port}"

    # -- scripting and inspection --

    def script(self, *replies: Reply) -> None:
        """Queue replies for the next calls that take one, in order."""
        with self.lock:
            self._script.extend(replies)

    @property
    def requests(self) -> list[Recorded]:
        with self.lock:
            return list(self._requests)

    # -- request handling (called on the server's threads) --

    @abstractmethod
    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """The fake's answer to one request (``headers`` keys are lower case)."""

    def next_reply(self, kind: str, wait: bool = True) -> Reply:
        """Count a call of ``kind`` and take its reply from the script (``default`` once the script
        is used up), after the server's latency unless ``wait`` is off (the caller holds the lock)."""
        with self.lock if wait else _held():
            self.calls[kind] += 1
            reply = self._script.popleft() if self._script else self.default
        if wait:
            self.pause(self.latency)
        return reply

    def pause(self, seconds: float) -> None:
        """Sleep, but wake when the server closes so that no handler outlives it."""
        if seconds > 0:
            self._closing.wait(seconds)

    def respond(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        """Record the request, then answer it; a bug in the fake shows up as a 500 naming it, not a
        hang-up."""
        with self.lock:
            self._requests.append(self.request_type(method, path, dict(headers), body))
        try:
            return self.handle(method, path, headers, body)
        except Exception as error:
            message = f"{type(self).__name__} crashed: {type(error).__name__}: {error}"
            return Reply(status=500, body={"error": {"code": 500, "message": message, "status": "INTERNAL"}})


@contextmanager
def _held() -> Iterator[None]:
    """The lock a caller already holds."""
    yield


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    fake: FakeServer

    def handle_error(self, request, client_address) -> None:
        """A client that gave up (timeout tests) breaks the pipe: that is expected, not news."""


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as real servers do
    server: _QuietServer

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {key.lower(): value for key, value in self.headers.items()}
        fake = self.server.fake
        reply = fake.respond(self.command, self.path, headers, body)
        fake.pause(reply.delay)
        document = reply.body if reply.body is not None else {}
        data = (document if isinstance(document, str) else json.dumps(document)).encode()
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        for key, value in reply.headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

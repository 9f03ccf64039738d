"""A local stand-in for the Gemini REST API, so that tests and benchmarks run the real
``google-genai`` client without the internet.

It serves, on 127.0.0.1 and a free port, what the SDK calls for one clip: ``generateContent``,
the Files API resumable upload (start, then upload/finalize), file state polls and deletes, under
any API version (``v1``, ``v1beta``), and the Batch API: ``batchGenerateContent`` (requests inline
or from an uploaded JSONL file), batch get, list, cancel and delete, and the download of a job's
result file. Point the SDK at it with ``GOOGLE_GEMINI_BASE_URL``::

    with FakeGemini(latency=0.3) as server:
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", server.base_url)
        server.script(rate_limited(retry_delay="7s"), answer(sample_answer()))
        ...
        server.calls["generate"], server.generate_requests()[0]

``generateContent`` takes its replies from the scripted queue, first in first out, and gives
``default`` (a valid answer) when the queue is empty. Every request is recorded with its headers
and body. An uploaded file reports ``PROCESSING`` on upload and on the next ``processing_polls``
polls, then ``file_outcome`` (``ACTIVE`` or ``FAILED``); with ``processing_polls=0`` the upload
itself reports the outcome.

A batch job is ``BATCH_STATE_PENDING`` for the first half of ``job_latency`` seconds after its
creation, ``BATCH_STATE_RUNNING`` for the second, then ``job_outcome`` (``SUCCEEDED``, ``FAILED``
or ``EXPIRED``; :meth:`FakeGemini.end_job` sets one job's). A cancelled job is ``CANCELLED`` at
once. When a job succeeds, each of its requests takes a reply from the same script as
``generateContent`` (a 200 becomes its response, anything else its error), so a test scripts
which requests fail; a request that names an uploaded file that is gone fails with 400.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import time
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence
from urllib.parse import parse_qs, urlsplit

from support.answers import with_scores
from support.fake_http import FakeServer, Recorded, Reply

MER2024_CLASSES = ("neutral", "angry", "happy", "sad", "worried", "surprise")

_VERSION = r"(?P<version>v\d+\w*)"
_GENERATE = re.compile(rf"^/{_VERSION}/models/(?P<model>[^/:]+):generateContent$")
_UPLOAD = re.compile(rf"^/upload/{_VERSION}/files$")
_FILE = re.compile(rf"^/{_VERSION}/files/(?P<id>[^/:]+)$")
_DOWNLOAD = re.compile(rf"^/(?:download/)?{_VERSION}/files/(?P<id>[^/:]+):download$")
_BATCH_CREATE = re.compile(rf"^/{_VERSION}/models/(?P<model>[^/:]+):batchGenerateContent$")
_BATCHES = re.compile(rf"^/{_VERSION}/batches$")
_BATCH = re.compile(rf"^/{_VERSION}/batches/(?P<id>[^/:]+)(?P<cancel>:cancel)?$")
JOB_OUTCOMES = ("SUCCEEDED", "FAILED", "EXPIRED")


class GeminiRequest(Recorded):
    """A recorded request that can list what a generateContent call sent."""

    def parts(self) -> list["SentPart"]:
        """The content parts of a generateContent request, in order."""
        found = []
        for content in (self.json or {}).get("contents", []):
            for part in content.get("parts", []):
                if "text" in part:
                    found.append(SentPart("text", text=part["text"]))
                elif (inline := _field(part, "inlineData")) is not None:
                    found.append(SentPart("inline", mime_type=_field(inline, "mimeType"),
                                          data=_decode_bytes(_field(inline, "data"))))
                elif (file := _field(part, "fileData")) is not None:
                    found.append(SentPart("file", mime_type=_field(file, "mimeType"), uri=_field(file, "fileUri")))
        return found


@dataclass(frozen=True)
class SentPart:
    """One part of a request: ``kind`` is "text", "inline" (the bytes in ``data``) or "file" (a
    Files API ``uri``)."""

    kind: str
    text: str | None = None
    mime_type: str | None = None
    data: bytes | None = None
    uri: str | None = None


def _decode_bytes(text: str) -> bytes:
    """A JSON ``bytes`` field: base64, standard or URL-safe (the SDK sends URL-safe), padded or not."""
    return base64.b64decode(text.replace("-", "+").replace("_", "/") + "=" * (-len(text) % 4), validate=True)


def _field(message: Mapping[str, Any], name: str) -> Any:
    """A field of a JSON request under its camelCase or snake_case name (the REST API takes both,
    and the SDK sends both)."""
    snake = re.sub(r"[A-Z]", lambda upper: "_" + upper.group().lower(), name)
    return message.get(name, message.get(snake))


# --- replies ---------------------------------------------------------------------------------


def sample_answer(classes: Sequence[str] = MER2024_CLASSES, emotion: str | None = None) -> dict[str, Any]:
    """An answer that satisfies ``mercli.trace_model.answer_schema(classes)`` (class scores included)."""
    emotion = emotion or classes[0]
    modality = {"cues": ["steady gaze", "even tone"], "emotion": emotion, "confidence": 0.7, "absent": None}
    return with_scores({
        "visual": dict(modality),
        "acoustic": dict(modality),
        "textual": {"cues": [], "emotion": None, "confidence": None, "absent": "no speech"},
        "overall": {"emotion": emotion, "confidence": 0.7, "summary": "Face and voice agree."},
    }, classes)


def answer_text(text: str, *, finish_reason: str = "STOP", prompt_tokens: int = 1200,
                output_tokens: int = 150, thoughts_tokens: int = 0, thought: str | None = None) -> Reply:
    """A 200 whose candidate holds ``text`` (preceded by a thought part when ``thought`` is given)."""
    parts = ([{"text": thought, "thought": True}] if thought else []) + [{"text": text}]
    usage = {"promptTokenCount": prompt_tokens, "candidatesTokenCount": output_tokens,
             "totalTokenCount": prompt_tokens + output_tokens + thoughts_tokens}
    if thoughts_tokens:
        usage["thoughtsTokenCount"] = thoughts_tokens
    candidate = {"content": {"parts": parts, "role": "model"}, "finishReason": finish_reason, "index": 0}
    return Reply(body={"candidates": [candidate], "usageMetadata": usage, "responseId": "fake"})


def answer(document: Any, **usage: Any) -> Reply:
    """A 200 whose text is ``document`` as JSON (any JSON value: the schema is not checked)."""
    return answer_text(json.dumps(document), **usage)


def blocked(finish_reason: str = "SAFETY") -> Reply:
    """The answer was withheld: a candidate with no content and a blocking finish reason."""
    candidate = {"finishReason": finish_reason, "index": 0,
                 "safetyRatings": [{"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH", "blocked": True}]}
    return Reply(body={"candidates": [candidate], "usageMetadata": {"promptTokenCount": 1200, "totalTokenCount": 1200}})


def prompt_blocked(block_reason: str = "PROHIBITED_CONTENT") -> Reply:
    """The request itself was blocked: no candidates, only prompt feedback."""
    return Reply(body={"promptFeedback": {"blockReason": block_reason},
                       "usageMetadata": {"promptTokenCount": 1200, "totalTokenCount": 1200}})


def api_error(code: int, status: str, message: str, details: Sequence[Mapping[str, Any]] = (),
              headers: Mapping[str, str] | None = None) -> Reply:
    """A Google API error body: ``{"error": {"code", "message", "status", "details"}}``."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return Reply(status=code, body={"error": error}, headers=dict(headers or {}))


def rate_limited(retry_delay: str | None = "7s", retry_after: str | None = None,
                 quota_id: str = "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
                 quota_value: str = "10") -> Reply:
    """A 429 RESOURCE_EXHAUSTED the way Gemini sends it: a QuotaFailure naming the quota, and
    a RetryInfo delay and/or a Retry-After header."""
    details: list[dict[str, Any]] = [{
        "@type": "type.googleapis.com/google.rpc.QuotaFailure",
        "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
                        "quotaId": quota_id, "quotaValue": quota_value}],
    }]
    if retry_delay is not None:
        details.append({"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay})
    return api_error(429, "RESOURCE_EXHAUSTED",
                     "You exceeded your current quota, please check your plan and billing details.",
                     details, headers={"Retry-After": retry_after} if retry_after else None)


def key_invalid() -> Reply:
    """What Gemini answers to a wrong key: 400 INVALID_ARGUMENT with reason API_KEY_INVALID."""
    return api_error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.", [{
        "@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
        "domain": "googleapis.com", "metadata": {"service": "generativelanguage.googleapis.com"},
    }])


def stalled(seconds: float, classes: Sequence[str] = MER2024_CLASSES) -> Reply:
    """A valid answer sent only after ``seconds``: longer than a client timeout, it makes the
    client give up."""
    return replace(answer(sample_answer(classes)), delay=seconds)


# --- the server ------------------------------------------------------------------------------


class FakeGemini(FakeServer):
    """The fake API as a context manager; see the module notes."""

    request_type = GeminiRequest

    def __init__(self, latency: float = 0.0, processing_polls: int = 0, file_outcome: str = "ACTIVE",
                 job_latency: float = 0.0, job_outcome: str = "SUCCEEDED",
                 classes: Sequence[str] = MER2024_CLASSES) -> None:
        if file_outcome not in ("ACTIVE", "FAILED"):
            raise ValueError(f"file_outcome must be ACTIVE or FAILED, not {file_outcome!r}")
        if job_outcome not in JOB_OUTCOMES:
            raise ValueError(f"job_outcome must be one of {JOB_OUTCOMES}, not {job_outcome!r}")
        super().__init__(latency, default=answer(sample_answer(classes)))
        self.processing_polls = processing_polls
        self.file_outcome = file_outcome
        self.job_latency = job_latency
        self.job_outcome = job_outcome
        self.files: dict[str, dict[str, Any]] = {}  # "files/<id>" -> the File resource, plus its data
        self.jobs: dict[str, dict[str, Any]] = {}  # "batches/<id>" -> the job, its requests and results
        self._ids = itertools.count(1)

    def end_job(self, name: str, outcome: str) -> None:
        """End job ``name`` now with ``outcome`` (SUCCEEDED, FAILED, EXPIRED)."""
        with self.lock:
            self.jobs[name]["outcome"] = outcome
            self.jobs[name]["created"] -= self.job_latency + 1

    def live_files(self) -> list[str]:
        """Names of the uploaded files not deleted."""
        with self.lock:
            return [name for name, record in self.files.items() if not record.get("deleted")]

    def generate_requests(self) -> list[GeminiRequest]:
        return [r for r in self.requests if _GENERATE.match(urlsplit(r.path).path)]

    # -- request handling (called on the server's threads) --

    def handle(self, method: str, path: str, headers: Mapping[str, str], body: bytes) -> Reply:
        url = urlsplit(path)
        if method == "POST" and (match := _GENERATE.match(url.path)):
            return self._generate(match["model"], GeminiRequest(method, path, headers, body))
        if method == "POST" and (match := _UPLOAD.match(url.path)):
            upload_id = parse_qs(url.query).get("upload_id", [None])[0]
            if upload_id is None:
                return self._start_upload(match["version"], headers, body)
            return self._receive_upload(upload_id, headers, body)
        if method in ("GET", "DELETE") and (match := _FILE.match(url.path)):
            name = f"files/{match['id']}"
            return self._file_state(name) if method == "GET" else self._delete(name)
        if method == "GET" and (match := _DOWNLOAD.match(url.path)):
            return self._download(f"files/{match['id']}")
        if method == "POST" and (match := _BATCH_CREATE.match(url.path)):
            return self._create_job(match["model"], json.loads(body or b"{}"))
        if method == "GET" and _BATCHES.match(url.path):
            return self._list_jobs()
        if (match := _BATCH.match(url.path)) and (method, bool(match["cancel"])) in (
                ("GET", False), ("DELETE", False), ("POST", True)):
            return self._job_call(method, f"batches/{match['id']}", bool(match["cancel"]))
        return api_error(404, "NOT_FOUND", f"fake Gemini has no {method} {url.path}")

    # -- the Batch API --

    def _create_job(self, model: str, body: Mapping[str, Any]) -> Reply:
        batch = body.get("batch", {})
        source = _field(batch, "inputConfig") or {}
        with self.lock:
            self.calls["batch_create"] += 1
            if (file_name := _field(source, "fileName")) is not None:
                record = self.files.get(file_name)
                if record is None or record.get("deleted"):
                    return _no_file(file_name)
                lines = [json.loads(line) for line in record["data"].decode().splitlines() if line.strip()]
                requests = [(str(line["key"]), line["request"]) for line in lines]
            else:
                inline = (_field(source, "requests") or {}).get("requests", [])
                requests = [(str((r.get("metadata") or {}).get("key")), r["request"]) for r in inline]
            name = f"batches/fake{next(self._ids)}"
            self.jobs[name] = {"name": name, "displayName": _field(batch, "displayName") or "", "model": f"models/{model}",
                               "created": time.monotonic(), "outcome": self.job_outcome, "requests": requests,
                               "inline": file_name is None, "output": None}
            return Reply(body=self._job_resource(self.jobs[name]))

    def _list_jobs(self) -> Reply:
        with self.lock:
            self.calls["batch_list"] += 1
            return Reply(body={"operations": [self._job_resource(job) for job in self.jobs.values()
                                              if not job.get("deleted")]})

    def _job_call(self, method: str, name: str, cancel: bool) -> Reply:
        kind = "batch_cancel" if cancel else "batch_get" if method == "GET" else "batch_delete"
        with self.lock:
            self.calls[kind] += 1
            job = self.jobs.get(name)
            if job is None or job.get("deleted"):
                return api_error(404, "NOT_FOUND", f"Batch {name} does not exist")
            if cancel:
                job["outcome"], job["cancelled"] = "CANCELLED", True
            elif method == "DELETE":
                job["deleted"] = True
                return Reply(body={})
            return Reply(body=self._job_resource(job) if not cancel else {})

    def _state(self, job: dict[str, Any]) -> str:
        """The job's state now; the caller holds the lock."""
        elapsed = time.monotonic() - job["created"]
        if job.get("cancelled"):
            return "CANCELLED"
        if elapsed < self.job_latency / 2:
            return "PENDING"
        if elapsed < self.job_latency:
            return "RUNNING"
        return job["outcome"]

    def _job_resource(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job as the API sends it: an operation whose metadata is the batch. The caller holds
        the lock."""
        state = self._state(job)
        metadata: dict[str, Any] = {
            "@type": "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch",
            "name": job["name"], "displayName": job["displayName"], "model": job["model"],
            "state": f"BATCH_STATE_{state}", "createTime": "2026-01-01T00:00:00Z"}
        if state == "SUCCEEDED":
            metadata["output"] = job["output"] = job["output"] or self._run_job(job)
        return {"name": job["name"], "metadata": metadata, "done": state not in ("PENDING", "RUNNING")}

    def _run_job(self, job: dict[str, Any]) -> dict[str, Any]:
        """Answer every request of a job that has just succeeded; the caller holds the lock."""
        results = [(key, self._batch_result(request)) for key, request in job["requests"]]
        if job["inline"]:
            return {"inlinedResponses": {"inlinedResponses": [
                {**result, "metadata": {"key": key}} for key, result in results]}}
        name = f"files/fakeresult{next(self._ids)}"
        data = "".join(json.dumps({"key": key, **result}) + "\n" for key, result in results).encode()
        self.files[name] = {"name": name, "displayName": f"results of {job['name']}", "mimeType": "application/jsonl",
                            "sizeBytes": str(len(data)), "state": "ACTIVE", "source": "GENERATED",
                            "uri": f"https://generativelanguage.googleapis.com/v1beta/{name}",
                            "downloadUri": f"https://generativelanguage.googleapis.com/download/v1beta/{name}:download?alt=media",
                            "upload_id": None, "data": data, "polls": 0}
        return {"responsesFile": name}

    def _batch_result(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """``{"response": ...}`` or ``{"error": ...}`` for one request; the caller holds the lock."""
        for part in GeminiRequest("POST", "", {}, json.dumps(request).encode()).parts():
            name = "files/" + str(part.uri).rsplit("/files/", 1)[-1]
            if part.kind == "file" and (name not in self.files or self.files[name].get("deleted")):
                return {"error": {"code": 3, "message": f"File {name} does not exist", "status": "INVALID_ARGUMENT"}}
        reply = self.next_reply("batch_request", wait=False)
        if reply.status == 200:
            return {"response": reply.body}
        return {"error": (reply.body or {}).get("error", {"code": reply.status, "message": "failed"})}

    def _download(self, name: str) -> Reply:
        with self.lock:
            record = self._live_file("file_download", name)
            if record is None:
                return _no_file(name)
            return Reply(body=record["data"].decode())

    def _generate(self, model: str, request: GeminiRequest) -> Reply:
        with self.lock:
            files = dict(self.files)
        reply = self.next_reply("generate")
        for part in request.parts():
            if part.kind != "file":
                continue
            name = "files/" + str(part.uri).rsplit("/files/", 1)[-1]
            if name not in files or files[name]["state"] != "ACTIVE":
                return api_error(400, "FAILED_PRECONDITION",
                                 f"The File {name} is not in an ACTIVE state and usage is not allowed.")
        if isinstance(reply.body, dict) and "candidates" in reply.body:
            reply = replace(reply, body={**reply.body, "modelVersion": model})
        return reply

    def _start_upload(self, version: str, headers: Mapping[str, str], body: bytes) -> Reply:
        if headers.get("x-goog-upload-protocol") != "resumable" or headers.get("x-goog-upload-command") != "start":
            return api_error(400, "INVALID_ARGUMENT", "expected a resumable upload start")
        metadata = (json.loads(body) if body else {}).get("file", {})
        with self.lock:
            self.calls["upload_start"] += 1
            upload_id = f"up{next(self._ids)}"
            name = f"files/fake{upload_id}"
            self.files[name] = {
                "name": name, "displayName": _field(metadata, "displayName") or "",
                "mimeType": headers.get("x-goog-upload-header-content-type") or _field(metadata, "mimeType") or "",
                "sizeBytes": headers.get("x-goog-upload-header-content-length", "0"),
                "uri": f"https://generativelanguage.googleapis.com/{version}/{name}",
                "state": "PROCESSING", "source": "UPLOADED", "upload_id": upload_id, "data": b"", "polls": 0,
            }
        url = f"{self.base_url}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
        return Reply(headers={"X-Goog-Upload-URL": url, "X-Goog-Upload-Status": "active"}, body={})

    def _receive_upload(self, upload_id: str, headers: Mapping[str, str], body: bytes) -> Reply:
        with self.lock:
            self.calls["upload"] += 1
            record = next((f for f in self.files.values() if f["upload_id"] == upload_id), None)
            if record is None:
                return api_error(404, "NOT_FOUND", f"no upload {upload_id}")
            record["data"] += body
            if "finalize" not in headers.get("x-goog-upload-command", ""):
                return Reply(headers={"X-Goog-Upload-Status": "active"}, body={})
            if self.processing_polls == 0:
                self._settle(record)
            return Reply(headers={"X-Goog-Upload-Status": "final"}, body={"file": _resource(record)})

    def _file_state(self, name: str) -> Reply:
        with self.lock:
            record = self._live_file("file_get", name)
            if record is None:
                return _no_file(name)
            record["polls"] += 1
            if record["polls"] > self.processing_polls:
                self._settle(record)
            return Reply(body=_resource(record))

    def _delete(self, name: str) -> Reply:
        with self.lock:
            record = self._live_file("file_delete", name)
            if record is None:
                return _no_file(name)
            record["deleted"] = True
        return Reply(body={})

    def _live_file(self, kind: str, name: str) -> dict[str, Any] | None:
        """Count a file call of ``kind``; the file's record, or None where it is unknown or deleted.
        The caller holds the lock."""
        self.calls[kind] += 1
        record = self.files.get(name)
        return None if record is None or record.get("deleted") else record

    def _settle(self, record: dict[str, Any]) -> None:
        record["state"] = self.file_outcome
        if self.file_outcome == "FAILED":
            record["error"] = {"code": 3, "message": "The video could not be processed."}


def _no_file(name: str) -> Reply:
    return api_error(404, "NOT_FOUND", f"File {name} does not exist")


def _resource(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("upload_id", "data", "polls", "deleted")}

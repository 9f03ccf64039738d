"""The ``gemini`` reasoner: Google's Gemini watches and hears the clip itself and writes the
per-modality trace as JSON constrained by the request's answer schema.

It runs on the maintained ``google-genai`` SDK (never the deprecated ``google-generativeai``),
imported only when the first call is made so that ``mer --help`` stays fast. The key comes from
``GOOGLE_API_KEY`` or ``GEMINI_API_KEY`` (the SDK's order of precedence) and is only ever sent in
the ``x-goog-api-key`` header; the endpoint is the SDK's own ``GOOGLE_GEMINI_BASE_URL`` when set, so
a proxy or a local test server can stand in, and ``GOOGLE_GENAI_API_VERSION`` picks the API version.

Each :meth:`GeminiReasoner.reason` call is one attempt: the SDK's own retries are switched off,
because the core owns retries, backoff, rate limits, caching and cost. Failures are mapped onto
the contract's error kinds with one-line messages:

* :class:`RetryableError`: a per-minute rate limit (429, with the server's ``Retry-After`` header
  or ``RetryInfo.retryDelay`` as ``retry_after``), 408/409/499 and 5xx, a 404 on anything but the
  model (an uploaded file gone), timeouts, refused or reset connections, a response that is not
  JSON (a proxy's error page), an uploaded file still processing after ``timeout`` seconds.
* :class:`StopRun`: a quota that cannot recover within the run (a per-day quota, or one whose
  limit is 0 because the project has no access to the model), a rejected key (400
  ``API_KEY_INVALID``, 401, 403), a failed precondition (region or billing), an unknown model (404).
* :class:`AnswerRejected`: a safety block (of the prompt or of the answer), an empty, cut-off,
  malformed or non-object answer, a file Gemini could not process, a clip that could not be
  read or converted, any other 4xx (a request Gemini refuses for this clip).

Clips travel as their own bytes: inline up to ``inline_limit_mb``, else through the Files API
(uploaded, polled until ACTIVE, deleted afterwards; Gemini also deletes files after 48 hours).
Containers Gemini does not accept (.mkv, .m4a, .opus, ...) are first converted with the ffmpeg
binary into a temporary H.264/AAC .mp4 (video) or a 16 kHz mono .wav (audio; Gemini downsamples
audio to 16 kHz anyway).

``media_resolution`` (sent in the generation config) and ``fps`` (sent as the video part's
metadata) trade detail for tokens; :meth:`GeminiReasoner.estimate_usage` follows them. The same
requests also go as batch jobs (:class:`BatchReasoner`, through :mod:`.gemini_batch`) for
``mer reason --batch``.
"""

from __future__ import annotations

import functools
import importlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from mercli.plugin_api import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, AnswerRejected, BatchJob, BatchLimits, BatchPoll,
                               BatchReasoner, Check, DataError, Option, Range, Reasoner, ReasonerError, ReasoningAnswer,
                               ReasoningRequest, RetryableError, StopRun, Usage, hookimpl, one_line, probe)
from mer_plugins.reasoners import gemini_batch

if TYPE_CHECKING:
    from google import genai
    from google.genai import errors, types

#: Where the key may be, in the SDK's order of precedence. Only presence is ever reported.
KEY_VARIABLES = ("GOOGLE_API_KEY", "GEMINI_API_KEY")

#: Containers Gemini accepts as they are, by file suffix (Gemini API docs, video and audio
#: understanding). Anything else is converted first.
VIDEO_MIME_TYPES = {
    ".mp4": "video/mp4", ".mpeg": "video/mpeg", ".mpg": "video/mpg", ".mov": "video/mov",
    ".avi": "video/avi", ".flv": "video/x-flv", ".webm": "video/webm", ".wmv": "video/wmv",
    ".3gp": "video/3gpp",
}
AUDIO_MIME_TYPES = {
    ".wav": "audio/wav", ".mp3": "audio/mp3", ".aif": "audio/aiff", ".aiff": "audio/aiff",
    ".aac": "audio/aac", ".ogg": "audio/ogg", ".flac": "audio/flac",
}

#: Tokens per video frame at each media resolution, for Gemini 2.5 models: the Gemini API docs
#: (video understanding: "258 tokens per frame" at the default resolution, "66 tokens per frame" at
#: low, so "about 300 tokens per second" of video with sound at 1 fps, "about 100" at low; media
#: resolution: medium and high both cap a frame at 256 tokens, high only reframes it; the SDK's
#: ``types.MediaResolution`` says the same: low 64, medium 256, high 256). Unset is the model's
#: default, medium. The audio track adds 32 tokens per second whatever the resolution, and frames
#: are sampled at 1 fps unless ``fps`` says otherwise. Text is about 4 characters per token.
FRAME_TOKENS = {"low": 66, "medium": 258, "high": 258}
DEFAULT_RESOLUTION = "medium"
DEFAULT_FPS = 1.0
VIDEO_TOKENS_PER_SECOND = FRAME_TOKENS[DEFAULT_RESOLUTION] * DEFAULT_FPS  # at the defaults
AUDIO_TOKENS_PER_SECOND = 32
CHARS_PER_TOKEN = 4
#: The frame rates Gemini accepts in video metadata (Gemini API docs, video understanding: (0, 24]).
FPS_RANGE = Range(0, 24, low_open=True)
#: A trace answer is a few hundred tokens; thinking tokens come on top and vary by model.
ANSWER_TOKENS_ESTIMATE = 600

#: Finish reasons that mean a content filter withheld the answer (any prompt block reason does too).
BLOCKED_REASONS = frozenset({
    "SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
    "IMAGE_PROHIBITED_CONTENT", "MODEL_ARMOR", "ESCALATION",
})

_MESSAGE_CHARS = 200
_DAILY = re.compile(r"per ?day|daily", re.IGNORECASE)


class GeminiReasoner(Reasoner, BatchReasoner):
    name = "gemini"
    version = "1"
    description = "Google Gemini (google-genai SDK) watches and hears each clip and writes its trace."
    needs_network = True
    options = (
        Option("model", str, "gemini-2.5-flash", "Gemini model name."),
        Option("timeout", float, 120.0, "Seconds to wait for each HTTP request, and for an uploaded file to be processed.",
               POSITIVE),
        Option("inline_limit_mb", float, 15.0, "Clips up to this many MiB travel inside the request; larger ones go "
               "through the Files API.", NON_NEGATIVE),
        Option("temperature", float, 0.0, "Sampling temperature: 0 keeps traces as repeatable as the model allows "
               "(Google advises 1.0 for Gemini 3 models).", Range(0, 2)),
        Option("poll_interval", float, 2.0, "Seconds between checks of an uploaded file's processing state.", POSITIVE),
        Option("max_output_tokens", int, None, "Cap on answer plus thinking tokens; unset: the model's own limit.",
               AT_LEAST_ONE),
        Option("media_resolution", str, None, "Tokens per video frame: low (66), medium (258) or high (258, "
               "reframed); unset: the model's default (medium).", choices=tuple(FRAME_TOKENS)),
        Option("fps", float, None, "Video frames Gemini samples per second (sent as video metadata); unset: 1.",
               FPS_RANGE),
        Option("batch_inline_mb", float, gemini_batch.INLINE_JOB_BYTES / 1e6, "Batch jobs whose requests total up to "
               "this many MB travel inside the create call; larger ones as an uploaded JSONL file.",
               Range(0, gemini_batch.INLINE_JOB_BYTES / 1e6)),
        Option("batch_max_requests", int, 5000, "Most clips in one batch job (mer reason --batch): smaller jobs "
               "finish sooner, so their uploaded files stay well inside their 48 hours.", AT_LEAST_ONE),
    )

    def batch_limits(self) -> BatchLimits:
        return BatchLimits(self.settings["batch_max_requests"], gemini_batch.MAX_INPUT_FILE_BYTES,
                           gemini_batch.FILE_LIFETIME_HOURS * 3600.0)

    def tokens_per_second(self, has_video: bool, has_audio: bool) -> float:
        """Input tokens per second of clip at this reasoner's media resolution and frame rate."""
        resolution = self.settings["media_resolution"] or DEFAULT_RESOLUTION
        video = FRAME_TOKENS[resolution] * (self.settings["fps"] or DEFAULT_FPS) if has_video else 0.0
        return video + (AUDIO_TOKENS_PER_SECOND if has_audio else 0)

    @property
    def timeout(self) -> float:
        return float(self.settings["timeout"])

    def checks(self) -> list[Check]:
        present = [variable for variable in KEY_VARIABLES if os.environ.get(variable)]
        detail = f"{present[0]} is set" if present else f"none of {', '.join(KEY_VARIABLES)} is set"
        return [Check("API key", bool(present), detail, required=False)]

    def estimate_usage(self, request: ReasoningRequest) -> Usage:
        """Input tokens from the clip's duration (headers only, nothing decoded) and the prompt's
        length; output tokens a fixed estimate of one answer. Raises DataError for a clip that
        cannot be opened."""
        info = probe(request.path)
        per_second = self.tokens_per_second(info.has_video, info.has_audio)
        prompt = -(-len(request.prompt) // CHARS_PER_TOKEN)
        return Usage(input_tokens=round(info.duration * per_second) + prompt, output_tokens=ANSWER_TOKENS_ESTIMATE)

    def reason(self, request: ReasoningRequest) -> ReasoningAnswer:
        """One generateContent call on the clip and the prompt; see the module notes for what each
        failure raises."""
        with self._calling(), _sendable(request.path) as (path, mime_type), \
                self._media_part(path, mime_type, request.clip_id) as part:
            response = self.client.models.generate_content(
                model=self.model, contents=[part, request.prompt], config=self._generation_config(request))
        return _answer(response)

    @contextmanager
    def _calling(self) -> Iterator[None]:
        """Any call of the API: its failures as the contract's error kinds."""
        from google.genai import errors

        timeouts, transport_failures = _network_errors()
        try:
            yield
        except errors.APIError as error:
            raise _api_failure(error, self.model) from None
        except timeouts:
            raise RetryableError(f"Gemini gave no answer within {self.timeout:g} s") from None
        except transport_failures as error:
            raise RetryableError(f"cannot reach Gemini: {type(error).__name__}: {_one_line(str(error))}") from None
        except (errors.UnknownApiResponseError, json.JSONDecodeError):  # the SDK parsing a 200 body
            raise RetryableError("Gemini's response was not JSON (a proxy error page?)") from None

    # -- batch mode (mercli.batch_reason drives it) --

    def request_bytes(self, request: ReasoningRequest) -> int:
        """The clip as base64 when it travels inline, plus the prompt and schema."""
        size = request.path.stat().st_size if request.path.is_file() else 0
        media = 4 * -(-size // 3) if size <= self._inline_bytes else 200
        return media + len(request.prompt) + len(json.dumps(request.answer_schema)) + 512

    def prepare_batch_request(self, request: ReasoningRequest, uploaded: Callable[[str], None]) -> "types.InlinedRequest":
        """The request as a job holds it; a clip too large to travel inline is uploaded first (and
        kept until the job is collected)."""
        from google.genai import types

        with self._calling(), _sendable(request.path) as (path, mime_type):
            data = self._clip_bytes(path)
            if data is not None:
                part = self._clip_part(mime_type, data=data)
            else:
                file = self._upload(path, mime_type, request.clip_id)
                uploaded(str(file.name))
                part = self._clip_part(mime_type, uri=self._wait_until_active(file).uri)
        contents = [types.Content(role="user", parts=[part, types.Part(text=request.prompt)])]
        return types.InlinedRequest(contents=contents, config=self._generation_config(request),
                                    metadata={gemini_batch.KEY: request.clip_id})

    def submit_batch(self, prepared: Sequence[Any], display_name: str, uploaded: Callable[[str], None]) -> BatchJob:
        with self._calling():
            return gemini_batch.submit(self.client, self.model, prepared, display_name, uploaded,
                                       inline_bytes=float(self.settings["batch_inline_mb"]) * 1e6)

    def find_batch(self, display_name: str) -> BatchJob | None:
        with self._calling():
            return gemini_batch.find(self.client, display_name)

    def poll_batch(self, job: BatchJob) -> BatchPoll:
        with self._calling():
            state, message, raw = gemini_batch.poll(self.client, job)
        return BatchPoll(state, message, {key: self._result(found) for key, found in raw.items()})

    def _result(self, found: "types.GenerateContentResponse | errors.APIError") -> ReasoningAnswer | ReasonerError:
        """One request's result: its answer read as an online answer is, or its error's kind."""
        from google.genai import errors

        if isinstance(found, errors.APIError):
            return _api_failure(found, self.model)
        try:
            return _answer(found)
        except ReasonerError as problem:
            return problem

    def cancel_batch(self, job: BatchJob) -> None:
        with self._calling():
            self.client.batches.cancel(name=job.name)

    def cleanup_batch(self, job: BatchJob | None, files: Sequence[str]) -> None:
        results = None
        if job is not None:
            try:
                with self._calling():
                    results = gemini_batch.result_file(self.client, job)
            except ReasonerError:
                pass
        own = [*job.files, *([results] if results else [])] if job is not None else []
        for name in dict.fromkeys([*files, *own]):
            self._delete(name)

    @functools.cached_property
    def client(self) -> "genai.Client":
        """Built on first use: importing the SDK costs about a second."""
        from google import genai
        from google.genai import types

        key = next((os.environ[v] for v in KEY_VARIABLES if os.environ.get(v)), None)
        if key is None:
            raise StopRun(f"no Gemini API key: set {' or '.join(KEY_VARIABLES)}")
        options = types.HttpOptions(timeout=round(self.timeout * 1000), retry_options=types.HttpRetryOptions(attempts=1))
        return genai.Client(api_key=key, vertexai=False, http_options=options)

    def _generation_config(self, request: ReasoningRequest) -> "types.GenerateContentConfig":
        from google.genai import types

        resolution = self.settings["media_resolution"]
        return types.GenerateContentConfig(
            response_mime_type="application/json",
            response_json_schema=request.answer_schema,
            temperature=float(self.settings["temperature"]),
            max_output_tokens=self.settings["max_output_tokens"],
            media_resolution=types.MediaResolution(f"MEDIA_RESOLUTION_{resolution.upper()}") if resolution else None,
            automatic_function_calling=types.AutomaticFunctionCallingConfig(disable=True),
        )

    @property
    def _inline_bytes(self) -> float:
        return float(self.settings["inline_limit_mb"]) * 2**20

    def _clip_bytes(self, path: Path) -> bytes | None:
        """The clip's bytes when it is small enough to travel inline, else None."""
        try:
            return path.read_bytes() if path.stat().st_size <= self._inline_bytes else None
        except OSError as error:
            raise AnswerRejected(f"{path}: cannot read the clip ({error.strerror or error})") from None

    def _clip_part(self, mime_type: str, *, data: bytes | None = None, uri: str | None = None) -> "types.Part":
        """The clip as a request part, inline or by file URI, with the frame rate for a video."""
        from google.genai import types

        fps = self.settings["fps"]
        metadata = types.VideoMetadata(fps=fps) if fps is not None and mime_type.startswith("video/") else None
        if data is not None:
            return types.Part(inline_data=types.Blob(data=data, mime_type=mime_type), video_metadata=metadata)
        return types.Part(file_data=types.FileData(file_uri=uri, mime_type=mime_type), video_metadata=metadata)

    def _upload(self, path: Path, mime_type: str, clip_id: str) -> "types.File":
        from google.genai import types

        try:
            return self.client.files.upload(
                file=path, config=types.UploadFileConfig(mime_type=mime_type, display_name=clip_id))
        except (ValueError, KeyError) as error:  # the SDK's own "upload not finalized" checks
            raise RetryableError(f"upload of {path.name} did not complete: {_one_line(str(error))}") from None

    @contextmanager
    def _media_part(self, path: Path, mime_type: str, clip_id: str) -> Iterator["types.Part"]:
        """The clip as a request part: its bytes inline when small, else a Files API upload that
        is deleted once the call is over."""
        data = self._clip_bytes(path)
        if data is not None:
            yield self._clip_part(mime_type, data=data)
            return
        uploaded = self._upload(path, mime_type, clip_id)
        try:
            yield self._clip_part(mime_type, uri=self._wait_until_active(uploaded).uri)
        finally:
            self._delete(uploaded.name)

    def _wait_until_active(self, file: "types.File") -> "types.File":
        deadline = time.monotonic() + self.timeout
        while file.state != "ACTIVE":
            if file.state == "FAILED":
                why = file.error.message if file.error is not None and file.error.message else "no reason given"
                raise AnswerRejected(f"Gemini could not process the uploaded file {file.name}: {_one_line(why)}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RetryableError(f"uploaded file {file.name} still processing after {self.timeout:g} s")
            time.sleep(min(float(self.settings["poll_interval"]), remaining))
            file = self.client.files.get(name=file.name)
        return file

    def _delete(self, name: str | None) -> None:
        """Best effort: a file left behind expires after 48 hours, and a failed delete must not
        hide the answer or the error of the call itself."""
        try:
            self.client.files.delete(name=name)
        except Exception:
            pass


# --- the clip as Gemini accepts it -----------------------------------------------------------


@contextmanager
def _sendable(path: Path) -> Iterator[tuple[Path, str]]:
    """``(file, mime type)`` to send for ``path``: the clip itself when Gemini accepts its
    container, else a converted copy in a temporary folder removed afterwards."""
    suffix = path.suffix.lower()
    mime_type = VIDEO_MIME_TYPES.get(suffix) or AUDIO_MIME_TYPES.get(suffix)
    if mime_type is not None:
        yield path, mime_type
        return
    with tempfile.TemporaryDirectory(prefix="mer-gemini-") as folder:
        yield _convert(path, Path(folder))


def _convert(path: Path, folder: Path) -> tuple[Path, str]:
    """Video (first non-cover-art stream plus the first audio track) to H.264/AAC .mp4; sound
    alone to 16 kHz mono .wav."""
    why = f"cannot convert {path.name} for Gemini"
    try:
        has_video = probe(path).has_video
    except DataError as error:
        raise AnswerRejected(str(error)) from None
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AnswerRejected(f"{why}: ffmpeg not found on PATH (Debian/Ubuntu: apt-get install ffmpeg)")
    if has_video:
        target, mime_type = folder / f"{path.stem}.mp4", "video/mp4"
        codecs = ["-map", "0:V:0", "-map", "0:a:0?", "-vf", "scale=trunc(iw/2)*2:trunc(ih/2)*2",
                  "-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-c:a", "aac",
                  "-movflags", "+faststart"]
    else:
        target, mime_type = folder / f"{path.stem}.wav", "audio/wav"
        codecs = ["-map", "0:a:0", "-ac", "1", "-ar", "16000", "-c:a", "pcm_s16le"]
    command = [ffmpeg, "-nostdin", "-v", "error", "-i", str(path), *codecs, str(target)]
    done = subprocess.run(command, capture_output=True, text=True, errors="replace")
    if done.returncode != 0 or not target.is_file():
        lines = done.stderr.strip().splitlines() or [f"ffmpeg exited with status {done.returncode}"]
        raise AnswerRejected(f"{why}: {_one_line(lines[-1])}")
    return target, mime_type


# --- reading the answer ----------------------------------------------------------------------


def _answer(response: "types.GenerateContentResponse") -> ReasoningAnswer:
    feedback = response.prompt_feedback
    if feedback is not None and feedback.block_reason:
        note = f" ({_one_line(feedback.block_reason_message)})" if feedback.block_reason_message else ""
        raise AnswerRejected(f"blocked by safety filter: prompt {feedback.block_reason.value}{note}")
    if not response.candidates:
        raise AnswerRejected("empty answer: Gemini returned no candidate")
    candidate = response.candidates[0]
    finish = str(getattr(candidate.finish_reason, "value", candidate.finish_reason) or "")
    if finish in BLOCKED_REASONS:
        raise AnswerRejected(f"blocked by safety filter: {finish}")
    if finish == "PUP_LIMITED_DISABLED":
        raise StopRun("Gemini stopped answering: the account is limited or disabled for policy violations")
    if finish == "MAX_TOKENS":
        raise AnswerRejected("answer cut off at the output token limit (raise max_output_tokens)")
    parts = candidate.content.parts if candidate.content is not None and candidate.content.parts else []
    text = "".join(part.text for part in parts if part.text and not part.thought)
    if not text.strip():
        raise AnswerRejected(f"empty answer (finish reason {finish or 'none'})")
    try:
        answer = json.loads(text)
    except json.JSONDecodeError as error:
        raise AnswerRejected(f"malformed JSON: {error.msg} at character {error.pos} of {text[:60]!r}") from None
    if not isinstance(answer, dict):
        raise AnswerRejected(f"the answer is a JSON {type(answer).__name__}, not an object")
    return ReasoningAnswer(answer=answer, usage=_usage(response.usage_metadata))


def _usage(metadata: "types.GenerateContentResponseUsageMetadata | None") -> Usage:
    """Prompt tokens in; answer and thinking tokens out (Gemini bills thinking as output)."""
    if metadata is None:
        return Usage()
    output = (metadata.candidates_token_count or 0) + (metadata.thoughts_token_count or 0)
    return Usage(input_tokens=metadata.prompt_token_count or 0, output_tokens=output)


# --- errors ----------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _network_errors() -> tuple[tuple[type[Exception], ...], tuple[type[Exception], ...]]:
    """``(timeouts, other transport failures)`` of the HTTP libraries the SDK may use: httpx2 by
    default, httpx when installed and chosen through ``GOOGLE_GENAI_HTTP_CLIENT``."""
    timeouts, failures = [], []
    for name in ("httpx2", "httpx"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        timeouts.append(module.TimeoutException)
        failures.append(module.TransportError)
    return tuple(timeouts), tuple(failures)


def _api_failure(error: "errors.APIError", model: str) -> ReasonerError:
    """The contract's error kind for an HTTP error answer of the Gemini API."""
    code = error.code or 0
    status = error.status or ""
    label = f"{code} {status}".strip()
    message = _one_line(error.message or "no message")
    details = _details(error)
    if code == 429:
        quota = _unrecoverable_quota(details, message)
        if quota:
            return StopRun(f"Gemini quota exhausted ({quota}): {message}")
        return RetryableError(f"rate limited ({label}): {message}", retry_after=_retry_after(error, details))
    if code in (401, 403) or "API_KEY_INVALID" in _reasons(details):
        return StopRun(f"the key was rejected ({label}): {message}")
    if code == 404 and "/models/" in _request_path(error):
        return StopRun(f"model {model!r} not found ({label}): {message}")
    if code in (404, 408, 409, 499) or code >= 500:
        return RetryableError(f"Gemini server error ({label}): {message}", retry_after=_retry_after(error, details))
    if status == "FAILED_PRECONDITION":
        return StopRun(f"Gemini refuses this project ({label}): {message}")
    return AnswerRejected(f"Gemini refused the request ({label}): {message}")


def _details(error: "errors.APIError") -> list[dict[str, Any]]:
    """The ``error.details`` list of a Google API error body (typed entries such as RetryInfo)."""
    body = error.details if isinstance(error.details, dict) else {}
    inner = body.get("error", body)
    found = inner.get("details") if isinstance(inner, dict) else None
    return [entry for entry in found if isinstance(entry, dict)] if isinstance(found, list) else []


def _of_type(details: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [entry for entry in details if str(entry.get("@type", "")).endswith(f".{kind}")]


def _reasons(details: list[dict[str, Any]]) -> set[str]:
    return {str(entry.get("reason")) for entry in _of_type(details, "ErrorInfo")}


def _unrecoverable_quota(details: list[dict[str, Any]], message: str) -> str | None:
    """Why waiting inside this run cannot help, or None for a per-minute limit (retryable): a
    per-day quota, or a quota whose limit is 0 (no access to the model without billing)."""
    for failure in _of_type(details, "QuotaFailure"):
        for violation in failure.get("violations") or []:
            quota = str(violation.get("quotaId") or violation.get("quotaMetric") or "quota")
            if _DAILY.search(quota):
                return f"daily limit {quota}"
            if str(violation.get("quotaValue", "")).strip() == "0":
                return f"{quota} has a limit of 0 on this project"
    return "daily limit" if _DAILY.search(message) else None


def _retry_after(error: "errors.APIError", details: list[dict[str, Any]]) -> float | None:
    """Seconds the server asked us to wait: the Retry-After header (seconds or an HTTP date),
    else the RetryInfo ``retryDelay`` ("37s", "1.5s")."""
    headers = getattr(error.response, "headers", None)
    header = headers.get("retry-after") if headers is not None else None
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            return max(0.0, (parsedate_to_datetime(header) - datetime.now(timezone.utc)).total_seconds())
        except (TypeError, ValueError):
            pass
    for info in _of_type(details, "RetryInfo"):
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)s\s*", str(info.get("retryDelay", "")))
        if match:
            return float(match.group(1))
    return None


def _request_path(error: "errors.APIError") -> str:
    try:
        return str(error.response.request.url.path)
    except (AttributeError, RuntimeError):  # no response, or a response without its request
        return ""


def _one_line(text: str) -> str:
    """Server text as one short line, with any API key from the environment masked."""
    for variable in KEY_VARIABLES:
        key = os.environ.get(variable)
        if key:
            text = text.replace(key, "***")
    return one_line(text, _MESSAGE_CHARS)


@hookimpl
def register_reasoners(register) -> None:
    register(GeminiReasoner)

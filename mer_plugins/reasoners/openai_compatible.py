"""The ``openai`` reasoner: any OpenAI-compatible chat-completions server (OpenAI, vLLM, Ollama,
LM Studio) through the official ``openai`` client.

Chat completions take images but not sound, so the model gets what it can use of a clip: the
core's prompt, ``frames`` stills sampled evenly over the clip (JPEG data URLs), the transcript and
an acoustic summary measured from the extracted audio features. One call is one attempt: the client
is built with ``max_retries=0`` because the core owns retries, backoff, rate limits and caching;
this module only maps each outcome onto the reasoner errors of :mod:`mercli.contracts`.

The ``openai`` package, PyAV and Pillow are imported on first use, so ``mer --help`` stays fast.
"""

from __future__ import annotations

import base64
import io
import ipaddress
import json
import math
import os
import threading
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, Mapping
from urllib.parse import urlparse

from mercli.plugin_api import (AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, AnswerRejected, Check, DataError, Option, Range,
                               Reasoner, ReasonerError, ReasoningAnswer, ReasoningRequest, RetryableError, StopRun,
                               Usage, decode, hookimpl, one_line, probe)

if TYPE_CHECKING:
    import numpy as np
    import openai
    from openai.types.chat import ChatCompletion

#: The key sent to a server on this machine when the key variable is unset: local servers (vLLM,
#: Ollama, LM Studio) ignore it, but the client refuses to start without one.
LOCAL_PLACEHOLDER_KEY = "not-needed"
#: Output tokens assumed per answer for ``estimate_usage``: a four-part trace with a few cues per
#: modality runs to 300-500 tokens; the margin keeps ``--max-cost`` on the safe side.
ESTIMATED_OUTPUT_TOKENS = 600
#: Characters per token assumed for text (English prose averages about four).
CHARS_PER_TOKEN = 4
#: Tokens assumed for the frame note and the acoustic summary (a few measured cues) in an estimate.
CONTEXT_TOKENS = 200
JPEG_QUALITY = 85
_MAX_MESSAGE_CHARS = 300


def image_tokens(width: int, height: int) -> int:
    """Input tokens OpenAI's GPT-4o family charges for one image at ``detail: auto/high``: the image
    is fitted into 2048 x 2048, its shorter side brought down to 768 px, and each 512 px tile costs
    170 tokens on top of a base of 85 (a 512 x 384 frame: 255 tokens). Other servers count
    differently; this is the estimate ``--max-cost`` plans with."""
    scale = min(1.0, 2048 / max(width, height))
    width, height = width * scale, height * scale
    scale = min(1.0, 768 / min(width, height))
    tiles = math.ceil(width * scale / 512) * math.ceil(height * scale / 512)
    return 85 + 170 * tiles


def _one_line(text: str, secret: str | None = None) -> str:
    """A server's message as one short line, with the key blanked should the server echo it."""
    if secret:
        text = text.replace(secret, "<key>")
    return one_line(text, _MAX_MESSAGE_CHARS)


def _is_local(url: str | None) -> bool:
    host = urlparse(url).hostname if url else None
    if not host:
        return False
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def retry_after(headers: Mapping[str, str]) -> float | None:
    """The server's hint in seconds: ``retry-after-ms`` (OpenAI's finer one) or ``Retry-After``
    (seconds or an HTTP date); None when it gave none that can be read."""
    try:
        return max(0.0, float(headers["retry-after-ms"]) / 1000)
    except (KeyError, ValueError):
        pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


class OpenAIReasoner(Reasoner):
    name = "openai"
    version = "1"
    description = ("Any OpenAI-compatible chat server (OpenAI, vLLM, Ollama, LM Studio): sampled frames, "
                   "transcript and an acoustic summary in, a JSON trace out.")
    needs_network = True
    uses_features = True  # the acoustic summary comes from the eGeMAPS features
    options = (
        Option("model", str, "gpt-4o-mini",
               "Model name as the server knows it (for vLLM and Ollama: the served model name, e.g. "
               "'Qwen/Qwen2.5-VL-7B-Instruct' or 'llava:13b'); it needs to accept images."),
        Option("base_url", str, None,
               "Server URL ending in /v1, e.g. http://localhost:8000/v1 (vLLM), http://localhost:11434/v1 "
               "(Ollama), http://localhost:1234/v1 (LM Studio); unset: OPENAI_BASE_URL or OpenAI's API."),
        Option("api_key_env", str, "OPENAI_API_KEY",
               "Name of the environment variable that holds the key (the key itself never goes in mer.toml); "
               "a server on localhost needs none."),
        Option("timeout", float, 120.0, "Seconds to wait for one answer before the core may retry.", POSITIVE),
        Option("frames", int, 8, "Stills sampled evenly over the clip and sent as images (0: text only).",
               NON_NEGATIVE),
        Option("frame_size", int, 512, "Longest side of each still in pixels (larger costs more image tokens).",
               Range(16)),
        Option("temperature", float, None, "Sampling temperature; unset: the server's default.", NON_NEGATIVE),
        Option("max_output_tokens", int, None,
               "Upper bound of answer tokens, sent as max_completion_tokens (older Ollama and LM Studio "
               "releases may ignore it); unset: the server's default.", AT_LEAST_ONE),
        Option("structured", bool, True,
               "Ask for a strict JSON-schema answer (response_format json_schema); false: JSON-object mode "
               "with the schema in the prompt, for servers without json_schema support."),
    )

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        self._client: "openai.OpenAI | None" = None
        self._client_lock = threading.Lock()

    # --- set-up -------------------------------------------------------------------------------

    @property
    def base_url(self) -> str | None:
        """Where requests go: the option, else ``OPENAI_BASE_URL``, else None (OpenAI's API)."""
        return self.settings["base_url"] or os.environ.get("OPENAI_BASE_URL") or None

    def _where(self) -> str:
        return self.base_url or "api.openai.com"

    def _api_key(self) -> str:
        variable = self.settings["api_key_env"]
        key = os.environ.get(variable)
        if key:
            return key
        if _is_local(self.base_url):
            return LOCAL_PLACEHOLDER_KEY
        raise StopRun(f"reasoner openai: set the environment variable {variable} to the API key for "
                      f"{self._where()} (it is not set)")

    def client(self) -> "openai.OpenAI":
        """The client, built on first use; ``max_retries=0`` because retrying is the core's job."""
        with self._client_lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(api_key=self._api_key(), base_url=self.base_url,
                                             timeout=self.settings["timeout"], max_retries=0)
            return self._client

    def checks(self) -> list[Check]:
        variable = self.settings["api_key_env"]
        if os.environ.get(variable):
            return [Check("API key", True, f"{variable} is set", required=False)]
        if _is_local(self.base_url):
            return [Check("API key", True, f"{variable} is not set; not needed for {self.base_url}", required=False)]
        return [Check("API key", False, f"{variable} is not set (needed for {self._where()})", required=False)]

    # --- the request --------------------------------------------------------------------------

    def estimate_usage(self, request: ReasoningRequest) -> Usage:
        """The prompt, the transcript and the answer schema (servers count it too) at
        ``CHARS_PER_TOKEN`` characters a token, :data:`CONTEXT_TOKENS` for the notes around them,
        :func:`image_tokens` per still at the size it would be sent, and
        :data:`ESTIMATED_OUTPUT_TOKENS`. Reads the clip's headers only, never its frames."""
        size = self._sent_frame_size(request) if self.settings["frames"] else None
        frame_tokens = self.settings["frames"] * image_tokens(*size) if size else 0
        text = request.prompt + (request.transcript or "") + json.dumps(request.answer_schema)
        return Usage(len(text) // CHARS_PER_TOKEN + CONTEXT_TOKENS + frame_tokens, ESTIMATED_OUTPUT_TOKENS)

    def _sent_frame_size(self, request: ReasoningRequest) -> tuple[int, int] | None:
        """Width and height of the stills sent for this clip; None for an audio-only file; a square
        of ``frame_size`` when the headers do not tell."""
        side = self.settings["frame_size"]
        try:
            info = probe(request.path)
        except DataError:
            return side, side
        if not info.has_video:
            return None
        if not (info.width and info.height):
            return side, side
        scale = min(1.0, side / max(info.width, info.height))
        return max(1, round(info.width * scale)), max(1, round(info.height * scale))

    def _prompt(self, request: ReasoningRequest) -> str:
        """The core's prompt, with the schema spelled out where the server is not given it as
        ``response_format``."""
        if self.settings["structured"]:
            return request.prompt
        return request.prompt + "\nJSON schema of the answer:\n" + json.dumps(request.answer_schema)

    def _context(self, request: ReasoningRequest) -> str:
        """What stands in for the sound the model cannot hear: the transcript and an acoustic
        summary measured from the clip's extracted features."""
        from mer_plugins.reasoners.evidence import measure

        try:
            acoustic = measure(request.features, request.transcript, request.classes)["acoustic"]
        except ValueError as error:  # a feature set without its encoder's layout: this clip cannot be asked
            raise AnswerRejected(f"cannot summarise the clip's features: {error}") from None
        summary = ("; ".join(acoustic.cues) if acoustic.cues else
                   f"not available: {acoustic.absent or 'no cues'}; judge the acoustic modality as absent.")
        transcript = f'"{request.transcript}"' if request.transcript else "none available"
        return (f"Transcript of the speech: {transcript}\n"
                f"Acoustic summary (measured from the audio track, which you cannot hear): {summary}")

    def _frames(self, request: ReasoningRequest) -> tuple[list[str], str]:
        """JPEG data URLs of the sampled stills, and a line telling the model what they are."""
        count = self.settings["frames"]
        if count == 0:
            return [], "No video frames are sent with this request; judge the visual modality as absent."
        images, times, absent = sample_frames(request, count, self.settings["frame_size"])
        if not images:
            return [], f"No video frames: {absent}; judge the visual modality as absent."
        stamps = ", ".join(f"{t:.1f}" for t in times)
        return [_jpeg_data_url(image) for image in images], (
            f"{len(images)} stills sampled evenly over the clip, at {stamps} s:")

    def _body(self, request: ReasoningRequest) -> dict[str, Any]:
        context = self._context(request)  # before decoding: unusable features reject the clip at once
        urls, note = self._frames(request)
        content: list[dict[str, Any]] = [{"type": "text", "text": self._prompt(request)},
                                         {"type": "text", "text": note}]
        content += [{"type": "image_url", "image_url": {"url": url}} for url in urls]
        content.append({"type": "text", "text": context})
        if self.settings["structured"]:
            response_format = {"type": "json_schema",
                               "json_schema": {"name": "mer_trace", "schema": request.answer_schema, "strict": True}}
        else:
            response_format = {"type": "json_object"}
        body: dict[str, Any] = {"model": self.settings["model"],
                                "messages": [{"role": "user", "content": content}],
                                "response_format": response_format}
        if self.settings["temperature"] is not None:
            body["temperature"] = self.settings["temperature"]
        if self.settings["max_output_tokens"] is not None:
            body["max_completion_tokens"] = self.settings["max_output_tokens"]
        return body

    # --- one attempt --------------------------------------------------------------------------

    def reason(self, request: ReasoningRequest) -> ReasoningAnswer:
        import openai

        client = self.client()  # first: a missing key stops the run before any decoding
        try:
            body = self._body(request)
        except DataError as error:  # the clip cannot be decoded
            raise AnswerRejected(str(error)) from None
        try:
            completion = client.chat.completions.create(**body)
        except openai.APIError as error:
            raise self._translate(error) from None
        except ValueError:  # a 200 reply that is not JSON: a web page, a proxy's notice
            raise AnswerRejected(f"{self._where()} answered with something other than JSON "
                                 "(is base_url the server's /v1 URL?)") from None
        return self._answer(completion)

    def _answer(self, completion: "ChatCompletion") -> ReasoningAnswer:
        if not getattr(completion, "choices", None):  # the client passes on whatever JSON came back
            raise AnswerRejected(f"{self._where()} returned no choices (is base_url the server's /v1 URL?)")
        choice = completion.choices[0]
        message = choice.message
        if getattr(message, "refusal", None):
            raise AnswerRejected(f"refused: {_one_line(message.refusal)}")
        if choice.finish_reason == "content_filter":
            raise AnswerRejected("refused: the server's content filter stopped the answer")
        text = _strip_code_fence(message.content or "")
        if not text:
            raise AnswerRejected("empty answer from the model")
        try:
            answer = json.loads(text)
        except json.JSONDecodeError as error:
            if choice.finish_reason == "length":
                raise AnswerRejected("answer cut off at the token limit (finish_reason 'length'); "
                                     "raise max_output_tokens") from None
            raise AnswerRejected(f"malformed JSON: {error.msg} at character {error.pos}: "
                                 f"{_one_line(text[:80])!r}") from None
        if not isinstance(answer, dict):
            raise AnswerRejected(f"the answer is a JSON {type(answer).__name__}, not an object")
        usage = completion.usage
        return ReasoningAnswer(answer, Usage(usage.prompt_tokens or 0, usage.completion_tokens or 0)
                               if usage is not None else Usage())

    def _translate(self, error: "openai.APIError") -> ReasonerError:
        """One line per failure, in the terms the core acts on (retry, skip the clip, stop)."""
        import openai

        key = os.environ.get(self.settings["api_key_env"])
        if isinstance(error, openai.APITimeoutError):
            return RetryableError(f"no answer from {self._where()} within {self.settings['timeout']:g} s")
        if isinstance(error, openai.APIConnectionError):
            cause = error.__cause__ or error
            reason = _one_line(str(cause) or type(cause).__name__, key)
            return RetryableError(f"cannot reach {self._where()}: {reason}")
        if not isinstance(error, openai.APIStatusError):
            return AnswerRejected(f"unreadable reply from {self._where()}: {_one_line(str(error), key)}")
        status = error.status_code
        body = error.body if isinstance(error.body, dict) else {}
        message = _one_line(str(body.get("message") or error.message), key)
        if isinstance(error, openai.RateLimitError):
            if "insufficient_quota" in (error.code, error.type):
                return StopRun(f"quota exhausted at {self._where()}: {message}")
            return RetryableError(f"rate limited (429): {message}", retry_after=retry_after(error.response.headers))
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return StopRun(f"the key was rejected by {self._where()} ({status}): {message}; "
                           f"check {self.settings['api_key_env']}")
        if isinstance(error, openai.NotFoundError):
            return StopRun(f"model {self.settings['model']!r} not found at {self._where()} (404): {message}")
        if status >= 500 or status in (408, 409):
            return RetryableError(f"temporary server error ({status}): {message}")
        if "response_format" in message or "json_schema" in message or error.param == "response_format":
            return StopRun(f"{self._where()} does not accept the structured answer format ({status}): {message}; "
                           "set structured = false for this reasoner")
        return AnswerRejected(f"request refused ({status}): {message}")


def sample_frames(request: ReasoningRequest, count: int, max_side: int) -> tuple[list["np.ndarray"], list[float], str]:
    """Up to ``count`` RGB stills spread evenly over the clip, their times, and why there are none
    when the clip has no usable video. Decoding goes through :mod:`mercli.media` (one pass, frames
    scaled so the longest side is ``max_side``)."""
    import numpy as np

    info = probe(request.path)
    if not info.has_video:
        return [], [], "the file is audio-only"
    fps = count / info.duration if info.duration > 0 else 2.0
    clip = decode(request.path, request.clip_id, fps=fps, audio=False, max_side=max_side)
    if clip.frames is None:
        return [], [], clip.absent.get("visual", "no frame could be decoded")
    picks = np.unique(np.linspace(0, len(clip.frames) - 1, min(count, len(clip.frames))).round().astype(int))
    return [clip.frames[i] for i in picks], [float(clip.frame_times[i]) for i in picks], ""


def _jpeg_data_url(image: "np.ndarray") -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _strip_code_fence(text: str) -> str:
    """Local models in JSON-object mode sometimes wrap the answer in a Markdown fence."""
    text = text.strip()
    if text.startswith("```") and text.endswith("```") and "\n" in text:
        text = text[text.index("\n") + 1 : -3].strip()
    return text


@hookimpl
def register_reasoners(register) -> None:
    register(OpenAIReasoner)

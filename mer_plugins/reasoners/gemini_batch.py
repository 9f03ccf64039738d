"""The Gemini Batch API as the ``gemini`` reasoner uses it (``mer reason --batch``), on the
google-genai client: jobs created with ``client.batches.create`` from requests inline or, past the
inline limit, from a JSONL file uploaded through the Files API; polled with ``batches.get``,
found again by display name with ``batches.list``, cancelled with ``batches.cancel``; results
read from the job (inline) or downloaded (``files.download`` of the result file).

The requests are the SDK's own ``InlinedRequest`` objects, serialised for a JSONL line by the
SDK's own converter, so that an inline job and a file job send the same JSON as an online call.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from mercli.plugin_api import BatchJob, BatchState

if TYPE_CHECKING:
    from google import genai
    from google.genai import errors, types

#: The metadata key (and JSONL ``key``) that carries a request's clip id.
KEY = "key"

#: Limits of the Gemini API, as its docs state them. Batch API: inline requests suit a job whose
#: create request stays "under 20 MB"; larger ones go as a JSONL input file. Files API: "up to
#: 2 GB per file" (the JSONL file is one), and files are deleted after 48 hours; a batch job that
#: stays pending or running for 48 hours expires.
INLINE_JOB_BYTES = 20 * 10**6
MAX_INPUT_FILE_BYTES = 2 * 10**9
FILE_LIFETIME_HOURS = 48

#: The SDK's job states (``types.JobState``) in the core's words; anything unknown is pending.
STATES = {
    "JOB_STATE_QUEUED": BatchState.PENDING, "JOB_STATE_PENDING": BatchState.PENDING,
    "JOB_STATE_RUNNING": BatchState.RUNNING, "JOB_STATE_CANCELLING": BatchState.RUNNING,
    "JOB_STATE_PAUSED": BatchState.RUNNING, "JOB_STATE_UPDATING": BatchState.RUNNING,
    "JOB_STATE_SUCCEEDED": BatchState.SUCCEEDED, "JOB_STATE_PARTIALLY_SUCCEEDED": BatchState.SUCCEEDED,
    "JOB_STATE_FAILED": BatchState.FAILED, "JOB_STATE_EXPIRED": BatchState.EXPIRED,
    "JOB_STATE_CANCELLED": BatchState.CANCELLED,
}

#: google.rpc codes of a per-request error status, as the HTTP codes the online errors carry.
RPC_TO_HTTP = {1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429, 9: 400, 10: 409, 11: 400,
               12: 501, 13: 500, 14: 503, 15: 500, 16: 401}

Result = "types.GenerateContentResponse | errors.APIError"


def wire_line(client: "genai.Client", request: "types.InlinedRequest") -> bytes:
    """One JSONL line ``{"key", "request"}``, the request as the SDK sends it inline."""
    from google.genai import _common, batches

    wire = batches._InlinedRequest_to_mldev(client._api_client, request)
    document = _common.encode_unserializable_types(_common.convert_to_dict(wire))
    return json.dumps({KEY: (request.metadata or {})[KEY], "request": document["request"]}).encode() + b"\n"


def submit(client: "genai.Client", model: str, prepared: Sequence["types.InlinedRequest"], display_name: str,
           uploaded: Callable[[str], None], inline_bytes: float = INLINE_JOB_BYTES) -> BatchJob:
    """Create one job: inline when its requests fit in ``inline_bytes`` (at most
    :data:`INLINE_JOB_BYTES`), else from an uploaded JSONL file (reported through ``uploaded``
    before the job is created)."""
    from google.genai import types

    config = types.CreateBatchJobConfig(display_name=display_name)
    with tempfile.TemporaryDirectory(prefix="mer-batch-") as folder:
        path = Path(folder) / f"{display_name}.jsonl"
        with path.open("wb") as jsonl:  # a line at a time: the job's media are in memory once, not twice
            for request in prepared:
                jsonl.write(wire_line(client, request))
        if path.stat().st_size <= min(inline_bytes, INLINE_JOB_BYTES):
            job = client.batches.create(model=model, src=list(prepared), config=config)
            return BatchJob(str(job.name))
        file = client.files.upload(file=path, config=types.UploadFileConfig(mime_type="jsonl", display_name=display_name))
    uploaded(str(file.name))
    job = client.batches.create(model=model, src=types.BatchJobSource(file_name=file.name), config=config)
    return BatchJob(str(job.name), (str(file.name),))


def find(client: "genai.Client", display_name: str) -> BatchJob | None:
    from google.genai import types

    for job in client.batches.list(config=types.ListBatchJobsConfig(page_size=100)):
        if job.display_name == display_name:
            return BatchJob(str(job.name))
    return None


def state_of(job: "types.BatchJob") -> str:
    return STATES.get(str(getattr(job.state, "value", job.state) or ""), BatchState.PENDING)


def poll(client: "genai.Client", job: BatchJob) -> tuple[str, str | None, dict[str, Any]]:
    """``(state, message, results by clip id)``; results only once the job has succeeded, each a
    response or the request's own error."""
    found = client.batches.get(name=job.name)
    state = state_of(found)
    if state != BatchState.SUCCEEDED:
        message = None if state in BatchState.LIVE else f"Gemini reports the job {state}"
        return state, message, {}
    dest = found.dest
    if dest is not None and dest.inlined_responses is not None:
        return state, None, {str((r.metadata or {}).get(KEY)): _inline_result(r) for r in dest.inlined_responses}
    if dest is not None and dest.file_name:
        return state, None, _file_results(client.files.download(file=dest.file_name))
    return state, "Gemini reports the job succeeded but gives no results", {}


def result_file(client: "genai.Client", job: BatchJob) -> str | None:
    """The job's result file, which the Files API keeps until deleted or expired."""
    dest = client.batches.get(name=job.name).dest
    return dest.file_name if dest is not None else None


def _inline_result(response: "types.InlinedResponse") -> Any:
    if response.error is not None:
        return _error(response.error.code, response.error.message, None)
    return response.response


def _file_results(data: bytes) -> dict[str, Any]:
    """The result JSONL: per line a ``key`` and a ``response`` (a GenerateContentResponse) or an
    ``error`` (a google.rpc status); a line that cannot be read is left out (its clip returns to
    be asked again)."""
    from google.genai import types

    results: dict[str, Any] = {}
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            document = json.loads(line)
            key = str(document[KEY])
            if "response" in document:
                results[key] = types.GenerateContentResponse.model_validate(document["response"])
            else:
                error = document.get("error") or document.get("status") or {}
                results[key] = _error(error.get("code"), error.get("message"), error.get("status"))
        except (ValueError, KeyError, TypeError):
            continue
    return results


def _error(code: Any, message: Any, status: Any) -> "errors.APIError":
    """A per-request error as the SDK's APIError, so the online mapping decides its kind."""
    from google.genai import errors

    number = int(code) if isinstance(code, (int, float)) else 500
    http = number if number >= 100 else RPC_TO_HTTP.get(number, 500)
    body = {"error": {"code": http, "message": str(message or "no message"), "status": str(status or "")}}
    return errors.APIError(http, body)

"""``mer reason --batch``: the clips still to do sent as asynchronous batch jobs at the batch
price, and the jobs' answers collected on a later run (or, with ``--wait``, in this one).

The workspace holds one JSON state file per job under ``reasoning/_batches/``: its id (also the
job's display name at the service), the service's name for it, its clips with their content
hashes, the files uploaded for it, when it was submitted, its state and, when it ended without
answers, why. A run first finds jobs whose creation it cannot confirm (a kill between create and
the state write) by that display name, then polls the live jobs and collects the finished ones:
each answer passes the checks of an online answer (:meth:`mercli.reason.ReasonRun.keep`) into a
trace or a recorded failure; uploaded files are deleted. A job that failed, expired or was
cancelled returns its clips to "to do", with the reason in its state file and in the summary.
Only then are the clips still to do (no trace, no live job) split into jobs and submitted. A clip
in a live job is never submitted again, so nothing is paid twice.
"""

from __future__ import annotations

import secrets
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import mercli.plugins as plugins
from mercli.atomic import read_json, write_json
from mercli.clips import Clip, clip_kind
from mercli.config import Config
from mercli.contracts import (AnswerRejected, BatchJob, BatchPoll, BatchReasoner, BatchState, ReasonerError,
                              ReasoningAnswer, ReasoningRequest, Usage)
from mercli.costs import price_for
from mercli.errors import ConfigError, DataError, writing
from mercli.failures import utc_now
from mercli.reason import ClipTask, ReasonRun, ReasonSummary, embed_priors, open_run
from mercli.vocabulary import one_line
from mercli.workspace import Workspace

BATCHES = "_batches"
#: Written before anything is uploaded; the job may or may not exist at the service.
SUBMITTING = "submitting"
#: Answers stored, files deleted: nothing more to do.
COLLECTED = "collected"
#: Never created (the run stopped before create returned): its clips are to do again.
NOT_CREATED = "not created"
STATES = (SUBMITTING, COLLECTED, NOT_CREATED, *BatchState.LIVE, *BatchState.ENDED)
#: A live job is cancelled this long before its first uploaded file would expire, so that no
#: request of it reads a file that is gone; its clips return to "to do".
EXPIRY_MARGIN_S = 3600.0
#: Seconds between state writes while a job's files are uploaded (one write per file would make
#: a job of thousands of clips write its growing state thousands of times).
UPLOAD_SAVE_INTERVAL_S = 1.0


# --- the state files --------------------------------------------------------------------------


@dataclass
class JobRecord:
    """What the workspace knows of one job; see the module notes."""

    id: str
    source: dict[str, Any]
    clips: dict[str, dict[str, Any]]  # clip id -> {"hash", "path", "features"}
    state: str = SUBMITTING
    name: str | None = None
    files: list[str] = field(default_factory=list)
    submitted: str | None = None
    first_upload: str | None = None
    updated: str = ""
    reason: str | None = None
    collected: dict[str, int] | None = None

    @property
    def live(self) -> bool:
        """Whether its clips are still with the service (or may be)."""
        return self.state in (SUBMITTING, BatchState.SUCCEEDED, *BatchState.LIVE)

    @classmethod
    def from_json(cls, document: Any) -> "JobRecord":
        """Raises ValueError, KeyError or TypeError for a document that is not a job record."""
        record = cls(**document)
        clips_ok = isinstance(record.clips, dict) and all(
            isinstance(v, dict) and isinstance(v.get("hash"), str) and isinstance(v.get("path"), str)
            for v in record.clips.values())
        if (record.state not in STATES or not isinstance(record.id, str) or not clips_ok
                or not isinstance(record.files, list) or (record.state != SUBMITTING and record.live and not record.name)):
            raise ValueError("not a batch job record")
        if record.first_upload is not None and datetime.fromisoformat(record.first_upload).tzinfo is None:
            raise ValueError(f"first_upload {record.first_upload!r} has no time zone")
        return record


class JobBook:
    """The state files of one workspace's batch jobs, each written atomically."""

    def __init__(self, reasoning: Path) -> None:
        self.folder = reasoning / BATCHES

    def load(self) -> list[JobRecord]:
        records = []
        for path in sorted(self.folder.glob("*.json")):
            document = read_json(path)
            try:
                records.append(JobRecord.from_json(document))
            except (ValueError, KeyError, TypeError) as problem:
                raise DataError(f"{path}: corrupt batch job state ({one_line(str(problem), 120)}); it may name a "
                                "job that is still running: repair it, or move it away to forget the job") from None
        return records

    def save(self, record: JobRecord) -> None:
        record.updated = utc_now()
        with writing(self.folder, midway=True):
            self.folder.mkdir(parents=True, exist_ok=True)
            write_json(self.folder / f"{record.id}.json", asdict(record))


def new_job_id() -> str:
    """Sortable by submission time, unique across runs and machines."""
    return f"mer-{datetime.now(timezone.utc):%Y%m%dT%H%M%S%f}-{secrets.token_hex(3)}"


# --- splitting into jobs ----------------------------------------------------------------------


def split_jobs(sizes: Sequence[int], max_requests: int, max_bytes: int) -> list[list[int]]:
    """Indices of requests grouped in order into jobs of at most ``max_requests`` requests and
    ``max_bytes`` bytes (a single larger request still gets a job of its own)."""
    jobs: list[list[int]] = []
    total = 0
    for index, size in enumerate(sizes):
        if not jobs or len(jobs[-1]) >= max_requests or total + size > max_bytes:
            jobs.append([])
            total = 0
        jobs[-1].append(index)
        total += size
    return jobs


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Planned:
    """A clip to send: its request, about how many bytes it adds to a job, its estimated usage."""

    task: ClipTask
    request: ReasoningRequest
    size: int
    usage: Usage


@dataclass
class BatchSummary(ReasonSummary):
    """A batch run: besides what an online run reports, the jobs it submitted, those still
    pending, those it collected, and the clips returned to "to do" with the reason."""

    submitted: list[dict[str, Any]] = field(default_factory=list)
    pending: list[dict[str, Any]] = field(default_factory=list)
    collected: list[dict[str, Any]] = field(default_factory=list)
    returned: list[dict[str, str]] = field(default_factory=list)
    jobs_planned: int = 0
    cost_online_usd: float = 0.0

    def to_json(self) -> dict[str, Any]:
        document = super().to_json()
        document.update(submitted=self.submitted, pending=self.pending, collected=self.collected,
                        returned=self.returned)
        if self.dry_run:
            document.update(jobs=self.jobs_planned, cost_online_usd=round(self.cost_online_usd, 6),
                            cost_batch_usd=round(self.cost_usd, 6))
        return document


class BatchRun:
    """Recovers, polls, collects and submits the batch jobs of one trace store."""

    def __init__(self, run: ReasonRun, book: JobBook) -> None:
        self.run = run
        self.reasoner: BatchReasoner = run.reasoner  # type: ignore[assignment]  (reason_batch checked it)
        self.book = book
        self.source = asdict(run.store.source)
        self.records = [r for r in book.load() if r.source == self.source]
        summary = BatchSummary(**{f: getattr(run.summary, f) for f in run.summary.__dataclass_fields__})
        run.summary = self.summary = summary
        self.settled: set[str] = set()

    # -- jobs already submitted --

    def busy_clips(self) -> set[str]:
        """Clips not to submit: those in a live job, and those whose answer this run collected."""
        return self.settled | {clip for record in self.records if record.live for clip in record.clips}

    def recover(self) -> None:
        """Settle the jobs whose creation is unconfirmed: adopt the job the service holds under
        their id, or, when it holds none, delete their uploads and return their clips."""
        for record in [r for r in self.records if r.state == SUBMITTING]:
            found = self.reasoner.find_batch(record.id)
            if found is not None:
                record.name, record.state = found.name, BatchState.PENDING
                record.submitted = record.submitted or utc_now()
            else:
                self.reasoner.cleanup_batch(None, record.files)
                self._return(record, NOT_CREATED, "the run stopped before the job was created")
            self.book.save(record)

    def poll(self) -> None:
        """Poll every live job once; collect those that succeeded, return the clips of those that
        ended without answers."""
        for record in [r for r in self.records if r.live and r.state != SUBMITTING]:
            job = BatchJob(str(record.name), tuple(record.files))
            if self._files_expiring(record):
                self.reasoner.cancel_batch(job)
                self.reasoner.cleanup_batch(job, record.files)
                self._return(record, BatchState.CANCELLED, "cancelled: its uploaded files would expire before it ends")
                self.book.save(record)
                continue
            result = self.reasoner.poll_batch(job)
            if result.state == BatchState.SUCCEEDED:
                self.collect(record, job, result)
            elif result.state in BatchState.ENDED:
                self.reasoner.cleanup_batch(job, record.files)
                self._return(record, result.state, result.message or f"the job {result.state}")
            elif result.state == record.state:
                continue
            else:
                record.state = result.state
            self.book.save(record)

    def _files_expiring(self, record: JobRecord) -> bool:
        lifetime = self.reasoner.batch_limits().file_lifetime_s
        if lifetime is None or record.first_upload is None or record.state == BatchState.SUCCEEDED:
            return False
        age = (datetime.now(timezone.utc) - datetime.fromisoformat(record.first_upload)).total_seconds()
        return age > lifetime - EXPIRY_MARGIN_S

    def collect(self, record: JobRecord, job: BatchJob, result: BatchPoll) -> None:
        """Every clip's answer through the online checks into a trace or a recorded failure; a
        clip without a result, or whose request failed in a way worth retrying, is to do again."""
        counts = {"done": 0, "failed": 0, "returned": 0}
        for clip_id, entry in record.clips.items():
            task = _task(clip_id, entry)
            found = result.results.get(clip_id)
            if isinstance(found, ReasoningAnswer):
                outcome = self.run.keep(task, found)
                counts["done" if outcome == "done" else "failed"] += 1
                self.settled.add(clip_id)
            elif isinstance(found, AnswerRejected):
                self.run.reject(task, str(found))
                counts["failed"] += 1
                self.settled.add(clip_id)
            else:
                why = f"no result for this clip in job {record.id}" if found is None else one_line(str(found))
                self.summary.returned.append({"clip": clip_id, "job": record.id, "reason": why})
                counts["returned"] += 1
        self.reasoner.cleanup_batch(job, record.files)
        record.state, record.collected = COLLECTED, counts
        self.summary.collected.append({"job": record.id, "name": record.name, **counts})

    def _return(self, record: JobRecord, state: str, reason: str) -> None:
        record.state, record.reason = state, reason
        self.summary.returned.extend({"clip": c, "job": record.id, "reason": reason} for c in record.clips)

    # -- new jobs --

    def submit(self, tasks: Sequence[ClipTask]) -> None:
        """Send ``tasks`` (clips with no trace and no live job) as jobs within the reasoner's
        limits; a failure that is not one clip's raises, keeping what was sent."""
        planned = self.plan(tasks)
        for group in planned:
            if not self.run.budget.reserve(self.run.price.of(sum((p.usage for p in group), Usage()))):
                self.summary.skipped.extend({"clip": p.task.clip.clip_id, "reason": "not submitted: the job could "
                                             f"pass --max-cost {self.run.budget.limit:.2f} USD"} for p in group)
                continue
            self._submit_job(group)

    def plan(self, tasks: Sequence[ClipTask]) -> list[list[Planned]]:
        """Tasks grouped into jobs; a clip whose request cannot be built is skipped (dry run) or
        recorded as failed."""
        sized = []
        for task in tasks:
            try:
                request = self.run.request(task.clip)
                sized.append(Planned(task, request, self.reasoner.request_bytes(request),
                                     self.run.reasoner.estimate_usage(request)))
            except DataError as problem:
                if self.summary.dry_run:
                    self.summary.skipped.append({"clip": task.clip.clip_id, "reason": str(problem)})
                else:
                    self.run.reject(task, str(problem))
        limits = self.reasoner.batch_limits()
        groups = split_jobs([p.size for p in sized], limits.max_requests, limits.max_bytes)
        return [[sized[i] for i in group] for group in groups]

    def _submit_job(self, planned: list[Planned]) -> None:
        record = JobRecord(new_job_id(), self.source, {p.task.clip.clip_id: _entry(p.task) for p in planned})
        self.book.save(record)  # before the first upload: a kill from here on loses nothing
        self.records.append(record)

        last_save = [0.0]
        lock = threading.Lock()

        def uploaded(name: str) -> None:
            """Note the file; written at most once a second (a name lost to a kill is a file that
            the service deletes by itself when it expires)."""
            with lock:
                record.files.append(name)
                record.first_upload = record.first_upload or utc_now()
                if time.monotonic() - last_save[0] >= UPLOAD_SAVE_INTERVAL_S:
                    self.book.save(record)
                    last_save[0] = time.monotonic()

        def saved_upload(name: str) -> None:
            uploaded(name)
            self.book.save(record)

        try:
            prepared = self._prepare(planned, record, uploaded)
            self.book.save(record)  # every media file named before the job is created
            job = self.reasoner.submit_batch(prepared, record.id, saved_upload) if prepared else None
        except ReasonerError:
            self.reasoner.cleanup_batch(None, record.files)
            self._return(record, NOT_CREATED, "the job could not be submitted")
            self.book.save(record)
            raise
        if job is None:
            self._return(record, NOT_CREATED, "no clip of the job could be sent")
        else:
            record.name, record.state, record.submitted = job.name, BatchState.PENDING, utc_now()
            record.files = list(dict.fromkeys([*record.files, *job.files]))
            self.summary.submitted.append({"job": record.id, "name": job.name, "clips": len(record.clips)})
        self.book.save(record)

    def _prepare(self, planned: list[Planned], record: JobRecord, uploaded: Callable[[str], None]) -> list[Any]:
        """The job's requests as the reasoner sends them, ``reason.concurrency`` at a time (a clip
        to upload waits mostly on the network); a clip that cannot be sent is recorded as failed
        and leaves the job."""
        def prepare(item: Planned) -> Any:
            try:
                return self.reasoner.prepare_batch_request(item.request, uploaded)
            except AnswerRejected as problem:
                return problem

        pool = ThreadPoolExecutor(max_workers=self.run.pacing.concurrency, thread_name_prefix="batch")
        try:
            results = list(pool.map(prepare, planned))
        finally:  # Ctrl-C or a failure: uploads in flight finish (and are named), none starts
            pool.shutdown(wait=True, cancel_futures=True)
        prepared = []
        for item, result in zip(planned, results):
            if isinstance(result, AnswerRejected):
                del record.clips[item.task.clip.clip_id]
                self.run.reject(item.task, str(result))
            else:
                prepared.append(result)
        return prepared

    def wait(self, interval: float, progress: Callable[[int, int, str], None]) -> None:
        """Poll every ``interval`` seconds until no job is live; ``progress`` gets (clips
        collected, clips in jobs, a line of job states)."""
        watched = [r for r in self.records if r.live]
        total = sum(len(r.clips) for r in watched)
        while True:
            progress(sum(len(r.clips) for r in watched if not r.live), total, _states(watched))
            if not any(r.live for r in watched):
                return
            time.sleep(interval)
            self.poll()

    def finish(self) -> BatchSummary:
        self.summary.pending = [{"job": r.id, "name": r.name, "state": r.state, "clips": len(r.clips),
                                 "submitted": r.submitted} for r in self.records if r.live]
        self.summary.cost_usd = self.run.budget.spent
        return self.summary


def _entry(task: ClipTask) -> dict[str, Any]:
    return {"hash": task.content_hash, "path": str(task.clip.path), "features": task.features}


def _task(clip_id: str, entry: dict[str, Any]) -> ClipTask:
    path = Path(entry["path"])
    return ClipTask(Clip(clip_id, path, clip_kind(path) or "video"), entry["hash"], entry.get("features"))


def _states(records: Sequence[JobRecord]) -> str:
    counts: dict[str, int] = {}
    for record in records:
        counts[record.state] = counts.get(record.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))


# --- the stage --------------------------------------------------------------------------------


def reason_batch(config: Config, workspace: Workspace, clips_dir: Path, *, labels: Path | None = None,
                 label_conditioned: bool = False, retry_failed: bool = False, dry_run: bool = False,
                 wait: bool = False, embed: bool = True) -> BatchSummary:
    """``mer reason --batch``: recover, poll and collect earlier jobs, submit the clips still to
    do; with ``wait``, poll until every job has ended; then embed the traces as priors."""
    name = config.reason.reasoner
    if not issubclass(plugins.get("reasoners", name).component, BatchReasoner):
        raise ConfigError(f"--batch: reasoner '{name}' has no batch mode")
    run, tasks = open_run(config, workspace, clips_dir, labels, label_conditioned, retry_failed, batch=True)
    batch = BatchRun(run, JobBook(workspace.reasoning))
    if dry_run:
        return estimate_batch(batch, config, tasks)
    try:
        batch.recover()
        batch.poll()
        busy = batch.busy_clips()
        batch.submit([task for task in tasks if task.clip.clip_id not in busy])
        if wait:
            with job_progress() as show:
                batch.wait(config.reason.batch_poll, show)
    except ReasonerError as problem:  # the service cannot be asked now: every state file stands as it is
        batch.summary.stopped = f"{run.reasoner.name}: {one_line(str(problem))}"
    summary = batch.finish()
    if embed and summary.done:
        embed_priors(config, workspace, run)
    return summary


def estimate_batch(batch: BatchRun, config: Config, tasks: Sequence[ClipTask]) -> BatchSummary:
    """The plan, calling nothing: the clips not in a live job, the jobs they make, their tokens,
    and the cost at the online and at the batch price."""
    summary = batch.summary
    summary.dry_run = True
    busy = batch.busy_clips()
    groups = batch.plan([task for task in tasks if task.clip.clip_id not in busy])
    usage = sum((p.usage for group in groups for p in group), Usage())
    summary.calls, summary.usage, summary.jobs_planned = sum(map(len, groups)), usage, len(groups)
    summary.cost_usd = batch.run.price.of(usage)
    summary.cost_online_usd = price_for(batch.run.reasoner, config.reason.prices).of(usage)
    summary.pending = [{"job": r.id, "state": r.state, "clips": len(r.clips)} for r in batch.records if r.live]
    return summary


@contextmanager
def job_progress() -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress display on stderr for ``--wait``: clips collected of those in jobs, with the
    jobs' states as its description."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from mercli.console import ignore, showing, stderr

    if not showing():
        yield ignore
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=stderr) as bar:
        task = bar.add_task("batch jobs", total=None)

        def show(done: int, total: int, states: str) -> None:
            bar.update(task, completed=done, total=total, description=f"batch jobs: {states or 'none'}")

        yield show

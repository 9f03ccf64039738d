"""The reason stage: ask a reasoner about every clip of a folder, keep each answer as a trace.

The core owns everything around the call, so that every reasoner plug-in gets it for free:
caching by clip content (a re-run costs nothing), a concurrency limit, a requests-per-minute limit,
retries with backoff on transient errors, a clean stop when nothing more can succeed (a rejected
key, an exhausted quota), a cost budget, and the schema check of every answer. An answer that is
blocked, empty or invalid is recorded as that clip's failure and never stored as a trace.
"""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import mercli.plugins as plugins
import mercli.prompts as prompts
from mercli.clips import Clip, scan
from mercli.config import Config
from mercli.costs import Budget, Price, price_for
from mercli.contracts import (AnswerRejected, Features, Reasoner, ReasoningAnswer, ReasoningRequest, RetryableError,
                              StopRun, Usage)
from mercli.errors import ConfigError, DataError, writing
from mercli.failures import utc_now
from mercli.features import FeatureSet, list_feature_sets
from mercli.labels import LabelledClip, read_labels
from mercli.pacing import RateLimiter, backoff_delay
from mercli.trace_model import answer_schema, trace_problems
from mercli.traces import TraceSource, TraceStore, content_hash, summarise
from mercli.transcripts import TranscriptStore
from mercli.vocabulary import is_prior, one_line
from mercli.workspace import Workspace

Outcome = Literal["done", "cached", "failed", "skipped"]


# --- what a reasoner is told about a clip -----------------------------------------------------


class ClipInputs:
    """Transcripts and extracted features of clips, for building requests.

    The transcript comes from the labels file, else from whichever recogniser ``mer extract``
    used; the features are the newest set of each encoder that holds the clip."""

    def __init__(self, workspace: Workspace, labelled: dict[str, LabelledClip]) -> None:
        self.labelled = labelled
        self.transcripts = TranscriptStore(workspace.transcripts)
        newest: dict[str, FeatureSet] = {}
        for feature_set in list_feature_sets(workspace.features):
            encoder = feature_set.manifest.encoder
            if is_prior(encoder):
                continue
            if encoder not in newest or feature_set.manifest.created > newest[encoder].manifest.created:
                newest[encoder] = feature_set
        self.feature_sets = newest

    def transcript(self, clip_id: str) -> str | None:
        record = self.labelled.get(clip_id)
        if record is not None and record.transcript:
            return record.transcript
        return self.transcripts.latest(clip_id)

    def holding(self, clip_id: str) -> dict[str, FeatureSet]:
        """The feature sets, by encoder, that hold a result for the clip."""
        return {e: s for e, s in self.feature_sets.items() if s.status(clip_id) is not None}

    def feature_names(self, clip_id: str) -> list[str]:
        """The names of the feature sets that hold the clip, sorted (a trace records them)."""
        return sorted(s.name for s in self.holding(clip_id).values())

    def features(self, clip_id: str) -> dict[str, Features]:
        return {encoder: feature_set.read(clip_id) for encoder, feature_set in self.holding(clip_id).items()}


class HeldInputs:
    """Clips held in memory (``mer predict``), served as :class:`ClipInputs` serves the workspace's:
    the caller holds a clip's transcript and features while it asks about it."""

    labelled: dict[str, LabelledClip] = {}

    def __init__(self) -> None:
        self._held: dict[str, tuple[str | None, dict[str, Features], list[str]]] = {}

    def hold(self, clip_id: str, transcript: str | None, features: dict[str, Features], set_names: list[str]) -> None:
        """Serve ``features`` (by encoder name, from the sets named ``set_names``) for ``clip_id``."""
        self._held[clip_id] = (transcript, features, sorted(set_names))

    def release(self, clip_id: str) -> None:
        self._held.pop(clip_id, None)

    def transcript(self, clip_id: str) -> str | None:
        return self._held[clip_id][0]

    def feature_names(self, clip_id: str) -> list[str]:
        return self._held[clip_id][2]

    def features(self, clip_id: str) -> dict[str, Features]:
        return self._held[clip_id][1]


# --- the run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pacing:
    """``[reason]`` settings that shape the calls."""

    concurrency: int
    requests_per_minute: float
    max_retries: int
    backoff: float
    max_backoff: float

    @classmethod
    def from_config(cls, config: Config) -> "Pacing":
        reason = config.reason
        return cls(reason.concurrency, reason.requests_per_minute, reason.max_retries, reason.backoff,
                   reason.max_backoff)


@dataclass
class ClipTask:
    """A clip to ask about: its content hash and, for reasoners that read features, the names of
    the feature sets it is given (both decide whether a stored trace still stands)."""

    clip: Clip
    content_hash: str
    features: list[str] | None = None


@dataclass
class ReasonSummary:
    """What a run (or, with ``dry_run``, the plan of one) did."""

    source: TraceSource
    clips: int
    dry_run: bool = False
    network: bool = False
    done: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    failed: list[dict[str, str]] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    calls: int = 0
    usage: Usage = Usage()
    cost_usd: float = 0.0
    stopped: str | None = None
    priors: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "clips": self.clips, "done": len(self.done), "cached": len(self.cached), "failed": self.failed,
            "calls": self.calls,
            "usage": {"input_tokens": self.usage.input_tokens, "output_tokens": self.usage.output_tokens},
            "cost_usd": round(self.cost_usd, 6), "skipped": self.skipped, "stopped": self.stopped,
            "dry_run": self.dry_run, "network": self.network, "source": asdict(self.source), "priors": self.priors,
        }


class ReasonRun:
    """One ``mer reason`` over a list of clips with one reasoner and one trace store."""

    def __init__(self, reasoner: Reasoner, store: TraceStore, inputs: ClipInputs | HeldInputs, classes: Sequence[str],
                 pacing: Pacing, price: Price, budget: Budget, label_conditioned: bool,
                 prompt_version: str = prompts.PROMPT_VERSION) -> None:
        self.reasoner = reasoner
        self.store = store
        self.inputs = inputs
        self.classes = tuple(classes)
        self.pacing = pacing
        self.price = price
        self.budget = budget
        self.label_conditioned = label_conditioned
        self.prompt_version = prompt_version
        #: Called with (clip id, outcome) as each clip finishes, from the thread that asked.
        self.observe: Callable[[str, Outcome], None] = lambda clip, outcome: None
        #: Called with a one-line notice for the user (a wait before a retry), from the thread that asked.
        self.say: Callable[[str], None] = lambda line: None
        self.limiter = RateLimiter(pacing.requests_per_minute if reasoner.needs_network else 0)
        self.stop = threading.Event()
        self.summary = ReasonSummary(store.source, 0, network=reasoner.needs_network)
        self._lock = threading.Lock()
        self._rng = random.Random()

    def request(self, clip: Clip) -> ReasoningRequest:
        transcript = self.inputs.transcript(clip.clip_id)
        label = None
        if self.label_conditioned:
            record = self.inputs.labelled.get(clip.clip_id)
            label = record.label if record is not None else None
            if label is None:
                raise DataError(f"{clip.path}: no label for this clip, so no label-conditioned trace")
        return ReasoningRequest(
            clip_id=clip.clip_id, path=clip.path,
            prompt=prompts.instruction(self.classes, label=label, transcript=transcript, version=self.prompt_version),
            answer_schema=answer_schema(self.classes, scores=prompts.asks_scores(self.prompt_version)),
            classes=self.classes, transcript=transcript,
            label=label, features=self.inputs.features(clip.clip_id) if self.reasoner.uses_features else {})

    def trace(self, task: ClipTask, answer: dict[str, Any], usage: Usage) -> dict[str, Any]:
        """The stored document: the answer, the clip id and its provenance; raises AnswerRejected
        when the answer breaks the schema or names an emotion outside the classes."""
        if not isinstance(answer, dict):
            raise AnswerRejected("the answer is not a JSON object")
        source = self.store.source
        trace = {"clip": task.clip.clip_id, **answer, "provenance": {
            "reasoner": source.reasoner, "model": source.model, "prompt_version": source.prompt_version,
            "label_conditioned": source.label_conditioned,
            "usage": {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens},
            "cost_usd": round(self.price.of(usage), 8), "content_hash": task.content_hash, "created": utc_now()}}
        if task.features is not None:
            trace["provenance"]["features"] = task.features
        problems = trace_problems(trace, self.classes, prompts.asks_scores(self.prompt_version))
        if problems:
            raise AnswerRejected(f"answer does not match the trace schema: {summarise(problems)}")
        return trace

    def keep(self, task: ClipTask, reply: ReasoningAnswer) -> Outcome:
        """An answer that came another way (a batch job): stored as the clip's trace when it
        passes the same checks as an online answer, else recorded as the clip's failure."""
        self._count_call(reply.usage)
        self.budget.settle(0.0, self.price.of(reply.usage))
        try:
            trace = self.trace(task, reply.answer, reply.usage)
        except AnswerRejected as problem:
            return self._fail(task, str(problem))
        with writing(self.store.folder, midway=True):
            self.store.write(task.clip.clip_id, trace)
        return self._finish(task.clip, "done")

    def reject(self, task: ClipTask, problem: str) -> Outcome:
        """Record ``problem`` as the clip's failure."""
        return self._fail(task, problem)

    def _count_call(self, usage: Usage) -> None:
        with self._lock:
            self.summary.calls += 1
            self.summary.usage = self.summary.usage + usage

    def _finish(self, clip: Clip, outcome: Outcome, reason: str | None = None) -> Outcome:
        with self._lock:
            if outcome == "done":
                self.summary.done.append(clip.clip_id)
            elif outcome == "failed":
                self.summary.failed.append({"clip": clip.clip_id, "reason": reason or ""})
            elif outcome == "skipped":
                self.summary.skipped.append({"clip": clip.clip_id, "reason": reason or ""})
        self.observe(clip.clip_id, outcome)
        return outcome

    def _fail(self, task: ClipTask, reason: str, **details: Any) -> Outcome:
        if task.features is not None:
            details["features"] = task.features
        with writing(self.store.folder, midway=True):
            self.store.record_failure(task.clip.clip_id, reason, task.content_hash, path=str(task.clip.path),
                                      **details)
        return self._finish(task.clip, "failed", reason)

    def ask(self, task: ClipTask) -> Outcome:
        """Ask about one clip until an answer is stored, the clip fails, or the run stops."""
        clip = task.clip
        try:
            request = self.request(clip)
        except DataError as problem:
            return self._fail(task, str(problem))
        estimate = self.price.of(self.reasoner.estimate_usage(request))
        attempt = 0
        while True:
            attempt += 1
            if self.stop.is_set() or not self.limiter.wait(self.stop):
                return self._finish(clip, "skipped", f"not asked: {self.summary.stopped}")
            if not self.budget.reserve(estimate):
                return self._finish(clip, "skipped", f"not asked: the next call could pass --max-cost "
                                                     f"{self.budget.limit:.2f} USD")
            usage = Usage()
            try:
                reply = self.reasoner.reason(request)
                usage = reply.usage
                trace = self.trace(task, reply.answer, usage)
                with writing(self.store.folder, midway=True):
                    self.store.write(clip.clip_id, trace)
                return self._finish(clip, "done")
            except RetryableError as problem:
                if attempt > self.pacing.max_retries:
                    return self._fail(task, f"gave up after {attempt} attempts: {problem}", attempts=attempt)
                delay = backoff_delay(attempt, self.pacing.backoff, self.pacing.max_backoff, problem.retry_after,
                                      self._rng)
                self.say(self.waiting(clip, problem, delay, attempt))
                if self.stop.wait(delay):
                    return self._finish(clip, "skipped", f"not asked again: {self.summary.stopped}")
            except AnswerRejected as problem:
                return self._fail(task, str(problem), attempts=attempt)
            except StopRun as problem:
                with self._lock:
                    self.summary.stopped = self.summary.stopped or str(problem)
                self.stop.set()
                return self._finish(clip, "skipped", f"not answered: {problem}")
            finally:
                self._count_call(usage)
                self.budget.settle(estimate, self.price.of(usage))

    def waiting(self, clip: Clip, problem: RetryableError, delay: float, attempt: int) -> str:
        """The notice that a call is waiting to be retried, and for how long: a run that seems
        to hang is explained."""
        line = (f"{self.reasoner.name}: {clip.clip_id}: {one_line(problem)}; waiting {delay:.1f} s "
                f"before retry {attempt} of {self.pacing.max_retries}")
        if problem.retry_after is not None and problem.retry_after > self.pacing.max_backoff:
            line += (f" (the server asked for {problem.retry_after:g} s; reason.max_backoff caps the wait at "
                     f"{self.pacing.max_backoff:g} s)")
        return line

    def task(self, clip: Clip) -> ClipTask:
        features = None
        if self.reasoner.uses_features:
            features = self.inputs.feature_names(clip.clip_id)
        return ClipTask(clip, content_hash(clip.path), features)

    def plan(self, clips: Sequence[Clip], retry_failed: bool) -> tuple[list[ClipTask], list[str], list[dict[str, str]]]:
        """(clips to ask, clips already answered, clips whose recorded failure stands)."""
        tasks, cached, failed = [], [], []
        for clip in clips:
            task = self.task(clip)
            status = self.store.status(clip.clip_id, task.content_hash, task.features)
            if status == "done":
                cached.append(clip.clip_id)
            elif status == "failed" and not retry_failed:
                record = self.store.failure(clip.clip_id)
                reason = record.reason if record else "?"
                failed.append({"clip": clip.clip_id, "reason": f"failed before: {reason} (--retry-failed asks again)"})
            else:
                tasks.append(task)
        return tasks, cached, failed

    def run(self, tasks: Sequence[ClipTask]) -> None:
        """Ask about ``tasks`` with up to ``concurrency`` calls in flight. Ctrl-C stops the run:
        calls in flight finish (their answers are kept), nothing new starts."""
        with ThreadPoolExecutor(max_workers=self.pacing.concurrency, thread_name_prefix="reason") as pool:
            futures = [pool.submit(self.ask, task) for task in tasks]
            try:
                for future in as_completed(futures):
                    future.result()
            except BaseException:
                self.summary.stopped = self.summary.stopped or "interrupted"
                self.stop.set()
                for future in futures:
                    future.cancel()
                raise
        self.summary.cost_usd = self.budget.spent


# --- the stage --------------------------------------------------------------------------------


def parse_model(spec: str) -> tuple[str, str | None]:
    """``gemini`` -> ("gemini", None); ``gemini:gemini-2.5-pro`` -> ("gemini", "gemini-2.5-pro")."""
    name, _, model = spec.partition(":")
    if not name.strip():
        raise ConfigError(f"--model '{spec}': expected REASONER or REASONER:MODEL, e.g. gemini:gemini-2.5-flash")
    return name.strip(), model.strip() or None


def labelled_clips(config: Config, labels: Path | None, clips_dir: Path, needed: bool) -> dict[str, LabelledClip]:
    """The labels file's rows by clip id (its transcripts help; its labels are sent only when
    asked). Without a file, a folder whose layout codes the labels is read when labels are needed."""
    if labels is not None:
        return {r.clip_id: r for r in read_labels(labels, config)}
    if needed:
        return {r.clip_id: r for r in read_labels(clips_dir, config)}
    return {}


def open_run(config: Config, workspace: Workspace, clips_dir: Path, labels: Path | None, label_conditioned: bool,
             retry_failed: bool, batch: bool = False) -> tuple[ReasonRun, list[ClipTask]]:
    """The run of ``mer reason`` (online, or with ``batch`` priced as a batch job) and its plan:
    the clips to ask; the summary already counts the cached and the failed ones."""
    settings = config.reason
    reasoner: Reasoner = plugins.build("reasoners", settings.reasoner, config)
    version = prompts.chosen_version(settings.prompt_version, reasoner, workspace.reasoning, label_conditioned)
    source = TraceSource(reasoner.name, reasoner.model, reasoner.trace_version(version), label_conditioned)
    with writing(workspace.reasoning):
        store = TraceStore.open(workspace.reasoning, source)
    found = scan(clips_dir)
    clips = found.clips
    inputs = ClipInputs(workspace, labelled_clips(config, labels, clips_dir, label_conditioned))
    price = price_for(reasoner, settings.prices, batch=batch)
    run = ReasonRun(reasoner, store, inputs, config.data.classes, Pacing.from_config(config), price,
                    Budget(settings.max_cost or None), label_conditioned, version)  # 0: no limit
    tasks, cached, failed = run.plan(clips, retry_failed)
    run.summary.clips, run.summary.cached = len(clips) + len(found.refused), cached
    run.summary.failed = [entry.to_json() for entry in found.refused] + failed  # refused: counted as failed
    return run, tasks


def reason_folder(config: Config, workspace: Workspace, clips_dir: Path, *, labels: Path | None = None,
                  label_conditioned: bool = False, retry_failed: bool = False, dry_run: bool = False,
                  embed: bool = True) -> ReasonSummary:
    """``mer reason``: plan, ask with a progress bar, store; then embed the traces as prior
    feature sets (:mod:`mercli.priors`), unless ``embed`` is off or nothing is stored."""
    from mercli.console import progress, showing, stderr

    run, tasks = open_run(config, workspace, clips_dir, labels, label_conditioned, retry_failed)
    if dry_run:
        return estimate(run, tasks)
    with progress(len(tasks), f"reason ({run.reasoner.name})") as advance:
        run.observe = lambda clip, outcome: advance()
        if showing():
            run.say = lambda line: stderr.print(line, markup=False, highlight=False, soft_wrap=True)
        run.run(tasks)
    if embed:
        embed_priors(config, workspace, run)
    return run.summary


def embed_priors(config: Config, workspace: Workspace, run: ReasonRun) -> None:
    """Turn the store's traces into prior feature sets (those of clips answered in this run made
    again), when it holds any."""
    from mercli.console import progress
    from mercli.priors import embed_traces

    store = run.store
    if not store.clip_ids():
        return
    with progress(len(store.clip_ids()), "embed priors") as advance:
        prior_sets = embed_traces(config, workspace.features, store, refresh=run.summary.done, advance=advance)
    run.summary.priors = [{"name": s.name, "modality": s.manifest.modality, "dim": s.manifest.dim,
                           "path": str(s.path)} for s in prior_sets]


def estimate(run: ReasonRun, tasks: Sequence[ClipTask]) -> ReasonSummary:
    """The plan of a run, calling nothing: one call per clip to ask, its estimated tokens and cost."""
    summary = run.summary
    summary.dry_run = True
    for task in tasks:
        try:
            usage = run.reasoner.estimate_usage(run.request(task.clip))
        except DataError as problem:
            summary.skipped.append({"clip": task.clip.clip_id, "reason": str(problem)})
            continue
        summary.calls += 1
        summary.usage = summary.usage + usage
    summary.cost_usd = run.price.of(summary.usage)
    return summary


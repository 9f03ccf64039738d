"""The extract stage: every clip of a folder through every selected encoder, into feature sets.

One clip is decoded once and then passed to each encoder whose feature set does not already hold a
valid result for it, so a re-run only does what is missing. Clips go in groups of
``extract.batch_size``: each encoder takes the clips of a group that need it at once. A clip that cannot be decoded, or an
encoder that fails on it, is recorded as a failure and the batch goes on; a modality the clip lacks
(no audio track, no face, no speech) is recorded as absent, which is a result, not a failure.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

import mercli.plugins as plugins
import mercli.resources as resources
from mercli.chain import ClipEncoder, EncodedClip, clip_failure, never
from mercli.clips import Clip
from mercli.config import Config
from mercli.contracts import DecodedClip, Encoder, Transcriber
from mercli.errors import ConfigError, writing
from mercli.failures import FailureLog
from mercli.features import FeatureSet, Manifest
from mercli.transcripts import TranscriptStore
from mercli.workers import WorkerDied, noticing_ctrl_c, run_in_workers, stopping
from mercli.workspace import Workspace


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``: clips are split by a hash of their id, so machines
    that list the same folder agree on the split without talking to each other."""

    index: int
    count: int

    @classmethod
    def parse(cls, text: str) -> "Shard":
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ConfigError(f"--shard '{text}': expected K/N, for example 2/8") from None
        if not 1 <= index <= count:
            raise ConfigError(f"--shard '{text}': K must be between 1 and N")
        return cls(index, count)

    def holds(self, clip_id: str) -> bool:
        digest = hashlib.sha1(clip_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") % self.count == self.index - 1


@dataclass
class ClipOutcome:
    """What happened to one clip: ``done`` (something was computed), ``skipped`` (all was already
    stored) or ``failed`` (decoding or at least one encoder failed; the rest is still stored)."""

    clip_id: str
    status: Literal["done", "skipped", "failed"]
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)
    absent: dict[str, str] = field(default_factory=dict)
    partial: str | None = None


@dataclass(frozen=True)
class ExtractJob:
    """Everything a worker process needs to rebuild the encoders and open the feature sets."""

    config: Config
    features_root: Path
    transcripts_root: Path
    manifests: dict[str, Manifest]  # encoder name -> manifest of its feature set
    label_transcripts: dict[str, str]
    transcriber: str | None
    in_flight: Path | None = None  # where the worker processes note the clips they are extracting (InFlight)


#: Worker deaths one run survives (see :func:`in_workers`); past them something other than one clip
#: is killing the workers (too little memory for this many, say), and the run stops.
WORKER_DEATHS_SURVIVED = 3
LOST_REASON = ("the worker process extracting it died (killed, out of memory, or a crash in a model library); any "
               "clip in progress then may have caused it, and the next run tries it again")


class InFlight:
    """The clips each worker process of one run is extracting, a file per process in a temporary
    folder of the run's own (the workers are on this machine): after a worker dies, what it (and
    the others, which the pool stops with it) had in progress. Plain writes, not atomic ones: a
    torn note is skipped, and a note that cannot be written (a full disk) is left out; its clips
    then go back with the groups left instead of being recorded as lost."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    @contextlib.contextmanager
    def holding(self, group: list[Clip]) -> Iterator[None]:
        """Note ``group`` as in progress in this process while the block runs."""
        record = self.folder / f"{os.getpid()}.json"
        with contextlib.suppress(OSError):
            record.write_text(json.dumps([[clip.clip_id, str(clip.path)] for clip in group]), encoding="utf-8")
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                record.unlink(missing_ok=True)

    def taken(self) -> list[tuple[str, str]]:
        """``(clip id, path)`` of every clip noted in progress; the notes are removed."""
        lost = []
        for record in sorted(self.folder.glob("*.json")):
            with contextlib.suppress(OSError, ValueError, TypeError):
                lost.extend((str(clip_id), str(path)) for clip_id, path in json.loads(record.read_text("utf-8")))
            record.unlink(missing_ok=True)
        return lost


def select_encoders(config: Config, names: list[str] | None = None) -> list[Encoder]:
    """Build the encoders named in ``names`` (default: ``extract.encoders``), each once."""
    chosen = names or config.extract.encoders
    if not chosen:
        raise ConfigError("no encoders selected (extract.encoders is empty)")
    duplicates = {n for n in chosen if chosen.count(n) > 1}
    if duplicates:
        raise ConfigError(f"encoder(s) selected twice: {', '.join(sorted(duplicates))}")
    return [plugins.build("encoders", name, config) for name in chosen]


def transcriber_identity(transcriber: Transcriber) -> str:
    """Names the recogniser, its weights and its settings: a transcript made under another
    identity is made again, and text features built on it go to another feature set."""
    settings = json.dumps(transcriber.settings, sort_keys=True, default=str)
    return f"{transcriber.name}:{transcriber.weights_identity()}:{settings}"


def manifest_for(encoder: Encoder, config: Config, transcriber: Transcriber | None) -> Manifest:
    """The identity of what ``encoder`` writes under this configuration: its settings plus the
    extraction settings its output depends on."""
    provenance = plugins.get("encoders", encoder.name).provenance
    settings = dict(encoder.settings)
    if encoder.modality == "visual":
        settings["fps"] = config.extract.fps
    if encoder.modality == "audio":
        settings["sample_rate"] = config.extract.sample_rate
    if encoder.modality == "text" and transcriber is not None:
        settings["transcriber"] = transcriber_identity(transcriber)
    return Manifest(
        encoder=encoder.name,
        encoder_version=encoder.version,
        package=provenance.package,
        package_version=provenance.package_version,
        weights=encoder.weights_identity(),
        settings=settings,
        modality=encoder.modality,
        dim=encoder.dim,
        level=encoder.level,
    )


@dataclass
class EncoderSetup:
    """The selected encoders, built; the recogniser their text needs (``None`` when no text encoder
    is selected); and the manifest of each encoder's feature set under this configuration."""

    encoders: list[Encoder]
    transcriber: Transcriber | None
    manifests: dict[str, Manifest]


def build_encoders(config: Config, encoder_names: list[str] | None = None) -> EncoderSetup:
    """Build the encoders named in ``encoder_names`` (default: ``extract.encoders``) and learn the
    identity of what each writes."""
    encoders = select_encoders(config, encoder_names)
    needs_text = any(e.modality == "text" for e in encoders)
    transcriber_name = config.extract.transcriber if needs_text else None
    transcriber = plugins.build("transcribers", transcriber_name, config) if transcriber_name else None
    return EncoderSetup(encoders, transcriber, {e.name: manifest_for(e, config, transcriber) for e in encoders})


def prepare(config: Config, features_root: Path, transcripts_root: Path, label_transcripts: dict[str, str],
            encoder_names: list[str] | None = None) -> ExtractJob:
    """Build the encoders once to learn their identities, and create their feature sets."""
    setup = build_encoders(config, encoder_names)
    manifests = setup.manifests
    transcriber_name = setup.transcriber.name if setup.transcriber else None
    with writing(features_root):
        for manifest in manifests.values():
            FeatureSet.open(features_root, manifest)
    return ExtractJob(config, features_root, transcripts_root, manifests, label_transcripts, transcriber_name)


class ClipExtractor:
    """The extract stage's cache around :class:`~mercli.chain.ClipEncoder`: a clip goes only to the
    encoders whose feature set holds no valid result for it, and what they give is stored. Clips
    come in groups of ``extract.batch_size``, each group through each encoder at once."""

    def __init__(self, job: ExtractJob, interrupted: Callable[[], bool] = never) -> None:
        self.job = job
        self.sets = {name: FeatureSet.open(job.features_root, m) for name, m in job.manifests.items()}
        self.transcriber = (
            plugins.build("transcribers", job.transcriber, job.config) if job.transcriber else None
        )
        self.transcripts = TranscriptStore(job.transcripts_root)
        self.failures = FailureLog(job.features_root)
        encoders = select_encoders(job.config, list(job.manifests))
        self.modalities = {e.name: e.modality for e in encoders}
        self.encode = ClipEncoder(encoders, job.manifests, job.config.extract, self._transcript, job.transcriber,
                                  interrupted)

    def __call__(self, group: list[Clip]) -> list[ClipOutcome]:
        """One group's outcomes, decoded here and now (a worker process's item), noted in progress
        meanwhile."""
        with InFlight(self.job.in_flight).holding(group) if self.job.in_flight else contextlib.nullcontext():
            return next(self.outcomes([group], ahead=0))

    def outcomes(self, groups: Iterable[list[Clip]], ahead: int = 1) -> Iterator[list[ClipOutcome]]:
        """Each group's outcomes in order, with ``ahead`` groups decoded ahead in a background thread."""
        requests = ([(clip, self._pending(clip)) for clip in group] for group in groups)
        for group in self.encode.groups(requests, ahead):
            yield [self._outcome(clip, only, encoded) for (clip, only), encoded in group]

    def _pending(self, clip: Clip) -> list[str]:
        """The encoders whose feature set holds no valid result for ``clip``."""
        return [name for name, store in self.sets.items() if store.status(clip.clip_id) is None]

    def _outcome(self, clip: Clip, pending: list[str], encoded: "EncodedClip | Exception") -> ClipOutcome:
        if not pending:
            return ClipOutcome(clip.clip_id, "skipped")
        if isinstance(encoded, Exception):  # whatever goes wrong with one clip, the batch goes on
            reason = clip_failure(encoded)
            with writing(self.failures.folder, midway=True):
                self.failures.record(clip.clip_id, reason, path=str(clip.path), stage="extract")
            return ClipOutcome(clip.clip_id, "failed", failures=[reason])
        return self._store(clip, encoded)

    def _store(self, clip: Clip, encoded: EncodedClip) -> ClipOutcome:
        """Write each encoder's result; a result the store refuses is that encoder's failure."""
        failures = dict(encoded.failures)
        for name, features in encoded.features.items():
            store = self.sets[name]
            try:
                with writing(store.path, midway=True):
                    store.write(clip.clip_id, features)
            except Exception as error:
                failures[f"encoder {name}"] = clip_failure(error)
        outcome = ClipOutcome(clip.clip_id, "failed" if failures else "done", seconds=encoded.duration,
                              failures=[f"{who}: {why}" for who, why in failures.items()],
                              absent=encoded.absent(self.modalities), partial=encoded.partial)
        with writing(self.failures.folder, midway=True):
            if failures:
                self.failures.record(clip.clip_id, "; ".join(outcome.failures), path=str(clip.path), stage="encode")
            else:
                self.failures.clear(clip.clip_id)
        return outcome

    def _transcript(self, clip: DecodedClip) -> str | None:
        """The labels file's transcript, else a stored one, else speech recognition (stored)."""
        if clip.clip_id in self.job.label_transcripts:
            return self.job.label_transcripts[clip.clip_id]
        if self.transcriber is None or "audio" in clip.absent:
            return None
        source = transcriber_identity(self.transcriber)
        stored = self.transcripts.read(clip.clip_id, source)
        if stored is None:
            stored = self.transcriber.transcribe(clip)
            with writing(self.job.transcripts_root, midway=True):
                self.transcripts.write(clip.clip_id, source, stored)
        return stored


def start_extractor(job: ExtractJob, threads: int) -> ClipExtractor:
    """A worker process's extractor, its encoders limited to ``threads`` threads each."""
    import torch  # CTranslate2 models take their thread count from torch's (whisper_models.load)

    torch.set_num_threads(threads)
    return ClipExtractor(job, interrupted=stopping)


def stored_everywhere(job: ExtractJob, clips: list[Clip]) -> set[str]:
    """The ids of the clips that every feature set of ``job`` already holds a valid result for."""
    sets = [FeatureSet.open(job.features_root, manifest) for manifest in job.manifests.values()]
    return {c.clip_id for c in clips if all(s.status(c.clip_id) is not None for s in sets)}


def worker_count(requested: int, groups: int) -> int:
    """Processes for ``groups`` groups of clips to do: ``requested``, or with 0
    :func:`~mercli.resources.auto_workers`; never more than there are groups."""
    return min(requested or resources.auto_workers(groups), groups)


def grouped(clips: list[Clip], size: int) -> list[list[Clip]]:
    """``clips`` in order, in groups of ``size`` (the last may be smaller)."""
    return [clips[start:start + size] for start in range(0, len(clips), size)]


def groups_ahead(size: int) -> int:
    """Groups decoded ahead in this process while the encoders work: one when groups hold several
    clips; none for a clip at a time, which runs as it always did (decoded, then encoded)."""
    return int(size > 1)


def run(job: ExtractJob, clips: list[Clip], workers: int = 1) -> Iterator[ClipOutcome]:
    """Extract ``clips``, yielding each outcome as its group completes: in this process when
    ``workers`` is 1 (the next group decoded meanwhile: :func:`groups_ahead`), else in that many
    worker processes, each taking a group at a time."""
    size = job.config.extract.batch_size
    groups = grouped(clips, size)
    if workers == 1:
        with noticing_ctrl_c() as pressed:
            for outcomes in ClipExtractor(job, interrupted=pressed).outcomes(groups, groups_ahead(size)):
                if pressed():
                    raise KeyboardInterrupt
                yield from outcomes
    elif clips:
        yield from in_workers(job, groups, workers)


def in_workers(job: ExtractJob, groups: list[list[Clip]], workers: int) -> Iterator[ClipOutcome]:
    """The groups' outcomes from ``workers`` processes. A worker that dies costs the clips then in
    progress, not the run: they are recorded as failed (the next run tries them again) and fresh
    workers go on with the groups left, up to :data:`WORKER_DEATHS_SURVIVED` deaths."""
    try:
        folder: Path | None = Path(tempfile.mkdtemp(prefix="mer-in-flight-"))
    except OSError:  # no temporary folder: a death then ends the run, as nothing says what it cost
        folder = None
    job = dataclasses.replace(job, in_flight=folder)
    arguments = (job, resources.threads_per_worker(workers))
    try:
        for deaths in itertools.count():
            finished: set[str] = set()
            try:
                for outcomes in run_in_workers(start_extractor, arguments, groups, workers):
                    finished.update(outcome.clip_id for outcome in outcomes)
                    yield from outcomes
                return
            except WorkerDied:
                lost = InFlight(folder).taken() if folder else []
                if deaths == WORKER_DEATHS_SURVIVED or not lost:
                    raise
            yield from lost_outcomes(job, lost)
            gone = finished | {clip_id for clip_id, _ in lost}
            groups = [left for group in groups if (left := [clip for clip in group if clip.clip_id not in gone])]
    finally:
        if folder:
            shutil.rmtree(folder, ignore_errors=True)


def lost_outcomes(job: ExtractJob, lost: list[tuple[str, str]]) -> Iterator[ClipOutcome]:
    """The clips a dead worker took with it, recorded as failed."""
    failures = FailureLog(job.features_root)
    for clip_id, path in lost:
        with writing(failures.folder, midway=True):
            failures.record(clip_id, LOST_REASON, path=path, stage="extract")
        yield ClipOutcome(clip_id, "failed", failures=[LOST_REASON])


@dataclass
class ExtractSummary:
    """The outcome of one ``mer extract``: what ``--json`` prints and the summary table shows."""

    clips: int
    workers: int = 1
    done: int = 0
    skipped: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    absent: dict[str, dict[str, int]] = field(default_factory=dict)  # modality -> reason -> clips
    partial: list[dict[str, str]] = field(default_factory=list)
    media_seconds: float = 0.0
    wall_seconds: float = 0.0
    feature_sets: list[dict[str, object]] = field(default_factory=list)

    def add(self, outcome: ClipOutcome) -> None:
        if outcome.status == "skipped":
            self.skipped += 1
        elif outcome.status == "failed":
            self.failed.append({"clip": outcome.clip_id, "reason": "; ".join(outcome.failures)})
        else:
            self.done += 1
        self.media_seconds += outcome.seconds
        if outcome.partial:
            self.partial.append({"clip": outcome.clip_id, "reason": outcome.partial})
        for modality, reason in outcome.absent.items():
            counts = self.absent.setdefault(modality, {})
            counts[reason] = counts.get(reason, 0) + 1

    def to_json(self) -> dict[str, object]:
        return {
            "clips": self.clips,
            "workers": self.workers,
            "done": self.done,
            "skipped": self.skipped,
            "failed": self.failed,
            "absent": self.absent,
            "partial": self.partial,
            "feature_sets": self.feature_sets,
        }


def extract_clips(
    clips: list[Clip],
    config: Config,
    workspace: Workspace,
    label_transcripts: dict[str, str],
    encoder_names: list[str] | None = None,
    workers: int = 1,
    observe: Callable[[ClipOutcome], None] = lambda outcome: None,
) -> ExtractSummary:
    """Run the extract stage over ``clips``, calling ``observe`` after each clip (progress)."""
    # torch and CTranslate2 each bring an OpenMP runtime whose idle threads spin by default; on a
    # few cores the two pools then starve each other (measured: up to 30x slower encoders). Set
    # before either is imported, and inherited by the worker processes.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    job = prepare(config, workspace.features, workspace.transcripts, label_transcripts, encoder_names)
    stored = stored_everywhere(job, clips)
    to_do = [clip for clip in clips if clip.clip_id not in stored]
    groups = grouped(to_do, config.extract.batch_size)
    summary = ExtractSummary(clips=len(clips), workers=worker_count(workers, len(groups)))
    started = time.perf_counter()
    skipped = (ClipOutcome(clip.clip_id, "skipped") for clip in clips if clip.clip_id in stored)
    for outcome in itertools.chain(skipped, run(job, to_do, summary.workers)):  # skipped: no worker started
        summary.add(outcome)
        observe(outcome)
    summary.wall_seconds = time.perf_counter() - started
    summary.feature_sets = [
        {"name": s.name, "modality": m.modality, "dim": m.dim, "level": m.level, "path": str(s.path)}
        for m in job.manifests.values()
        for s in [FeatureSet.open(workspace.features, m)]
    ]
    return summary


def extract_folder(config: Config, workspace: Workspace, clips_dir: Path, labels: Path | None,
                   shard: Shard | None) -> ExtractSummary:
    """``mer extract``: discover the clips, read the labels' transcripts, extract with a progress bar.
    Folder entries that cannot be clips are reported as failed (every shard reports them)."""
    from mercli.clips import scan
    from mercli.console import progress
    from mercli.labels import read_labels

    found = scan(clips_dir)
    clips = [c for c in found.clips if shard is None or shard.holds(c.clip_id)]
    transcripts = {r.clip_id: r.transcript for r in read_labels(labels, config) if r.transcript} if labels else {}
    with progress(len(clips), "extract") as advance:
        summary = extract_clips(clips, config, workspace, transcripts, workers=config.extract.workers,
                                observe=lambda outcome: advance())
    summary.clips += len(found.refused)
    summary.failed[:0] = [entry.to_json() for entry in found.refused]
    return summary

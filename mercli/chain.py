"""Clips through the encoders, as plain functions on values: one clip, or a group of clips.

A clip is decoded once, given a transcript when a text encoder needs one, and passed to every
selected encoder; the result is each encoder's features in the form a feature set stores them.
A group of clips goes to each encoder in one ``encode_batch`` call (a model on a GPU gains from
seeing several clips at once), while the next group is decoded in a background thread; what one
clip does wrong is still that clip's failure alone. Nothing here reads or writes a store: the
extract stage wraps this step with the feature store as its cache (:mod:`mercli.extract`), and
``mer predict`` runs it in memory (:mod:`mercli.predict`).
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass, field
from typing import Callable, Collection, Iterable, Iterator, Sequence

from mercli.clips import Clip
from mercli.contracts import DecodedClip, Encoder, Features
from mercli.errors import MerError, UnwritableError
from mercli.features import Manifest, stored_form
from mercli.settings import ExtractSettings
from mercli.vocabulary import one_line

#: How a text encoder's clip gets its words: from a labels file, a transcript store or a recogniser
#: (``None`` when there is no way to know them).
TranscriptSource = Callable[[DecodedClip], "str | None"]
#: A clip and the names of the encoders it needs (``None``: all of them; none named: nothing to do).
Request = tuple[Clip, "Collection[str] | None"]


def never() -> bool:
    return False


@dataclass
class EncodedClip:
    """One clip's features by encoder name (values as a feature set holds them, or an absence
    with its reason), and why any encoder has none (``failures``, by encoder name)."""

    clip_id: str
    duration: float = 0.0
    partial: str | None = None
    transcript: str | None = None
    features: dict[str, Features] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)

    def absent(self, modalities: dict[str, str]) -> dict[str, str]:
        """Modality -> the first reason an encoder of it gave for finding nothing."""
        found: dict[str, str] = {}
        for name, features in self.features.items():
            if features.absent:
                found.setdefault(modalities[name], features.absent)
        return found


class ClipEncoder:
    """The loaded encoders of one process, and the decoding settings their manifests record.
    ``interrupted`` says whether Ctrl-C was noticed, for the moment an error may be an interrupt
    that a library turned into an ordinary error (see :func:`mercli.workers.noticing_ctrl_c`)."""

    def __init__(self, encoders: list[Encoder], manifests: dict[str, Manifest], decoding: ExtractSettings,
                 transcript: TranscriptSource, transcriber: str | None,
                 interrupted: Callable[[], bool] = never) -> None:
        self.encoders = encoders
        self.manifests = manifests
        self.decoding = decoding
        self.transcript = transcript
        self.transcriber = transcriber
        self.interrupted = interrupted

    def __call__(self, clip: Clip, only: Collection[str] | None = None) -> EncodedClip:
        """Features of ``clip`` from every encoder (or those named in ``only``). A clip that cannot
        be decoded raises; whatever one encoder does wrong is that encoder's failure alone."""
        return self.encode_decoded([(self.decode(clip, only), only)])[0]

    def groups(self, requests: Iterable[list[Request]], ahead: int = 1
               ) -> Iterator[list[tuple[Request, "EncodedClip | Exception"]]]:
        """Each group of ``requests`` encoded, in order: per request its features, or the error
        that kept the clip from being decoded. With ``ahead`` > 0 a background thread decodes the
        next groups (that many at most, held in memory) while the encoders work on this one."""
        for group in decoded_ahead(requests, self._decode_request, ahead):
            done = iter(self.encode_decoded([(d, only) for (_, only), d in group if not isinstance(d, Exception)]))
            yield [(request, d if isinstance(d, Exception) else next(done)) for request, d in group]

    def decode(self, clip: Clip, only: Collection[str] | None = None) -> DecodedClip:
        """``clip`` decoded with just the streams the encoders named in ``only`` read."""
        import mercli.media as media

        modalities = {e.modality for e in self._pending(only)}
        return media.decode(clip.path, clip.clip_id, fps=self.decoding.fps, sample_rate=self.decoding.sample_rate,
                            video="visual" in modalities, audio=bool(modalities & {"audio", "text"}),
                            max_seconds=self.decoding.max_seconds or None)

    def encode_decoded(self, group: Sequence[tuple[DecodedClip, Collection[str] | None]]) -> list[EncodedClip]:
        """Features of decoded clips, each from the encoders it needs: the transcripts first, then
        each encoder once over every clip of ``group`` that needs it (:func:`encode_group`)."""
        results = [EncodedClip(d.clip_id, d.duration, d.partial) for d, _ in group]
        needs = [{e.name for e in self._pending(only)} for _, only in group]
        text = {e.name for e in self.encoders if e.modality == "text"}
        for (decoded, _), result, names in zip(group, results, needs):
            if names & text:
                try:
                    decoded.transcript = result.transcript = self.transcript(decoded)
                except Exception as error:  # costs this clip its text features, nothing else
                    result.failures[f"transcriber {self.transcriber}"] = clip_failure(error)
                    names -= text
        for encoder in self.encoders:
            members = [number for number, names in enumerate(needs) if encoder.name in names]
            clips = [group[number][0] for number in members]
            for number, outcome in zip(members, encode_group(encoder, clips, self.manifests[encoder.name],
                                                             self.interrupted)):
                if isinstance(outcome, Exception):
                    results[number].failures[f"encoder {encoder.name}"] = clip_failure(outcome)
                else:
                    results[number].features[encoder.name] = outcome
        return results

    def _pending(self, only: Collection[str] | None) -> list[Encoder]:
        return [e for e in self.encoders if only is None or e.name in only]

    def _decode_request(self, request: Request) -> DecodedClip:
        """The request's clip decoded; a request for no encoder gets an empty clip (nothing to decode)."""
        clip, only = request
        return self.decode(clip, only) if self._pending(only) else DecodedClip(clip.clip_id, clip.path, 0.0)


def decoded_ahead(requests: Iterable[list[Request]], decode: Callable[[Request], DecodedClip],
                  ahead: int) -> Iterator[list[tuple[Request, "DecodedClip | Exception"]]]:
    """Each group of ``requests`` with its clips decoded (or why one could not be), in order. With
    ``ahead`` > 0 a background thread decodes up to that many groups before they are asked for;
    when the caller stops (Ctrl-C, an error, the last group) the thread is stopped and waited for,
    so that it never outlives the run."""
    decoded = (decode_group(group, decode) for group in requests)
    if ahead == 0:
        yield from decoded
        return
    ready: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()
    thread = threading.Thread(target=_decode_into, args=(decoded, ready, stop), name="mer-decode", daemon=True)
    thread.start()
    try:
        while (item := ready.get()) is not _END:
            if isinstance(item, _Raised):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


def decode_group(group: list[Request], decode: Callable[[Request], DecodedClip]
                 ) -> list[tuple[Request, "DecodedClip | Exception"]]:
    """The clips of one group decoded; one that cannot be decoded is that clip's failure alone."""
    done: list[tuple[Request, DecodedClip | Exception]] = []
    for request in group:
        try:
            done.append((request, decode(request)))
        except Exception as error:
            done.append((request, error))
    return done


@dataclass
class _Raised:
    """What ended the decoding thread other than the last group (the caller raises it)."""

    error: BaseException


_END = object()


def _decode_into(groups: Iterator[object], ready: queue.Queue, stop: threading.Event) -> None:
    """The decoding thread: each group into ``ready`` as it is done, until ``stop`` is set."""
    try:
        for group in groups:
            if not _offer(ready, group, stop):
                return
        _offer(ready, _END, stop)
    except BaseException as error:  # raised again in the caller's thread
        _offer(ready, _Raised(error), stop)


def _offer(ready: queue.Queue, item: object, stop: threading.Event) -> bool:
    """Put ``item`` into ``ready`` once there is room, unless the caller stopped meanwhile."""
    while not stop.is_set():
        try:
            ready.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def encode_group(encoder: Encoder, clips: Sequence[DecodedClip], manifest: Manifest,
                 interrupted: Callable[[], bool] = never) -> "list[Features | Exception]":
    """One encoder's features of each of ``clips`` as its feature set would hold them, or the error
    that is that clip's failure. The clips that have the encoder's modality go to it together
    (``encode_batch``); should that raise, one by one, so that a clip the model cannot take costs
    only its own result. Output that does not match what the encoder declared (a wrong shape,
    NaN) is that clip's failure."""
    reasons = [absence(encoder, clip) for clip in clips]
    measured = iter(_measure(encoder, [c for c, reason in zip(clips, reasons) if reason is None], interrupted))
    results: list[Features | Exception] = []
    for clip, reason in zip(clips, reasons):
        try:
            features = Features(values=None, absent=reason) if reason else next(measured)
            if isinstance(features, Exception):
                raise features
            check_shape(encoder, features)
            results.append(as_stored(features, manifest, f"clip {clip.clip_id}"))
        except Exception as error:
            results.append(error)
    return results


def _measure(encoder: Encoder, clips: list[DecodedClip], interrupted: Callable[[], bool]
             ) -> "list[Features | Exception]":
    """``encode_batch`` over several clips, ``encode`` over one; a batch that raises (or gives a
    result per clip it was not asked for) is done again clip by clip, unless the error was Ctrl-C
    that a library turned into an ordinary one."""
    if len(clips) > 1:
        try:
            made = list(encoder.encode_batch(clips))
            if len(made) == len(clips):
                return made
        except Exception:
            if interrupted():
                raise KeyboardInterrupt from None
    return [_attempt(encoder, clip) for clip in clips]


def _attempt(encoder: Encoder, clip: DecodedClip) -> "Features | Exception":
    try:
        return encoder.encode(clip)
    except Exception as error:
        return error


def as_stored(features: Features, manifest: Manifest, where: str) -> Features:
    """``features`` exactly as the set of ``manifest`` would give them back once stored."""
    if features.values is None:
        return Features(values=None, absent=one_line(features.absent or ""))
    return stored_form(features, manifest, where)


def clip_failure(error: Exception) -> str:
    """How a clip's failure is worded. A workspace that cannot be written is no clip's failure:
    it is raised again, to stop the run."""
    if isinstance(error, UnwritableError):
        raise error
    return str(error) if isinstance(error, MerError) else f"{type(error).__name__}: {error}"


def absence(encoder: Encoder, clip: DecodedClip) -> str | None:
    """Why ``clip`` has nothing for this encoder's modality, before the encoder even looks."""
    if encoder.modality == "text":
        if clip.transcript is None:
            return clip.absent.get("audio", "no transcript")
        return "no speech" if not clip.transcript.strip() else None
    return clip.absent.get(encoder.modality)


def check_shape(encoder: Encoder, features: Features) -> None:
    """Refuse output that does not match what the encoder declared, before it reaches the store."""
    if (features.values is None) == (not features.absent):
        raise ValueError("returned values and a reason for their absence" if features.absent
                         else "returned no values and no reason for their absence")
    if features.values is None:
        return
    expected = 1 if encoder.level == "utterance" else 2
    shape = tuple(features.values.shape)
    if len(shape) != expected or shape[-1] != encoder.dim:
        raise ValueError(f"returned shape {shape}, declared {encoder.level}-level dim {encoder.dim}")

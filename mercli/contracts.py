"""The component types a plug-in provides, and the data that passes between them and the core.

Each component is a class with a few declarative class attributes (its name, version, options)
and one method that does the work. Plug-ins register the class, not an instance: the core builds
instances with the options resolved from configuration, so that nothing heavy is loaded until a
stage needs it. Keep this module free of heavy imports: ``mer --help`` imports it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, NoReturn, Sequence

from mercli.errors import ConfigError
from mercli.vocabulary import Level, Modality

if TYPE_CHECKING:
    import numpy as np
    import torch



def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


@dataclass(frozen=True)
class Range:
    """The numbers a numeric option admits, for example ``Range(0, low_open=True)`` for "> 0".

    Bounds are inclusive unless marked open. NaN is never admitted, nor are infinities unless
    ``infinite`` says that one means something to the option.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    infinite: bool = False

    def admits(self, value: float) -> bool:
        if isinstance(value, float) and (math.isnan(value) or (math.isinf(value) and not self.infinite)):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.low is None and self.high is None:
            return ""
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
                f"{')' if self.high_open else ']'}")


#: Ranges that many options share.
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0, 1, high_open=True)  # [0, 1): a probability that must leave something
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # (0, 1)


_TYPE_NAMES = {list: "a list", dict: "a table", bool: "true or false", int: "an integer", float: "a number",
               str: "a string"}


def _type_name(kind: type) -> str:
    return _TYPE_NAMES.get(kind, kind.__name__)


def _is_kind(value: Any, kind: type) -> bool:
    """``isinstance`` where ``true`` is not a number and an integer is a valid float."""
    if isinstance(value, bool):
        return kind is bool
    return isinstance(value, kind) or (kind is float and isinstance(value, int))


def _item_kind(default: Any) -> type | None:
    """The type every item of a list or table option must have: the one type its default's items share."""
    items = default.values() if isinstance(default, dict) else default if isinstance(default, list) else ()
    kinds = {type(item) for item in items}
    return kinds.pop() if len(kinds) == 1 else None


@dataclass(frozen=True)
class Option:
    """One configurable setting of the core or of a component.

    ``kind`` is the Python type the value must have once parsed (``int``, ``float``, ``str``,
    ``bool``, ``list`` or ``dict``); ``None`` is accepted where the default is ``None``. A numeric
    option declares the ``range`` it admits (floats are always finite unless the range allows
    infinities); an option with a closed set of values lists them in ``choices``. The core checks
    every value against this declaration when the configuration loads, so that a value out of range
    is a usage error before any work starts, and again when a component is built.
    """

    name: str
    kind: type
    default: Any
    help: str
    range: Range | None = None
    choices: tuple[Any, ...] | None = None

    def problem(self, value: Any) -> str | None:
        """Why ``value`` is not a valid value of this option (one line naming it), or ``None``."""
        if value is None and self.default is None:
            return None
        if not _is_kind(value, self.kind):
            return f"'{self.name}' must be {_type_name(self.kind)}, got {value!r}"
        out_of_range = self.kind in (int, float) and not (self.range or Range()).admits(value)
        if out_of_range or (self.choices is not None and value not in self.choices):
            return f"'{self.name}' must be {self.allowed()}, got {value!r}"
        return self._item_problem(value)

    def allowed(self) -> str:
        """The values this option admits, in words (``a finite number in (0, 120]``, ``one of a, b``)."""
        if self.choices is not None:
            return f"one of {', '.join(map(str, self.choices))}"
        finite = self.kind is float and not (self.range is not None and self.range.infinite)
        return f"{'a finite number' if finite else _type_name(self.kind)} {self.range or ''}".rstrip()

    def _item_problem(self, value: Any) -> str | None:
        """Items of a list or table must have the type of the default's items; a list of names
        holds no empty name (``--encoders a,,b``)."""
        item_kind = _item_kind(self.default)
        items = list(value.values() if isinstance(value, dict) else value if isinstance(value, list) else ())
        wrong = next((item for item in items if item_kind is not None and not _is_kind(item, item_kind)), None)
        if wrong is not None:
            return f"every item of '{self.name}' must be {_type_name(item_kind)}, got {wrong!r}"
        if isinstance(value, list) and any(isinstance(item, str) and not item.strip() for item in items):
            return f"'{self.name}' holds an empty name: {value!r}"
        return None


@dataclass(frozen=True)
class Check:
    """The outcome of one ``mer doctor`` check; ``required`` checks that fail make it exit 1."""

    name: str
    ok: bool
    detail: str
    required: bool = True


class Component:
    """Common base of encoders, reasoners, losses and datasets.

    Subclasses set ``name`` (unique within their stage), ``version`` and ``description``, and
    declare their settings in ``options``; the core validates ``mer.toml`` against them and passes
    the resolved values to ``__init__`` as keyword arguments, which checks them again (a component
    built directly, in a test or a script, gets the same ranges).
    """

    name: ClassVar[str]
    version: ClassVar[str] = "0"
    description: ClassVar[str] = ""
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, **settings: Any) -> None:
        known = {option.name: option.default for option in self.options}
        unknown = sorted(set(settings) - set(known))
        if unknown:
            raise TypeError(f"{self.name}: unknown option(s) {', '.join(unknown)}")
        self.settings: dict[str, Any] = {**known, **settings}
        problem = next(filter(None, (option.problem(self.settings[option.name]) for option in self.options)), None)
        if problem:
            self.reject(problem)

    def reject(self, problem: str) -> NoReturn:
        """Refuse these settings: a usage error naming the component (for rules between settings
        that their declared ranges cannot express)."""
        raise ConfigError(f"{self.name}: {problem}")

    def checks(self) -> list[Check]:
        """What ``mer doctor`` should verify for this component (model files, API keys)."""
        return []


# --- encoders ---------------------------------------------------------------------------------


@dataclass
class DecodedClip:
    """One clip as the encoders see it: sampled frames, the audio track and the transcript.

    ``frames`` is ``(T, H, W, 3)`` uint8 RGB at the times in ``frame_times`` (seconds); ``audio``
    is float32 mono at ``sample_rate``. A clip without video or without an audio track has
    ``None`` there, and ``absent`` says why (``{"audio": "no audio track"}``). A damaged file keeps
    what could be decoded, and ``partial`` says what was lost. ``derived`` holds
    intermediate results that several encoders of one family share for this clip (a face track, say),
    keyed by whoever computed them, so that the work is done once per clip.
    """

    clip_id: str
    path: Path
    duration: float
    frames: "np.ndarray | None" = None
    frame_times: "np.ndarray | None" = None
    audio: "np.ndarray | None" = None
    sample_rate: int = 16000
    transcript: str | None = None
    absent: dict[str, str] = field(default_factory=dict)
    partial: str | None = None
    derived: dict[str, Any] = field(default_factory=dict)


@dataclass
class Features:
    """What an encoder returns for one clip.

    ``values`` is ``(dim,)`` for utterance-level encoders and ``(T, dim)`` for frame-level ones,
    where ``mask`` (``(T,)`` bool) marks the frames that hold a real measurement. When the modality
    is missing from the clip (no face in any frame, no speech) ``values`` is ``None`` and ``absent``
    gives the reason: that is a result, not a failure.
    """

    values: "np.ndarray | None"
    mask: "np.ndarray | None" = None
    absent: str | None = None


class Encoder(Component):
    """Turns a decoded clip into the features of one modality.

    ``dim`` is the output width; an encoder whose width depends on its settings (a model path)
    overrides it as a property. ``level`` is declared on the class (what ``mer plugins`` shows); an
    encoder whose level is one of its settings declares its default there, names that option in
    ``level_option`` (so ``mer plugins`` says the level is a setting) and sets the instance's own
    in ``__init__``, since manifests and shape checks read it from the instance.
    ``weights_identity`` names the exact weights (a file hash, a model id and revision) so that the
    feature store never mixes features from two models.
    """

    modality: ClassVar[Modality]
    level: Level
    level_option: ClassVar[str | None] = None
    dim: int

    def weights_identity(self) -> str:
        return f"{self.name}-{self.version}"

    def encode(self, clip: DecodedClip) -> Features:
        raise NotImplementedError

    def encode_batch(self, clips: Sequence[DecodedClip]) -> list[Features]:
        """The features of each of ``clips``, in order. An encoder whose model gains from seeing
        several clips at once (a GPU) overrides it; the result must equal ``encode`` per clip."""
        return [self.encode(clip) for clip in clips]


class Transcriber(Component):
    """Speech recognition for clips whose labels file carries no transcript."""

    def weights_identity(self) -> str:
        """Names the exact model, so that stored transcripts are reused only for the same one."""
        return f"{self.name}-{self.version}"

    def transcribe(self, clip: DecodedClip) -> str:
        """The words spoken in ``clip.audio`` ("" when nothing is said)."""
        raise NotImplementedError


# --- reasoners --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """Tokens one reasoner call consumed (or, for a plan, is expected to consume)."""

    input_tokens: int = 0
    output_tokens: int = 0

    def __add__(self, other: "Usage") -> "Usage":
        return Usage(self.input_tokens + other.input_tokens, self.output_tokens + other.output_tokens)


@dataclass(frozen=True)
class ReasoningRequest:
    """Everything a reasoner may use for one clip.

    ``prompt`` (versioned by the core) and ``answer_schema`` (a JSON schema of the answer: the
    ``visual``, ``acoustic``, ``textual`` and ``overall`` parts of a trace, emotions restricted to
    ``classes``) are the same for every remote reasoner, so their traces compare. ``label`` is set
    only when the user asked for label-conditioned traces. ``features`` holds the clip's extracted
    features by encoder name (the newest set of each) for reasoners that set ``uses_features``; it
    is empty for the others, so that nothing is read for them.
    """

    clip_id: str
    path: Path
    prompt: str
    answer_schema: dict[str, Any]
    classes: tuple[str, ...]
    transcript: str | None = None
    label: str | None = None
    features: Mapping[str, Features] = field(default_factory=dict)


@dataclass(frozen=True)
class ReasoningAnswer:
    """A reasoner's answer for one clip: the four parts of a trace, before the core checks them
    against the schema and adds the clip id and provenance."""

    answer: dict[str, Any]
    usage: Usage = Usage()


class ReasonerError(Exception):
    """Base of what a reasoner raises when a call gives no usable answer; the message is one line."""


class RetryableError(ReasonerError):
    """Worth asking again: rate limited (429), a server error (5xx), a timeout, a refused connection.
    ``retry_after`` is the server's hint in seconds, when it gave one."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class AnswerRejected(ReasonerError):
    """This clip got no usable answer (a safety block, an empty or malformed reply): recorded as the
    clip's failure, never stored as a trace; the run goes on."""


class StopRun(ReasonerError):
    """Nothing more can succeed (quota exhausted, key rejected, model unknown): the run stops cleanly,
    keeping the traces already written."""


class Reasoner(Component):
    """Writes the modality-separable reasoning of one clip (the trace schema is in
    :mod:`mercli.traces`). The core owns scheduling, retries, rate limits, caching, cost and the
    schema check; ``reason`` makes one attempt and raises a :class:`ReasonerError` subclass when it
    fails. ``needs_network`` tells ``mer reason --dry-run`` and ``mer doctor`` whether it calls a
    remote service. Set a ``model`` option: the model name is part of every trace's source.
    """

    needs_network: ClassVar[bool] = False
    #: Whether answers depend on ``request.features``: then a trace is made again when the feature
    #: sets that hold the clip change (a clip reasoned about before ``mer extract`` ran, say).
    uses_features: ClassVar[bool] = False

    @property
    def model(self) -> str:
        return str(self.settings.get("model") or self.name)

    def trace_version(self, prompt_version: str) -> str:
        """The version a trace of this reasoner is filed under: the core's prompt version for
        reasoners that use the prompt, a rule version for those that do not."""
        return prompt_version

    def estimate_usage(self, request: ReasoningRequest) -> Usage:
        """Tokens a call on ``request`` is expected to use, for ``--dry-run`` and ``--max-cost``."""
        return Usage()

    def reason(self, request: ReasoningRequest) -> ReasoningAnswer:
        raise NotImplementedError


class BatchState:
    """The states a batch job passes through, in the core's words (each reasoner maps its API's)."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"
    CANCELLED = "cancelled"
    LIVE = frozenset({PENDING, RUNNING})
    ENDED = frozenset({SUCCEEDED, FAILED, EXPIRED, CANCELLED})


@dataclass(frozen=True)
class BatchJob:
    """A submitted batch job: the service's name for it and the files uploaded for it (deleted
    once it is collected)."""

    name: str
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class BatchPoll:
    """Where a job stands. Once it has ``succeeded``, ``results`` holds, by clip id, an answer or
    the :class:`ReasonerError` of that one request (a clip missing from it got no result);
    ``message`` says why a job failed."""

    state: str
    message: str | None = None
    results: Mapping[str, "ReasoningAnswer | ReasonerError"] = field(default_factory=dict)


@dataclass(frozen=True)
class BatchLimits:
    """What one job may hold: requests, and bytes of requests (media sent inline included); and
    how long the service keeps a file uploaded for a job (None: forever)."""

    max_requests: int
    max_bytes: int
    file_lifetime_s: float | None = None


class BatchReasoner:
    """A reasoner that also takes many requests as one asynchronous job, at a batch price.

    The core (:mod:`mercli.batch_reason`) owns the rest: which clips to send and how to split them
    into jobs within :meth:`batch_limits`, the job state in the workspace, collecting answers
    through the same checks as online ones, and never paying twice. ``display_name`` carries the
    core's id for the job, so that :meth:`find_batch` finds a job whose state the core could not
    write (a kill right after submitting). Every method makes one attempt and raises a
    :class:`ReasonerError` subclass when it fails."""

    def batch_limits(self) -> BatchLimits:
        raise NotImplementedError

    def request_bytes(self, request: ReasoningRequest) -> int:
        """About how many bytes ``request`` adds to a job (for splitting jobs within the limits)."""
        raise NotImplementedError

    def prepare_batch_request(self, request: ReasoningRequest, uploaded: Callable[[str], None]) -> Any:
        """``request`` as a job holds it (opaque to the core); ``uploaded`` is told the name of
        each file uploaded for it as soon as it exists. :class:`AnswerRejected`: this clip cannot
        be sent."""
        raise NotImplementedError

    def submit_batch(self, prepared: Sequence[Any], display_name: str, uploaded: Callable[[str], None]) -> BatchJob:
        """Create one job of prepared requests; ``uploaded`` as for :meth:`prepare_batch_request`."""
        raise NotImplementedError

    def find_batch(self, display_name: str) -> BatchJob | None:
        """The job created under ``display_name``, or None when none was."""
        raise NotImplementedError

    def poll_batch(self, job: BatchJob) -> BatchPoll:
        raise NotImplementedError

    def cancel_batch(self, job: BatchJob) -> None:
        raise NotImplementedError

    def cleanup_batch(self, job: BatchJob | None, files: Sequence[str]) -> None:
        """Delete ``files`` (uploaded for the job) and the job's own input and result files (no
        job: it was never created), best effort: a file left behind expires after its service's
        retention."""
        raise NotImplementedError


# --- losses -----------------------------------------------------------------------------------


class Loss(Component):
    """A training objective. ``build`` returns a torch module called as
    ``module(logits, embeddings, labels)`` that returns a scalar; ``embeddings`` are the
    L2-normalised projections (only contrastive losses use them), ``embedding_dim`` wide. Any
    parameters the loss owns (class prototypes) are created by ``build``, so the trainer can build
    its optimizer over the network's and the loss's parameters straight away.

    A loss whose ``sample_weights`` is true also accepts ``module(logits, embeddings, labels, weights)``,
    ``weights`` a ``(B,)`` tensor of non-negative per-clip weights (pseudo-labelled clips weigh
    their confidence times ``--pseudo-weight``, labelled ones 1): each clip's term is multiplied by
    its weight. Training with pseudo-labels refuses a loss that does not declare it."""

    uses_embeddings: ClassVar[bool] = False
    sample_weights: ClassVar[bool] = False

    def build(self, class_counts: Sequence[int], embedding_dim: int) -> "torch.nn.Module":
        raise NotImplementedError


# --- datasets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LabelRecord:
    """One row of a dataset as read, before label mapping: ``label`` is the dataset's own spelling."""

    clip_id: str
    label: str | None
    speaker: str | None = None
    split: str | None = None
    transcript: str | None = None
    path: Path | None = None


class Dataset(Component):
    """Reads the labels of one dataset layout (a CSV file, a folder per label, a naming convention).

    ``label_map`` folds the dataset's own label spellings into class names (``ANG`` -> ``angry``);
    the configuration's label map is applied on top.
    """

    label_map: ClassVar[Mapping[str, str]] = {}
    #: A layout that any folder of its shape satisfies (folder-per-label): auto-detection asks it
    #: only after the specific naming conventions.
    generic: ClassVar[bool] = False

    def detect(self, source: Path) -> bool:
        """Whether ``source`` (a file or folder) looks like this layout; used when none is named."""
        return False

    def read(self, source: Path) -> list[LabelRecord]:
        raise NotImplementedError


# --- stages -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Stage:
    """One kind of plug-in: the hook that registers it (:mod:`mercli.hookspecs`), the class its
    components extend, and the prefix of the mer.toml tables that configure one
    (``[encoder.whisper]``, also the word for one of them in messages)."""

    name: str
    hook: str
    base: type[Component]
    table: str


STAGES: dict[str, Stage] = {stage.name: stage for stage in (
    Stage("encoders", "register_encoders", Encoder, "encoder"),
    Stage("transcribers", "register_transcribers", Transcriber, "transcriber"),
    Stage("reasoners", "register_reasoners", Reasoner, "reasoner"),
    Stage("losses", "register_losses", Loss, "loss"),
    Stage("datasets", "register_datasets", Dataset, "dataset"),
)}

"""The core's settings: one frozen dataclass per core table of ``mer.toml``.

Each field is declared once, with its type (the annotation), default, help and range or choices
(:func:`setting`); the :class:`~mercli.contracts.Option` declarations that ``mer init``'s template,
``mer config show``, the ``MER_<TABLE>_<KEY>`` variables, ``-s TABLE.KEY=VALUE`` and the click
options of a stage use are derived from the fields (:data:`CORE_SECTIONS`). An object checks its
values, and the rules that tie some of them together, when it is built, so a settings object is
always consistent; :mod:`mercli.config` builds one per table as the configuration loads.
"""

from __future__ import annotations

import copy
import typing
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from typing import Any, ClassVar, Iterable, Mapping, TypeVar

from mercli.contracts import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, OPEN_UNIT, POSITIVE, Option, Range
from mercli.errors import ConfigError
from mercli.prompts import AUTO, PROMPT_VERSIONS

MER2024_CLASSES = ["neutral", "angry", "happy", "sad", "worried", "surprise"]

#: Spellings used by common datasets, folded into the MER2024 class names.
DEFAULT_LABEL_MAP = {
    "neu": "neutral",
    "anger": "angry",
    "ang": "angry",
    "happiness": "happy",
    "hap": "happy",
    "joy": "happy",
    "sadness": "sad",
    "surprised": "surprise",
    "worry": "worried",
}

DEFAULT_ENCODERS = ["face-landmarks", "fer-expression", "whisper", "egemaps", "text-embedding"]

#: List prices in US dollars per million tokens (text, image and video input) as published in late
#: 2025. They change: put current ones in mer.toml under ``[reason.prices]``.
DEFAULT_PRICES = {
    "gemini-2.5-flash": {"input": 0.30, "output": 2.50},
    "gemini-2.5-flash-lite": {"input": 0.10, "output": 0.40},
    "gemini-2.5-pro": {"input": 1.25, "output": 10.00},
    "gpt-4o-mini": {"input": 0.15, "output": 0.60},
    "gpt-4o": {"input": 2.50, "output": 10.00},
}

_DECLARATION = "mer.option"


def setting(default: Any, help: str, range: Range | None = None, choices: tuple[Any, ...] | None = None) -> Any:
    """A settings field with its default, help and the values it admits; its type is the field's
    annotation. A list or table default is copied for every object, never shared."""
    metadata = {_DECLARATION: (default, help, range, choices)}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _kind(annotation: Any) -> type:
    """``list`` for ``list[str]``, ``int`` for ``int``: the type an option's value must have."""
    return typing.get_origin(annotation) or annotation


@cache
def options(cls: type) -> tuple[Option, ...]:
    """The options a settings class declares, in the order of its fields."""
    hints = typing.get_type_hints(cls)
    return tuple(Option(f.name, _kind(hints[f.name]), *f.metadata[_DECLARATION]) for f in fields(cls))


class SettingsConflict(ConfigError):
    """Settings of one table that are each valid but do not agree with each other."""

    def __init__(self, table: str, keys: tuple[str, ...], problem: str) -> None:
        super().__init__(f"[{table}] {problem}")
        self.table, self.keys = table, keys


S = TypeVar("S", bound="Settings")


class Settings:
    """What every core table's settings object does when it is built: check each value against its
    option (ints given for floats become floats), then the rules between values (:meth:`conflicts`)."""

    table: ClassVar[str]

    def __post_init__(self) -> None:
        for option in options(type(self)):
            value = getattr(self, option.name)
            problem = option.problem(value)
            if problem:
                raise ConfigError(f"{self.table}.{option.name}: {problem}")
            if option.kind is float:
                object.__setattr__(self, option.name, float(value))
        conflict = next(iter(self.conflicts()), None)
        if conflict is not None:
            raise SettingsConflict(self.table, *conflict)

    def conflicts(self) -> Iterable[tuple[tuple[str, ...], str]]:
        """The keys and the problem of each rule between values that this object breaks."""
        return ()

    def to_json(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_record(cls: type[S], record: Mapping[str, Any]) -> S:
        """The settings a run recorded (its config.json): keys this version no longer has are left
        out, keys the run predates take their defaults."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{key: value for key, value in dict(record).items() if key in known})


@dataclass(frozen=True)
class DataSettings(Settings):
    table: ClassVar[str] = "data"

    classes: list[str] = setting(MER2024_CLASSES, "Class names, in the order the model outputs them.")
    label_map: dict[str, str] = setting(DEFAULT_LABEL_MAP, "Dataset spellings folded into class names.")
    dataset: str = setting("auto", "Labels reader: a dataset plug-in name, or auto to detect it.")

    def conflicts(self) -> Iterable[tuple[tuple[str, ...], str]]:
        twice = sorted({name for name in self.classes if self.classes.count(name) > 1})
        if twice:  # the network would have two outputs for one class, one never trained
            yield ("classes",), f"classes names {', '.join(twice)} more than once"


@dataclass(frozen=True)
class ExtractSettings(Settings):
    table: ClassVar[str] = "extract"

    fps: float = setting(2.0, "Video frames sampled per second.", Range(0, 120, low_open=True))
    sample_rate: int = setting(16000, "Audio sample rate the encoders receive (Hz, mono).", Range(8000, 192000))
    encoders: list[str] = setting(DEFAULT_ENCODERS, "Encoders to run (`mer plugins` lists them).")
    transcriber: str = setting("whisper", "Speech recogniser for clips whose labels carry no transcript.")
    workers: int = setting(0, "Worker processes; 0: one per usable CPU, fewer when memory or the clips left to do "
                           "are fewer.", NON_NEGATIVE)
    batch_size: int = setting(1, "Clips per group: each encoder takes a group at once (encode_batch) while the next "
                              "group is decoded; GPU encoders (hf-audio, hf-vision) want more, e.g. 16.", AT_LEAST_ONE)
    max_seconds: float = setting(300.0, "Longest clip decoded, in seconds (0: no limit); a longer one fails on its own "
                                 "instead of filling a worker's memory with its frames (5 minutes at 2 fps and "
                                 "1280x720 are 1.7 GB).", NON_NEGATIVE)


@dataclass(frozen=True)
class ReasonSettings(Settings):
    table: ClassVar[str] = "reason"

    reasoner: str = setting("local", "Reasoner plug-in (`mer plugins`); its settings go in [reasoner.NAME].")
    concurrency: int = setting(4, "Calls in flight at once.", AT_LEAST_ONE)
    requests_per_minute: float = setting(60.0, "Most calls started per minute (0: no limit).", NON_NEGATIVE)
    max_retries: int = setting(5, "Retries of a call after a 429, a 5xx, a timeout or a refused connection.",
                               NON_NEGATIVE)
    backoff: float = setting(2.0, "Longest wait before the first retry, in seconds; doubles each retry.", NON_NEGATIVE)
    max_backoff: float = setting(60.0, "Longest wait before any retry, even when the server asks for longer.",
                                 NON_NEGATIVE)
    max_cost: float = setting(0.0, "Stop before the estimated spending would pass this many US dollars (0: no limit).",
                              NON_NEGATIVE)
    prices: dict[str, dict[str, float]] = setting(DEFAULT_PRICES, "US dollars per million input and output tokens, "
                                                  "by model.")
    embed_with: str = setting("text-embedding", "Text encoder that turns traces into prior feature sets.")
    batch_poll: float = setting(60.0, "Seconds between checks of batch jobs (mer reason --batch --wait).", POSITIVE)
    prompt_version: str = setting(AUTO, "Prompt the reasoner answers: mer-trace-v2 (class scores too, which become "
                                  "numeric prior sets) or mer-trace-v1; auto: the newest one this reasoner and model "
                                  "already have traces of in the workspace (nothing is asked again unasked), else the "
                                  "newest.", choices=(AUTO, *PROMPT_VERSIONS))


@dataclass(frozen=True)
class TrainSettings(Settings):
    """``[train]``; the network's sizes (width ... priors) are what a run records to rebuild it."""

    table: ClassVar[str] = "train"

    loss: str = setting("bdcl", "Training loss (`mer plugins` lists them); its settings go in [loss.NAME].")
    features: list[str] = setting([], "Feature sets to train on (folder names under features/); empty: all.")
    epochs: int = setting(60, "Most epochs per fold.", AT_LEAST_ONE)
    patience: int = setting(10, "Stop after this many epochs without a better validation WAF (0: never).",
                            NON_NEGATIVE)
    batch_size: int = setting(0, "Clips per training batch (0: the largest of 32, 64 and 128 that still gives an "
                              "epoch at least 30 batches, 128 at twice train.lr: larger batches train faster, a "
                              "small table needs the steps).", NON_NEGATIVE)
    lr: float = setting(1e-3, "Peak learning rate (AdamW, cosine decay to zero).", POSITIVE)
    weight_decay: float = setting(0.01, "AdamW weight decay.", NON_NEGATIVE)
    seed: int = setting(0, "Seed of every random choice: initialisation, batches, holdout, folds.",
                        Range(0, 2**32 - 1))
    deterministic: bool = setting(False, "Deterministic kernels only (slower on GPU, identical reruns).")
    device: str = setting("auto", "auto (cuda, then mps, then cpu), or a torch device such as cuda:1.")
    precision: str = setting(AUTO, "Number format of the network's products while training (weights stay float32): "
                             "auto (float16 on CUDA, bfloat16 on a CPU that multiplies it natively, else float32), "
                             "float32, bfloat16, or float16 (CUDA only).",
                             choices=(AUTO, "float32", "bfloat16", "float16"))
    fold_workers: int = setting(0, "Folds trained side by side, each in its own process (1: one after the other; 0: "
                                "on a CPU as many as the folds and CPUs allow once the training is long enough to "
                                "repay starting the processes, on a GPU one).", NON_NEGATIVE)
    val_fraction: float = setting(0.2, "Share of groups held out for validation with --group-column.", OPEN_UNIT)
    width: int = setting(128, "Width d of every token of the fusion network.", AT_LEAST_ONE)
    layers: int = setting(2, "Transformer layers of the fusion.", AT_LEAST_ONE)
    heads: int = setting(4, "Attention heads (must divide width).", AT_LEAST_ONE)
    dropout: float = setting(0.1, "Dropout inside the network.", FRACTION)
    modality_dropout: float = setting(0.1, "Chance of dropping each feature set of a clip while training.", FRACTION)
    projection_dim: int = setting(64, "Width of the projection head used by contrastive losses.", AT_LEAST_ONE)
    priors: bool = setting(True, "Inject prior feature sets (prior-*) into their modality.")

    def conflicts(self) -> Iterable[tuple[tuple[str, ...], str]]:
        if self.width % self.heads:
            yield ("heads", "width"), f"heads ({self.heads}) must divide width ({self.width})"


@dataclass(frozen=True)
class PseudolabelSettings(Settings):
    table: ClassVar[str] = "pseudolabel"

    selection: str = setting("quota", "Which pseudo-labels to keep: quota (per-class shares of the pool proportional "
                             "to the labelled class prior) or threshold (per-class confidence thresholds).",
                             choices=("quota", "threshold"))
    fraction: float = setting(0.5, "quota: share of the pool kept, spread over the classes by the labelled prior.",
                              Range(0, 1, low_open=True))
    min_confidence: float = setting(0.0, "quota: no clip below this confidence is kept, quota or not.", Range(0, 1))
    threshold: float = setting(0.9, "threshold: the confidence a clip needs, for classes not in thresholds.",
                               Range(0, 1))
    thresholds: dict[str, float] = setting({}, "threshold: per-class confidence thresholds, e.g. {sad = 0.6}.")
    agree_with: str = setting("", "Reasoner[:model] whose traces must agree with the teacher (empty: no rule).")
    agreement: str = setting("require", "require: keep only clips whose trace's overall emotion agrees; weight: keep "
                             "them all, confidence times disagree_weight where it does not agree.",
                             choices=("require", "weight"))
    disagree_weight: float = setting(0.5, "weight: factor on the confidence of a clip its trace disagrees with (or "
                                     "that has no trace).", Range(0, 1))
    weight: float = setting(1.0, "mer train --pseudo-labels: a pseudo-labelled clip weighs this times its confidence "
                            "in the loss (a labelled clip weighs 1).", POSITIVE)

    def conflicts(self) -> Iterable[tuple[tuple[str, ...], str]]:
        for name, value in self.thresholds.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
                yield ("thresholds",), f"thresholds.{name}: must be a number in [0, 1], got {value!r}"


@dataclass(frozen=True)
class EvalSettings(Settings):
    table: ClassVar[str] = "eval"

    seed: int = setting(0, "mer eval --corrupt: seed of every random choice of the corruptions (noise, dropped "
                        "frames, babble talkers).", NON_NEGATIVE)
    noise_dir: str = setting("", "mer eval --corrupt audio-noise: a folder of noise recordings (MUSAN, say) to mix in "
                             "instead of white noise (empty: white noise).")
    corrupt_priors: str = setting("absent", "mer eval --corrupt: priors of a corrupted clip are absent (no reasoner "
                                  "saw it), reason (the run's reasoner asked about the corrupted copy) or clean (kept "
                                  "from the clean clip: optimistic).", choices=("absent", "reason", "clean"))


@dataclass(frozen=True)
class ReportSettings(Settings):
    table: ClassVar[str] = "report"

    gallery: int = setting(24, "Clips shown per run in the gallery of `mer report`, worst mistakes first.",
                           NON_NEGATIVE)


#: The core tables, in the order ``mer init``'s template lists them.
SETTINGS: dict[str, type[Settings]] = {cls.table: cls for cls in (
    DataSettings, ExtractSettings, ReasonSettings, TrainSettings, PseudolabelSettings, EvalSettings, ReportSettings)}

#: Every core option, by table, derived from the settings classes.
CORE_SECTIONS: dict[str, tuple[Option, ...]] = {table: options(cls) for table, cls in SETTINGS.items()}

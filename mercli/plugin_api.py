"""Everything a plug-in may use from ``mer``, in one module: a plug-in imports this and nothing
else of ``mercli``, so the core can change behind it.

    from mercli.plugin_api import Encoder, Features, Option, hookimpl

It holds the component types and the data that passes between them and the core
(:mod:`mercli.contracts`), the hook marker (:mod:`mercli.hookspecs`), the errors a plug-in raises,
the words every part shares (:mod:`mercli.vocabulary`), and the few helpers that built-in readers
and reasoners need (clip discovery, file-name datasets, media headers and decoding).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from mercli.clips import Clip, clip_id_of, discover, validate_clip_id
from mercli.contracts import (AT_LEAST_ONE, FRACTION, NON_NEGATIVE, OPEN_UNIT, POSITIVE, AnswerRejected, BatchJob,
                              BatchLimits, BatchPoll, BatchReasoner, BatchState, Check,
                              Component, Dataset, DecodedClip, Encoder, Features, LabelRecord, Loss, Option, Range,
                              Reasoner, ReasonerError, ReasoningAnswer, ReasoningRequest, RetryableError, StopRun,
                              Transcriber, Usage)
from mercli.errors import ConfigError, DataError, MerError
from mercli.hookspecs import hookimpl
from mercli.labels import FileNameDataset
from mercli.prompts import FIRST_VERSION as FIRST_PROMPT_VERSION
from mercli.vocabulary import LEVELS, MODALITIES, TRACE_MODALITIES, Level, Modality, one_line, pick_device

if TYPE_CHECKING:
    from mercli.media import MediaInfo

__all__ = [
    # settings
    "Option", "Range", "POSITIVE", "NON_NEGATIVE", "AT_LEAST_ONE", "FRACTION", "OPEN_UNIT", "Check",
    # components and their data
    "Component", "Encoder", "Transcriber", "DecodedClip", "Features",
    "Reasoner", "ReasoningRequest", "ReasoningAnswer", "Usage", "FIRST_PROMPT_VERSION",
    "ReasonerError", "RetryableError", "AnswerRejected", "StopRun",
    "BatchReasoner", "BatchJob", "BatchPoll", "BatchLimits", "BatchState",
    "Loss", "Dataset", "LabelRecord", "FileNameDataset",
    # registration
    "hookimpl",
    # errors
    "MerError", "ConfigError", "DataError",
    # shared words
    "Modality", "Level", "MODALITIES", "LEVELS", "TRACE_MODALITIES", "one_line", "pick_device",
    # clips and media
    "Clip", "discover", "clip_id_of", "validate_clip_id", "probe", "decode",
]


def probe(path: Path) -> "MediaInfo":
    """The headers of a media file (duration, streams, frame size and rate); :class:`DataError`
    when it cannot be opened as media. The media libraries load on first use, not with the plug-in."""
    from mercli import media

    return media.probe(path)


def decode(path: Path, clip_id: str, **settings: Any) -> DecodedClip:
    """A clip decoded as ``mer extract`` decodes it (``fps``, ``sample_rate``, ``video``, ``audio``,
    ``max_side``); loads the media libraries on first use."""
    from mercli import media

    return media.decode(path, clip_id, **settings)

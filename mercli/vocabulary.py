"""The words every part of mer shares, each defined once: the core and plug-ins import them from
here rather than spelling them again.

- a *modality* is a stream of the network (``audio``, ``visual``, ``text``); feature sets of no
  one modality (MERTools folders without a hint, the overall prior) are ``unknown``;
- a *level* is how a feature set is laid out in time: one vector per clip, or one per frame;
- a *trace part* is a section of a reasoning trace, named as the reasoner is asked about it
  (``acoustic``, not ``audio``), and each part's prior enters one modality's stream;
- a *prior* feature set is named ``prior-<part>`` (the part's text, embedded) or
  ``prior-scores-<part>`` (its class scores and confidence, as numbers).

Light on purpose: ``mer --help`` imports it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

Modality = Literal["audio", "visual", "text"]
MODALITIES: tuple[Modality, ...] = ("audio", "visual", "text")
UNKNOWN_MODALITY = "unknown"

Level = Literal["utterance", "frame"]
LEVELS: tuple[Level, ...] = ("utterance", "frame")

#: The per-modality parts of a reasoning trace and the stream each one's prior enters.
TRACE_MODALITIES: dict[str, Modality] = {"visual": "visual", "acoustic": "audio", "textual": "text"}
#: Every part of a trace that becomes a prior: the per-modality ones, then the overall judgement,
#: whose prior is offered to every stream.
TRACE_PARTS: dict[str, str] = {**TRACE_MODALITIES, "overall": UNKNOWN_MODALITY}

#: How a labels file may name a clip's split (in any case), and the split each name means. Test
#: clips are never trained on nor used for selection; a clip without a split is a training clip.
SPLIT_SPELLINGS: dict[str, str] = {"train": "train", "val": "val", "valid": "val", "validation": "val", "dev": "val",
                                   "test": "test"}


def split_named(spelling: str) -> str:
    """The split (``train``, ``val`` or ``test``) that ``spelling`` names; a :class:`ValueError`
    that lists the choices for any other word."""
    try:
        return SPLIT_SPELLINGS[spelling.strip().lower()]
    except KeyError:
        raise ValueError(f"split {spelling!r} is not one of {', '.join(SPLIT_SPELLINGS)}") from None


PRIOR_PREFIX = "prior-"
SCORES_PRIOR = "scores"


def prior_set_encoder(part: str) -> str:
    """The encoder name of the prior feature set made from one trace part (``prior-acoustic``)."""
    return f"{PRIOR_PREFIX}{part}"


def scores_prior_encoder(part: str) -> str:
    """The encoder name of the numeric prior set made from one trace part's class scores and
    confidence (``prior-scores-acoustic``); :func:`is_prior` knows it as a prior."""
    return f"{PRIOR_PREFIX}{SCORES_PRIOR}-{part}"


def is_prior(encoder: str) -> bool:
    return encoder.startswith(PRIOR_PREFIX)


def one_line(text: object, limit: int | None = None) -> str:
    """``text`` with every run of white space, line breaks included, folded into one space, and cut
    to ``limit`` characters (ending in ``...``) when one is given: what a reason, a message quoted
    from a library or a server's answer becomes before it is shown or kept."""
    line = " ".join(str(text).split())
    return line if limit is None or len(line) <= limit else line[: limit - 3] + "..."


def pick_device(name: str, accelerators: tuple[str, ...] = ("cuda", "mps")) -> "torch.device":
    """The torch device a ``device`` setting names: ``auto`` is the first of ``accelerators`` that
    torch sees (a library that runs on CUDA only passes ``("cuda",)``), else the CPU. A name torch
    does not know is a configuration error."""
    import torch

    from mercli.errors import ConfigError

    if name != "auto":
        try:
            return torch.device(name)
        except RuntimeError as problem:
            raise ConfigError(f"device '{name}': {problem}") from None
    available = {"cuda": torch.cuda.is_available,
                 "mps": lambda: getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()}
    return torch.device(next((kind for kind in accelerators if available[kind]()), "cpu"))

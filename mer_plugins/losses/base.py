"""What every built-in loss shares before torch is involved: range checks on its settings, checks on
the class counts it is built from, and the per-class quantities derived from those counts.

Kept free of torch so that ``mer --help`` and ``mer plugins`` (which import the plug-in modules)
stay fast; the torch modules live in :mod:`mer_plugins.losses.objectives`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, ClassVar, Mapping, Sequence

from mercli.contracts import Loss
from mercli.errors import ConfigError, DataError


@dataclass(frozen=True)
class Range:
    """The numbers a setting admits, for example ``Range(0, low_open=True)`` for "> 0"."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
            return False
        above = self.low is None or (value > self.low if self.low_open else value >= self.low)
        below = self.high is None or (value < self.high if self.high_open else value <= self.high)
        return above and below

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"


POSITIVE = Range(0.0, low_open=True)
NON_NEGATIVE = Range(0.0)
FRACTION = Range(0.0, 1.0, high_open=True)  # [0, 1)


class CheckedLoss(Loss):
    """A loss whose numeric settings are checked against ``ranges`` as soon as it is configured, so
    that a bad ``[loss.NAME]`` value fails before any data is read, with the setting named."""

    ranges: ClassVar[Mapping[str, Range]] = {}

    def __init__(self, **settings: Any) -> None:
        super().__init__(**settings)
        for option, allowed in self.ranges.items():
            value = self.settings[option]
            if not allowed.admits(value):
                self.reject(f"{option} must be a number {allowed}, got {value!r}")

    def reject(self, problem: str) -> None:
        raise ConfigError(f"[loss.{self.name}] {problem}")

    def checked_counts(self, class_counts: Sequence[int]) -> list[int]:
        """``class_counts`` as plain ints: one non-negative count per class, two classes at least."""
        counts = list(class_counts)
        valid = (
            len(counts) >= 2
            and all(isinstance(c, Integral) and not isinstance(c, bool) and c >= 0 for c in counts)
            and sum(counts) > 0
        )
        if not valid:
            raise DataError(
                f"loss '{self.name}': class counts must be two or more non-negative integers "
                f"with a positive total, got {counts!r}"
            )
        return [int(c) for c in counts]


    def checked_width(self, embedding_dim: int) -> int:
        """``embedding_dim`` as a plain int, refused unless it is a positive integer."""
        if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, Integral) or embedding_dim <= 0:
            raise DataError(f"loss '{self.name}': the embedding width must be a positive integer, got {embedding_dim!r}")
        return int(embedding_dim)


def _floored(counts: Sequence[int]) -> list[int]:
    """Counts with empty classes counted once, so that priors and weights stay finite when a class
    has no training clips (a small fold, say)."""
    return [max(c, 1) for c in counts]


def _mean_one(values: Sequence[float]) -> list[float]:
    """Scale per-class weights to average 1 over the classes (sum = K), so that the loss keeps the
    magnitude of plain cross-entropy and the learning rate need not change with the weighting."""
    scale = len(values) / sum(values)
    return [v * scale for v in values]


def log_prior(counts: Sequence[int]) -> list[float]:
    """log pi_k: the log of each class's share of the training clips."""
    floored = _floored(counts)
    total = sum(floored)
    return [math.log(c / total) for c in floored]


def inverse_frequency_weights(counts: Sequence[int]) -> list[float]:
    """alpha_k proportional to 1 / n_k (focal loss's per-class alpha)."""
    return _mean_one([1.0 / c for c in _floored(counts)])


def effective_number_weights(counts: Sequence[int], beta: float) -> list[float]:
    """Cui et al. (2019): w_k proportional to 1 / E_k with E_k = (1 - beta^n_k) / (1 - beta)."""
    return _mean_one([(1.0 - beta) / (1.0 - beta**c) for c in _floored(counts)])

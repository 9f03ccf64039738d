"""What every built-in loss shares before torch is involved: checks on the class counts it is built
from, and the per-class quantities derived from those counts.

Kept free of torch so that ``mer --help`` and ``mer plugins`` (which import the plug-in modules)
stay fast; the torch modules live in :mod:`mer_plugins.losses.objectives`.
"""

from __future__ import annotations

import math
from numbers import Integral
from typing import NoReturn, Sequence

from mercli.plugin_api import ConfigError, DataError, Loss


class CheckedLoss(Loss):
    """A loss that checks the class counts and the embedding width it is built from, and names
    itself as its table (``[loss.NAME]``) when it refuses its settings (their ranges are declared
    with its options and checked as the configuration loads). Every built-in loss weighs clips
    by the per-sample weights it is given."""

    sample_weights = True

    def reject(self, problem: str) -> NoReturn:
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

"""Calibrated probabilities: temperature scaling and the expected calibration error.

A network trained to a minimum loss is usually over-confident: its softmax says 0.95 where it is
right seven times in ten. Temperature scaling (Guo et al., 2017) divides the logits by one scalar
``T > 0`` fitted on validation clips, which changes the confidence but never the predicted class,
so the WAF a run was selected on stays what it was. A run stores one ``T`` per fold.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

#: Bins of the expected calibration error (the usual choice since Guo et al., 2017).
ECE_BINS = 15
#: The temperature is searched in [1/100, 100]; a minimum on either edge is not trusted.
LOG_T_BOUNDS = (-math.log(100.0), math.log(100.0))


def calibrated(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """softmax(logits / T), row by row, computed stably in float64: scipy's ``softmax`` step for
    step (the same numbers), without importing scipy in ``mer predict`` (a fifth of a second)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    shifted = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean of -log softmax(logits / T)[label]."""
    from scipy.special import log_softmax

    scaled = log_softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)
    return float(-scaled[np.arange(len(labels)), np.asarray(labels)].mean())


def reliability(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> list[dict[str, float]]:
    """What a reliability diagram shows: per non-empty confidence bin ``((i-1)/bins, i/bins]``
    (the confidence being the top probability) its edges, its share of the clips, and the mean
    confidence and accuracy of its clips."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    which = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    return [{"lower": b / bins, "upper": (b + 1) / bins, "share": float((which == b).mean()),
             "confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean())}
            for b in np.unique(which).tolist()]


def expected_calibration_error(labels: np.ndarray, probabilities: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: the gap between confidence (the top probability) and accuracy, averaged over ``bins``
    equal-width confidence bins ``((i-1)/bins, i/bins]`` weighted by the share of clips in each
    (the bins of :func:`reliability`).

    Written here because scikit-learn has no ECE; tests check it against a hand computation.
    """
    bins_seen = reliability(labels, probabilities, bins)
    return float(sum(b["share"] * abs(b["accuracy"] - b["confidence"]) for b in bins_seen))


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature and what it did to the validation clips; ``note`` says why ``T`` was
    left at 1 when it was."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    note: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _unfitted_reason(logits: np.ndarray, labels: np.ndarray) -> str:
    """Why these validation clips cannot fix a temperature, or ``""`` when they can."""
    if len(np.unique(labels)) < 2:
        return "the validation clips cover one class only"
    if (logits.argmax(axis=1) == labels).all():
        # Every term of the NLL keeps falling as T -> 0: there is no finite minimum.
        return "every validation clip is classified correctly, so the likelihood has no finite optimum"
    return ""


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> TemperatureFit:
    """The ``T`` minimising the NLL of softmax(logits / T) on validation clips.

    The NLL is convex in 1/T, hence unimodal in log T, so a bounded scalar search on log T finds the
    minimum. Validation clips that cannot fix T (one class, all correct, a minimum on the search
    edge, or no gain over T = 1) leave T = 1, with the reason in ``note``.
    """
    from scipy.optimize import minimize_scalar

    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    nll_before = negative_log_likelihood(logits, labels)
    ece_before = expected_calibration_error(labels, calibrated(logits))
    unchanged = TemperatureFit(1.0, nll_before, nll_before, ece_before, ece_before)
    reason = _unfitted_reason(logits, labels)
    if reason:
        return TemperatureFit(**{**asdict(unchanged), "note": reason})
    found = minimize_scalar(lambda log_t: negative_log_likelihood(logits, labels, math.exp(log_t)),
                            bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    if found.fun >= nll_before:
        reason = "no temperature lowers the validation NLL below that of T = 1"
    elif min(abs(found.x - edge) for edge in LOG_T_BOUNDS) < 1e-2:
        reason = f"the likelihood is best at the edge of the search (T = {math.exp(found.x):.3g})"
    if reason:
        return TemperatureFit(**{**asdict(unchanged), "note": reason})
    temperature = float(math.exp(found.x))
    return TemperatureFit(temperature, nll_before, float(found.fun), ece_before,
                          expected_calibration_error(labels, calibrated(logits, temperature)))
